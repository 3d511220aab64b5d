"""Injection into a Hugging Face model without touching its modeling file.

Prefixes reach attention through an attention function registered with transformers under the name
``hyperpelt``: it receives the host's own query/key/value states, prepends the generated prefix keys and
values of the calling module's site, widens the mask and position bias by the prefix length, and hands
over to transformers' SDPA function. Adapters reach the feed-forward blocks through thin wrappers that keep
the host module as ``base_layer``. Both read the weights generated for the current step from one
``ConditioningState`` set once per forward, never from extra arguments threaded through the host.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_IMPLEMENTATION = "hyperpelt"


@dataclass
class ConditioningState:
    """The weights generated for the batch being processed, shared by every injected site.

    ``rows`` maps each example of the batch to a row of the generated tensors (None: one row for all).
    Prefix tensors are [rows, attention_sites, N, inner_dim]; adapter tensors [rows, ffn_sites, ...].
    """

    enabled: bool = True
    rows: torch.Tensor | None = None
    prefix_keys: torch.Tensor | None = None
    prefix_values: torch.Tensor | None = None
    adapter_down: torch.Tensor | None = None
    adapter_up: torch.Tensor | None = None
    adapter_scale: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def clear(self) -> None:
        self.rows = self.prefix_keys = self.prefix_values = None
        self.adapter_down = self.adapter_up = self.adapter_scale = None
        self.extra = {}

    def rows_for(self, batch_size: int) -> torch.Tensor | None:
        """Row index per example, repeated when generation expands the batch (beams, several samples)."""
        if self.rows is None:
            return None
        if batch_size != len(self.rows):
            return self.rows.repeat_interleave(batch_size // len(self.rows))
        return self.rows


def select_rows(tensor: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """[R, ...] -> [B, ...] by example rows, or [1, ...] to broadcast when one row serves the batch."""
    return tensor[:1] if rows is None else tensor[rows]


class PrefixSlot:
    """Attached to a host attention module: where that module finds its prefix for the current step."""

    def __init__(self, state: ConditioningState, index: int, num_heads: int, head_dim: int):
        self.state, self.index, self.num_heads, self.head_dim = state, index, num_heads, head_dim

    def key_values(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        state = self.state
        if not state.enabled or state.prefix_keys is None:
            return None
        rows = state.rows_for(batch_size)
        keys = select_rows(state.prefix_keys[:, self.index], rows)
        values = select_rows(state.prefix_values[:, self.index], rows)
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
    return sdpa_attention_forward(module, query, key, value, attention_mask, position_bias=position_bias, **kwargs)


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


def parallel_adapter(x: torch.Tensor, state: ConditioningState, index: int, activation) -> torch.Tensor | None:
    """λ · up(act(down(x))) with the generated weights of FFN site ``index``; None when inactive.

    One row for the whole batch uses plain matmuls; a batch that mixes tasks uses one batched matmul
    with per-example weights, never a Python loop over examples.
    """
    if not state.enabled or state.adapter_down is None:
        return None
    down, up = state.adapter_down[:, index], state.adapter_up[:, index]
    scale = state.adapter_scale[index]
    rows = state.rows_for(x.shape[0])
    if rows is None:
        hidden = activation(F.linear(x, down[0].to(x.dtype)))
        return scale * F.linear(hidden, up[0].to(x.dtype))
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    hidden = activation(torch.bmm(flat, down[rows].to(x.dtype).transpose(1, 2)))
    out = torch.bmm(hidden, up[rows].to(x.dtype).transpose(1, 2))
    return scale * out.reshape(x.shape)


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


class OutputAdapter(nn.Module):
    """Wraps a feed-forward module f: returns f(x) + adapter(x) (T5's DenseReluDense)."""

    def __init__(self, base_layer: nn.Module, state: ConditioningState, index: int, activation: str):
        super().__init__()
        self.base_layer, self.state, self.index = base_layer, state, index
        self.activation = ACTIVATIONS[activation]

    def forward(self, hidden_states, *args, **kwargs):
        out = self.base_layer(hidden_states, *args, **kwargs)
        delta = parallel_adapter(hidden_states, self.state, self.index, self.activation)
        return out if delta is None else out + delta


class ResidualInputAdapter(nn.Module):
    """Wraps a module g(h, residual) that adds ``residual`` before its layer norm (BERT's BertOutput).

    Adding adapter(residual) to the residual gives LN(dense(h) + residual + adapter(residual)): the
    adapter runs beside the feed-forward block on the block's input, with no host code repeated.
    """

    def __init__(self, base_layer: nn.Module, state: ConditioningState, index: int, activation: str):
        super().__init__()
        self.base_layer, self.state, self.index = base_layer, state, index
        self.activation = ACTIVATIONS[activation]

    def forward(self, hidden_states, input_tensor, *args, **kwargs):
        delta = parallel_adapter(input_tensor, self.state, self.index, self.activation)
        if delta is not None:
            input_tensor = input_tensor + delta
        return self.base_layer(hidden_states, input_tensor, *args, **kwargs)


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, new)
