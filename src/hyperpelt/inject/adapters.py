"""Adapters beside or after host blocks, and per-task layer norms: thin wrappers that keep the host
module as ``base_layer`` and read the current step's weights from the ``ConditioningState``."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .packing import current_packing
from .reference import reference_path
from .state import AdapterWeights, ConditioningState, select_rows

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
Activation = Literal["relu", "gelu", "silu", "tanh"]


def adapter_delta(x: torch.Tensor, state: ConditioningState, group: str, index: int) -> torch.Tensor | None:
    """λ · norm(up(act(down(x)))) with site ``index`` of adapter group ``group``; None when inactive.

    Per-example adapters of the group (``state.example_adapters``) act as a second adapter whose output is
    added, or (``state.adapter_merge == "sum"``) have their weights summed into the task adapter's.
    One row for the whole batch uses plain matmuls; per-example weights use batched matmuls, never a
    Python loop over examples.
    """
    if not state.enabled:
        return None
    state.refresh()
    task, example = state.adapters.get(group), state.example_adapters.get(group)
    # under autocast the weights stay as generated (cast once per batch): autocast casts the matmuls' inputs
    dtype = None if torch.is_autocast_enabled(x.device.type) else x.dtype
    packing = current_packing()
    if packing is not None and packing.segments and task is not None and not task.shared:
        return _packed_delta(x, task, packing, index, dtype)
    picked = []
    if task is not None:
        picked.append(_task_pick(state, task, group, index, x.shape[0], dtype))
    if example is not None:
        picked.append(_pick(example, state.example_rows_for(x.shape[0], example), index, dtype))
    if len(picked) == 2 and state.adapter_merge == "sum":
        picked = [_summed(*picked)]
    deltas = [_apply(x, weights) for weights in picked]
    return None if not deltas else deltas[0] if len(deltas) == 1 else deltas[0] + deltas[1]


def _task_pick(state: ConditioningState, w: AdapterWeights, group: str, index: int, batch_size: int,
               dtype) -> dict:
    """The task adapter's weights for the batch's rows. A decoder asks at every step: at inference, outside
    packed rows, rows of a mixed batch are gathered once per batch, while the same weights and rows hold."""
    rows = state.rows_for(batch_size, w.shared)
    if rows is None or current_packing() is not None or torch.is_grad_enabled():
        return _pick(w, rows, index, dtype)
    return state.once_per_batch(("adapter", group, index, batch_size, dtype), (w, state.rows),
                                lambda: _pick(w, rows, index, dtype))


def _packed_delta(x: torch.Tensor, w: AdapterWeights, packing, index: int, dtype) -> torch.Tensor:
    """A packed row's adapter output, one plain-matmul adapter per run of tokens sharing a weight row
    (per-example weights are not packed)."""
    pieces = []
    for start, end, row in packing.segments:
        weights = _pick(w, slice(row, row + 1), index, dtype)  # views of the row, no copies
        weights["batched"] = False
        pieces.append(_apply(x[:, start:end], weights))
    return torch.cat(pieces, dim=1)


def _pick(w: AdapterWeights, rows: torch.Tensor | slice | None, index: int, dtype) -> dict:
    """Site ``index``'s weights for the batch's examples: [1, ...] (one row serves all) or [B, ...], in
    ``dtype`` (None: as they are)."""
    out = {"activation": w.activation, "batched": rows is not None}
    for name in w.row_fields:
        tensor = w.site(name, index)
        out[name] = None if tensor is None else select_rows(tensor, rows).to(dtype)
    scale = w.scale
    out["scale"] = scale[index] if isinstance(scale, torch.Tensor) and scale.dim() else scale
    return out


def _summed(task: dict, example: dict) -> dict:
    """One adapter whose weights are the sum of two scale-free, bias-free, norm-free ones (per example)."""
    for weights in (task, example):
        if any(weights[n] is not None for n in ("down_bias", "up_bias", "norm_weight")) or not (
                isinstance(weights["scale"], float) and weights["scale"] == 1.0):
            raise ValueError("adapter_merge 'sum' takes adapters without biases, norms or a scale")
    out = dict(example)
    out["down"], out["up"] = task["down"] + example["down"], task["up"] + example["up"]
    return out


def _apply(x: torch.Tensor, w: dict) -> torch.Tensor:
    act = ACTIVATIONS[w["activation"]]
    down, up, down_bias, up_bias = w["down"], w["up"], w["down_bias"], w["up_bias"]
    if not w["batched"] and down.shape[0] == 1 and not reference_path():
        out = F.linear(act(F.linear(x, down[0], None if down_bias is None else down_bias[0])), up[0])
        if up_bias is not None:
            out = out + up_bias[0]
    else:
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        down, up = down.expand(x.shape[0], -1, -1), up.expand(x.shape[0], -1, -1)
        hidden = torch.bmm(flat, down.transpose(1, 2))
        if down_bias is not None:
            hidden = hidden + down_bias[:, None]
        out = torch.bmm(act(hidden), up.transpose(1, 2))
        if up_bias is not None:
            out = out + up_bias[:, None]
        out = out.reshape(x.shape)
    if w["norm_weight"] is not None:
        shape = (-1,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        out = F.layer_norm(out, out.shape[-1:]) * w["norm_weight"].reshape(shape)
        out = out + w["norm_bias"].reshape(shape)
    scale = w["scale"]
    if isinstance(scale, torch.Tensor):
        return out * scale
    return out if scale == 1.0 else out * scale


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
    """A host layer norm with one weight (and bias) per task, initialised from the host's own; ``eps`` is
    the host norm's (its backbone's ``layer_norm_eps``)."""

    def __init__(self, base_layer: nn.Module, state: ConditioningState, num_tasks: int, eps: float):
        super().__init__()
        self.base_layer, self.state, self.eps = base_layer, state, eps
        # Anything but nn.LayerNorm is taken as an RMS norm (scale only, no mean, no bias), as T5's.
        self.rms = not isinstance(base_layer, nn.LayerNorm)
        self.weight = nn.Parameter(base_layer.weight.detach().clone().expand(num_tasks, -1).contiguous())
        bias = getattr(base_layer, "bias", None)
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone().expand(num_tasks, -1).contiguous())
        )

    def forward(self, x):
        if not self.state.enabled or self.state.task_ids is None:
            return self.base_layer(x)
        packing = current_packing()
        tasks = self.state.task_ids_for(x.shape[0]) if packing is None else packing.token_task_ids
        shape = (-1,) + (1,) * (x.dim() - 2) + (x.shape[-1],) if packing is None else (1, -1, x.shape[-1])
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
