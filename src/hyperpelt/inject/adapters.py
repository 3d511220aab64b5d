"""Adapters beside or after host blocks, and per-task layer norms: thin wrappers that keep the host
module as ``base_layer`` and read the current step's weights from the ``ConditioningState``."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .state import ConditioningState, select_rows

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
Activation = Literal["relu", "gelu", "silu", "tanh"]


def adapter_delta(x: torch.Tensor, state: ConditioningState, group: str, index: int) -> torch.Tensor | None:
    """λ · norm(up(act(down(x)))) with site ``index`` of adapter group ``group``; None when inactive.

    One row for the whole batch uses plain matmuls; a batch that mixes tasks uses batched matmuls with
    per-example weights, never a Python loop over examples.
    """
    w = state.adapters.get(group) if state.enabled else None
    if w is None:
        return None
    act = ACTIVATIONS[w.activation]
    rows = state.rows_for(x.shape[0], w.shared)
    def pick(name: str) -> torch.Tensor | None:
        tensor = w.site(name, index)
        return None if tensor is None else select_rows(tensor, rows).to(x.dtype)

    down, up, down_bias, up_bias = pick("down"), pick("up"), pick("down_bias"), pick("up_bias")
    if rows is None:
        out = F.linear(act(F.linear(x, down[0], None if down_bias is None else down_bias[0])), up[0])
        if up_bias is not None:
            out = out + up_bias[0]
    else:
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        hidden = torch.bmm(flat, down.transpose(1, 2))
        if down_bias is not None:
            hidden = hidden + down_bias[:, None]
        out = torch.bmm(act(hidden), up.transpose(1, 2))
        if up_bias is not None:
            out = out + up_bias[:, None]
        out = out.reshape(x.shape)
    if w.norm_weight is not None:
        weight, bias = pick("norm_weight"), pick("norm_bias")
        shape = (-1,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        out = F.layer_norm(out, out.shape[-1:]) * weight.reshape(shape) + bias.reshape(shape)
    if isinstance(w.scale, torch.Tensor):
        return out * (w.scale[index] if w.scale.dim() else w.scale)
    return out if w.scale == 1.0 else out * w.scale


class _SiteWrapper(nn.Module):
    def __init__(self, base_layer: nn.Module, state: ConditioningState, group: str, index: int):
        super().__init__()
        self.base_layer, self.state, self.group, self.index = base_layer, state, group, index


class ParallelAdapter(_SiteWrapper):
    """Wraps a feed-forward module f: returns f(x) + adapter(x) (T5's DenseReluDense)."""

    def forward(self, hidden_states, *args, **kwargs):
        out = self.base_layer(hidden_states, *args, **kwargs)
        delta = adapter_delta(hidden_states, self.state, self.group, self.index)
        return out if delta is None else out + delta


class ParallelResidualAdapter(_SiteWrapper):
    """Wraps a module g(h, residual) that adds ``residual`` before its layer norm (BERT's BertOutput).

    Adding adapter(residual) to the residual gives LN(dense(h) + residual + adapter(residual)): the
    adapter runs beside the feed-forward block on the block's input, with no host code repeated.
    """

    def forward(self, hidden_states, input_tensor, *args, **kwargs):
        delta = adapter_delta(input_tensor, self.state, self.group, self.index)
        if delta is not None:
            input_tensor = input_tensor + delta
        return self.base_layer(hidden_states, input_tensor, *args, **kwargs)


class SequentialAdapter(_SiteWrapper):
    """Wraps a block's output projection y = f(x): returns y + adapter(y), before the host's residual."""

    @property
    def weight(self):  # hosts check the dtype of their output projection's weight
        return self.base_layer.weight

    def forward(self, hidden_states, *args, **kwargs):
        out = self.base_layer(hidden_states, *args, **kwargs)
        delta = adapter_delta(out, self.state, self.group, self.index)
        return out if delta is None else out + delta


class TaskLayerNorm(nn.Module):
    """A host layer norm with one weight (and bias) per task, initialised from the host's own."""

    def __init__(self, base_layer: nn.Module, state: ConditioningState, num_tasks: int):
        super().__init__()
        self.base_layer, self.state = base_layer, state
        # Anything but nn.LayerNorm is taken as an RMS norm (scale only, no mean, no bias), as T5's.
        self.rms = not isinstance(base_layer, nn.LayerNorm)
        self.eps = base_layer.eps if isinstance(base_layer, nn.LayerNorm) else base_layer.variance_epsilon
        self.weight = nn.Parameter(base_layer.weight.detach().clone().expand(num_tasks, -1).contiguous())
        bias = getattr(base_layer, "bias", None)
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone().expand(num_tasks, -1).contiguous())
        )

    def forward(self, x):
        if not self.state.enabled or self.state.task_ids is None:
            return self.base_layer(x)
        tasks = self.state.task_ids_for(x.shape[0])
        shape = (-1,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        if self.rms:
            variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
            normed = (x * torch.rsqrt(variance + self.eps)).to(self.weight.dtype)
            return self.weight[tasks].reshape(shape) * normed
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return normed * self.weight[tasks].reshape(shape) + self.bias[tasks].reshape(shape)


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)


def wrap_parallel_adapters(sites, host: nn.Module, backbone, state: ConditioningState) -> None:
    """Wrap each FFN site with the backbone's parallel adapter, reading adapter group "ffn"."""
    for index, site in enumerate(sites):
        wrapper = backbone.parallel_adapter(host.get_submodule(site.path), state, "ffn", index)
        replace_module(host, site.path, wrapper)
