"""Injection into a Hugging Face model without touching its modeling file.

Prefixes reach attention through an attention function registered with transformers under the name
``sdpa_with_prefix``: it receives the host's own query/key/value states, prepends the generated prefix keys
and values of the calling module's site, widens the mask and position bias by the prefix length, and hands
over to transformers' SDPA function. Adapters reach the feed-forward blocks through thin wrappers that keep
the host module as ``base_layer``. Both read the weights generated for the current step from one
``ConditioningState`` set once per forward, never from extra arguments threaded through the host.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_IMPLEMENTATION = "sdpa_with_prefix"  # serves every method with prefixes


class _PerSite:
    """Generated weights whose ``row_fields`` are [rows, sites, ...] tensors.

    Each site's slice of them is split once per step with ``unbind``: indexing the whole tensor at every
    site would give each site's backward a zero-filled gradient the size of all sites, summed over
    sites: quadratic in the number of sites, and growing with the number
    of tasks in a batch. ``unbind`` hands all sites' gradients back in one stack.
    """

    def site(self, name: str, index: int) -> torch.Tensor | None:
        tensor = getattr(self, name)
        if tensor is None:
            return None
        split = self.__dict__.setdefault("_split", {})
        if name not in split:
            split[name] = tensor.unbind(1)
        return split[name][index]

    def task_rows(self, index: slice | None):
        """A copy holding only rows ``index`` of the row tensors (views: no data is copied); None keeps
        all."""
        if index is None or self.shared:
            return dataclasses.replace(self)
        rows = {name: getattr(self, name) for name in self.row_fields if getattr(self, name) is not None}
        return dataclasses.replace(self, **{name: tensor[index] for name, tensor in rows.items()})


@dataclass
class PrefixWeights(_PerSite):
    """Prefix keys and values of every attention site: [rows, sites, N, inner_dim]."""

    keys: torch.Tensor
    values: torch.Tensor
    shared: bool = False  # one row serves every example
    row_fields = ("keys", "values")


@dataclass
class AdapterWeights(_PerSite):
    """Bottleneck adapters of a group of sites: down [rows, sites, m, d], up [rows, sites, d, m].

    Optional biases, a layer norm on the adapter output (Hyperformer's, possibly generated per task),
    and a scale λ per site or for all.
    """

    down: torch.Tensor
    up: torch.Tensor
    down_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    norm_weight: torch.Tensor | None = None
    norm_bias: torch.Tensor | None = None
    scale: torch.Tensor | float = 1.0
    activation: str = "relu"
    shared: bool = False
    row_fields = ("down", "up", "down_bias", "up_bias", "norm_weight", "norm_bias")


@dataclass
class ConditioningState:
    """The weights generated for the batch being processed, shared by every injected site.

    ``rows`` maps each example to a row of the generated tensors (None: one row serves the batch);
    ``task_ids`` are the examples' tasks, for modules holding per-task tables.
    """

    enabled: bool = True
    task_ids: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    prefix: PrefixWeights | None = None
    adapters: dict[str, AdapterWeights] = field(default_factory=dict)

    def clear(self) -> None:
        self.task_ids = self.rows = self.prefix = None
        self.adapters = {}

    def rows_for(self, batch_size: int, shared: bool = False) -> torch.Tensor | None:
        """Row index per example, repeated when generation expands the batch (beams, several samples)."""
        if self.rows is None or shared:
            return None
        return _expand(self.rows, batch_size)

    def task_ids_for(self, batch_size: int) -> torch.Tensor:
        return _expand(self.task_ids, batch_size)


def _expand(index: torch.Tensor, batch_size: int) -> torch.Tensor:
    return index if batch_size == len(index) else index.repeat_interleave(batch_size // len(index))


def select_rows(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """[R, ...] -> [B, ...] by example rows, or [1, ...] to broadcast when one row serves the batch."""
    return tensor[:1] if rows is None else tensor[rows]


class PrefixSlot:
    """Attached to a host attention module: where that module finds its prefix for the current step."""

    def __init__(self, state: ConditioningState, index: int, num_heads: int, head_dim: int):
        self.state, self.index, self.num_heads, self.head_dim = state, index, num_heads, head_dim

    def key_values(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        state = self.state
        if not state.enabled or state.prefix is None:
            return None
        rows = state.rows_for(batch_size, state.prefix.shared)
        keys = select_rows(state.prefix.site("keys", self.index), rows)
        values = select_rows(state.prefix.site("values", self.index), rows)
        shape = (keys.shape[0], keys.shape[1], self.num_heads, self.head_dim)
        keys = keys.reshape(shape).transpose(1, 2).expand(batch_size, -1, -1, -1)
        values = values.reshape(shape).transpose(1, 2).expand(batch_size, -1, -1, -1)
        return keys, values


def _prefix_attention(module, query, key, value, attention_mask, position_bias=None, **kwargs):
    slot: PrefixSlot | None = getattr(module, "hyperpelt_prefix", None)
    prefix = slot.key_values(query.shape[0]) if slot is not None else None
    if prefix is not None:
        prefix_keys, prefix_values = prefix
        n = prefix_keys.shape[2]
        key = torch.cat([prefix_keys.to(key.dtype), key], dim=2)
        value = torch.cat([prefix_values.to(value.dtype), value], dim=2)
        if attention_mask is not None:
            fill = True if attention_mask.dtype == torch.bool else 0.0
            attention_mask = F.pad(attention_mask, (n, 0), value=fill)
        if position_bias is not None:
            position_bias = F.pad(position_bias, (n, 0), value=0.0)
        kwargs["is_causal"] = False
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, position_bias=position_bias, **kwargs
    )


def _materialized_sdpa_mask(*args, **kwargs):
    # A causal mask skipped for SDPA's is_causal flag would be wrong once prefixes widen the keys.
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, _prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, _materialized_sdpa_mask)


def _configs(model: nn.Module) -> list:
    """Every distinct config object in the host (T5 gives its encoder and decoder copies of its own)."""
    seen = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
    return list(seen.values())


def set_attention_implementation(model: nn.Module, name: str) -> str:
    """Point every config of the host at attention implementation ``name``; returns the previous one."""
    previous = model.config._attn_implementation
    for config in _configs(model):
        config._attn_implementation = name
    return previous


def use_prefix_attention(model: nn.Module) -> str:
    """Route the host's attention through the prefix function; returns the implementation it replaced."""
    return set_attention_implementation(model, ATTN_IMPLEMENTATION)


@contextmanager
def attention_implementation(model: nn.Module, name: str):
    previous = set_attention_implementation(model, name)
    try:
        yield
    finally:
        set_attention_implementation(model, previous)


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


def attach_prefixes(sites, host: nn.Module, state: ConditioningState, num_heads: int, head_dim: int) -> None:
    """Give each attention site its slot: site ``i`` reads row ``i`` of the state's prefix tensors."""
    for index, site in enumerate(sites):
        host.get_submodule(site.path).hyperpelt_prefix = PrefixSlot(state, index, num_heads, head_dim)


def wrap_parallel_adapters(sites, host: nn.Module, backbone, state: ConditioningState) -> None:
    """Wrap each FFN site with the backbone's parallel adapter, reading adapter group "ffn"."""
    for index, site in enumerate(sites):
        wrapper = backbone.parallel_adapter(host.get_submodule(site.path), state, "ffn", index)
        replace_module(host, site.path, wrapper)
