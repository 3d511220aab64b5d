"""Linear layers that a decoding step runs on a few rows (one next token per sequence of the batch).

torch computes a linear layer as x @ W.T. On CPU, for 2 to 8 rows, MKL's kernel for that layout reads the
weight much more slowly than for one row or for many: a batch of 2 decodes almost twice as long as one
sequence, which takes from mixed-task batches what they should gain. The same product computed as
(W @ x.T).T reads W row by row. Applied to the layers whose weight is at least as tall as wide (the output
embedding above all); the others gain nothing from it.

A CPU float32 fast path only: measured for MKL's float32 kernels, it steps aside (plain ``F.linear``) on
any other device, for any other dtype of input or weight, and under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..inject.reference import reference_path

FEW_ROWS = range(2, 9)


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` computing 2 to 8 rows in CPU float32 without gradients as (W @ x.T).T; otherwise the
    same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        fast = rows in FEW_ROWS and _cpu_float32(x, self.weight) and not torch.is_grad_enabled()
        if not fast or reference_path():
            return F.linear(x, self.weight, self.bias)
        out = torch.mm(self.weight, x.reshape(rows, -1).t()).t().reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def _cpu_float32(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu"))


def few_rows_linears(modules: list[nn.Module]) -> None:
    """Make the plain ``nn.Linear`` layers among ``modules`` whose weight is at least as tall as wide
    compute few rows as ``FewRowsLinear`` does (in place: same parameters, same state dict)."""
    for module in modules:
        if type(module) is nn.Linear and module.out_features >= module.in_features:
            module.__class__ = FewRowsLinear
