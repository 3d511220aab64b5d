"""Where and in what precision a model computes: its device, and a frozen host stored in half precision.

With model.dtype bfloat16 or float16 the frozen host's weights are stored in that dtype, while whatever
trains (the method's modules, the task heads, host weights the method unfreezes) stays float32: the master
weights an optimizer steps. The two meet under ``torch.autocast`` in the host's dtype (the compute
dtype), which the model enters around its forward, generation and encoder step; the weights the method
generates for a batch are cast to the compute dtype once for the batch, where they enter the host (the
inference weight table holds them in it already). In float32 none of this happens: no autocast, no cast.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
from torch import nn

from ..backbones.base import host_dtype
from ..heads import Encoded


class Precision:
    """Mixed into ``TunedModel`` (an ``nn.Module`` with a ``model_config`` and a ``state``)."""

    @property
    def compute_dtype(self) -> torch.dtype:
        """The torch dtype of model.dtype: what the frozen host is stored and computes in."""
        return host_dtype(self.model_config)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    def computing(self):
        """Autocast in the compute dtype on the model's device while this lasts; nothing in float32."""
        dtype = self.compute_dtype
        return nullcontext() if dtype == torch.float32 else torch.autocast(self.device.type, dtype=dtype)

    def cast_generated(self) -> None:
        """The batch's generated weights (``state``) in the compute dtype, once for the batch."""
        if self.compute_dtype != torch.float32:
            self.state.cast_weights(self.compute_dtype)


def train_in_float32(module: nn.Module) -> None:
    """Every parameter of ``module`` that trains made float32 (the master weights): host weights a method
    unfreezes, and method weights copied from a half-precision host (per-task layer norms)."""
    for p in module.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def float_features(*texts: Encoded | None) -> tuple[Encoded | None, ...]:
    """What the float32 task heads read, in float32 (an encoder computing in half precision gives half)."""
    return tuple(t if t is None or t.pooled.dtype == torch.float32 else
                 dataclasses.replace(t, pooled=t.pooled.float(), tokens=t.tokens.float()) for t in texts)
