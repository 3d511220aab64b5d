"""Prefixes in attention, through an attention function registered with transformers.

The function, registered under the name ``sdpa_with_prefix``, receives the host's own query/key/value
states, prepends the generated prefix keys and values of the calling module's site, widens the mask and
position bias by the prefix length, and hands over to transformers' SDPA function. While the host reads a
packed row (``packing.py``), it attends within each sequence of the row.

The position bias of prefix keys (hosts with a relative position bias, T5) is zero, or, with a slot's
``position_bias`` function, that of past tokens at a distance, as transformers and peft place a prefix of
length N: queries sit at N + i, prefix key p at p, so it gets the bias of relative position p - N - i.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .packing import current_packing, packed
from .reference import reference_path
from .state import ConditioningState, select_rows

ATTN_IMPLEMENTATION = "sdpa_with_prefix"  # serves every method with prefixes


PositionBias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(query positions [q], key positions [k]) -> the host's position bias [1, heads, q, k]."""


class RelativePositionBias(Protocol):
    """How a host attention module that holds relative position weights (T5's first layer of a stack)
    biases attention, as its backbone computes it (``Backbone.relative_position_biases``): what attention
    over a packed row needs, which the module's own bias over the whole row would get wrong."""

    def within(self, width: int, device) -> torch.Tensor:
        """The bias [1, heads, width, width] among the tokens of one sequence ``width`` long."""

    def skipped(self) -> AbstractContextManager:
        """While this lasts, the module's bias over a whole row is a placeholder [1, heads, 1, 1] of zeros."""


RELATIVE_POSITION_BIAS = "hyperpelt_position_bias"  # where a host attention module holds its own


class PrefixSlot:
    """Attached to a host attention module: where that module finds its prefix for the current step,
    (optional) how the host biases a key at a distance, for prefix keys placed as past tokens, and whether
    the module is a decoder's (which reads the same cached keys at every decoding step)."""

    def __init__(self, state: ConditioningState, index: int, num_heads: int, head_dim: int,
                 position_bias: PositionBias | None = None, decoder: bool = False):
        self.state, self.index, self.num_heads, self.head_dim = state, index, num_heads, head_dim
        self.position_bias, self.decoder = position_bias, decoder

    def bias_columns(self, n: int, queries: int, keys: int, device) -> torch.Tensor | None:
        """The position bias of the n prefix keys [1, heads, queries, n], or None (zero): the real keys
        are past and present tokens 0..keys-1, the queries the last ``queries`` of them, all shifted by n."""
        if self.position_bias is None:
            return None
        query_positions = torch.arange(keys - queries, keys, device=device) + n
        return self.position_bias(query_positions, torch.arange(n, device=device))

    def key_values(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This site's prefix keys and values for the batch [batch, heads, n, head_dim]: the task prefix,
        the per-example one, or both (concatenated, or summed with ``state.prefix_merge == "sum"``). A
        decoder asks at every step: outside packed rows, they are selected once per batch."""
        state = self.state
        if not state.enabled:
            return None
        state.refresh()
        if current_packing() is not None:
            return self._selected(batch_size)
        return state.once_per_batch(("prefix", self.index, batch_size),
                                    (state.prefix, state.example_prefix, state.rows),
                                    lambda: self._selected(batch_size))

    def _selected(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        state = self.state
        parts = []
        if state.prefix is not None:
            rows = state.rows_for(batch_size, state.prefix.shared)
            parts.append(self._heads(state.prefix, rows, batch_size))
        if state.example_prefix is not None:
            rows = state.example_rows_for(batch_size, state.example_prefix)
            parts.append(self._heads(state.example_prefix, rows, batch_size))
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        (task_keys, task_values), (keys, values) = parts
        if state.prefix_merge == "sum":
            return task_keys + keys, task_values + values
        return torch.cat([task_keys, keys], dim=2), torch.cat([task_values, values], dim=2)

    def joined(self, prefix_keys, prefix_values, key, value, remember: bool):
        """The prefix before ``key`` and ``value``. A decoder's cross-attention reads the same cached keys
        and values at every decoding step: with ``remember``, the joined ones are kept for the batch and
        reused while the same key and value tensors come back."""
        kept = self.state.joined.get(self.index)
        if kept is not None and kept[0] is key and kept[1] is value:
            return kept[2], kept[3]
        joined = (torch.cat([prefix_keys.to(key.dtype), key], dim=2),
                  torch.cat([prefix_values.to(value.dtype), value], dim=2))
        if remember:
            self.state.joined[self.index] = (key, value, *joined)
        return joined

    def _heads(self, weights, rows, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        keys = select_rows(weights.site("keys", self.index), rows)
        values = select_rows(weights.site("values", self.index), rows)
        shape = (keys.shape[0], keys.shape[1], self.num_heads, self.head_dim)
        keys = keys.reshape(shape).transpose(1, 2).expand(batch_size, -1, -1, -1)
        values = values.reshape(shape).transpose(1, 2).expand(batch_size, -1, -1, -1)
        return keys, values


def _prefix_attention(module, query, key, value, attention_mask, position_bias=None, **kwargs):
    packing = current_packing()
    if packing is None:
        return _attention(module, query, key, value, attention_mask, position_bias, **kwargs)
    out = []
    for start, end, group in packing.groups:  # attend within each sequence: unpack, attend, pack
        part = (group.unpack(x[:, :, start:end].transpose(1, 2)).transpose(1, 2) for x in (query, key, value))
        bias = None if position_bias is None else _group_position_bias(module, group)
        with packed(group):  # the group's prefix rows
            attended, _ = _attention(module, *part, group.mask[:, None, None, :], bias, **kwargs)
        out.append(group.pack(attended))
    return torch.cat(out, dim=1), None


def _group_position_bias(module, group) -> torch.Tensor:
    """A group's relative position bias (the host's, for the packed row, relates tokens of different
    sequences): made by the first layer with relative position weights (T5's first), kept for the rest."""
    if group.position_bias is None:
        bias: RelativePositionBias | None = getattr(module, RELATIVE_POSITION_BIAS, None)
        if bias is None:
            raise ValueError("a packed row's first attention layer must hold the relative position weights")
        group.position_bias = bias.within(group.mask.shape[1], group.mask.device)
    return group.position_bias


@contextmanager
def row_position_bias_skipped(host: nn.Module):
    """While a packed row passes ``host`` (an encoder), its own relative position bias over the whole row,
    which T5's first layer computes (heads x T x T: a third of a second for 2,048 tokens), is a
    placeholder: the attention groups make theirs (``_group_position_bias``)."""
    with ExitStack() as stack:
        for module in host.modules():
            bias: RelativePositionBias | None = getattr(module, RELATIVE_POSITION_BIAS, None)
            if bias is not None:
                stack.enter_context(bias.skipped())
        yield


def _attention(module, query, key, value, attention_mask, position_bias=None, **kwargs):
    slot: PrefixSlot | None = getattr(module, "hyperpelt_prefix", None)
    prefix = slot.key_values(query.shape[0]) if slot is not None else None
    if prefix is not None:
        prefix_keys, prefix_values = prefix
        n = prefix_keys.shape[2]
        remember = slot.decoder and current_packing() is None and not reference_path()
        key, value = slot.joined(prefix_keys, prefix_values, key, value, remember)
        if attention_mask is not None:
            fill = True if attention_mask.dtype == torch.bool else 0.0
            attention_mask = F.pad(attention_mask, (n, 0), value=fill)
        if position_bias is not None:
            columns = slot.bias_columns(n, query.shape[2], key.shape[2] - n, query.device)
            if columns is None:
                position_bias = F.pad(position_bias, (n, 0), value=0.0)
            else:
                columns = columns.to(position_bias.dtype).expand(*position_bias.shape[:-1], n)
                position_bias = torch.cat([columns, position_bias], dim=-1)
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


def _configs(host: nn.Module) -> list:
    """Every distinct config object in the host (T5 gives its encoder and decoder copies of its own)."""
    seen = {}
    for module in host.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
    return list(seen.values())


def set_attention_implementation(host: nn.Module, name: str) -> str:
    """Point every config of the host at attention implementation ``name``; returns the previous one."""
    previous = host.config._attn_implementation
    for config in _configs(host):
        config._attn_implementation = name
    return previous


def use_prefix_attention(host: nn.Module, backbone) -> str:
    """Route the host's attention through the prefix function, its attention modules holding relative
    position weights given their backbone's ``RelativePositionBias``; returns the implementation it
    replaced."""
    for path, bias in backbone.relative_position_biases(host).items():
        setattr(host.get_submodule(path), RELATIVE_POSITION_BIAS, bias)
    return set_attention_implementation(host, ATTN_IMPLEMENTATION)


@contextmanager
def attention_implementation(host: nn.Module, name: str):
    previous = set_attention_implementation(host, name)
    try:
        yield
    finally:
        set_attention_implementation(host, previous)


def attach_prefixes(sites, host: nn.Module, state: ConditioningState, num_heads: int, head_dim: int,
                    backbone=None, position_bias: str = "zero") -> None:
    """Give each attention site its slot: site ``i`` reads row ``i`` of the state's prefix tensors.

    ``position_bias``: "zero" (prefix keys get no position bias) or "distance" (as past tokens; the
    backbone's ``prefix_position_bias(host, site)`` says how, None where the site has no position bias).
    """
    if position_bias not in ("zero", "distance"):
        raise ValueError(f"position_bias must be 'zero' or 'distance', got {position_bias!r}")
    for index, site in enumerate(sites):
        bias = backbone.prefix_position_bias(host, site) if position_bias == "distance" else None
        slot = PrefixSlot(state, index, num_heads, head_dim, bias, decoder=site.stack == "decoder")
        host.get_submodule(site.path).hyperpelt_prefix = slot
