"""How the model's host reads a batch's texts: padded, one host forward per text of the examples (training,
and methods that change the inputs), or packed at inference: every text of the batch, both texts of
separately encoded pairs included, in one host forward over their real tokens only (the layout:
``inject/packing.py``).

A mixed-task batch of short and long texts padded to its longest text spends most of its matmuls on
padding, and the second forward of separately encoded pairs runs on every row; packed, a batch costs
about what its tokens cost, whatever its mix of tasks and lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutput

from ..heads import Encoded, HeadsConfig, pool
from ..inject import ConditioningState
from ..inject.attention import row_position_bias_skipped
from ..inject.packing import Packing, packed
from ..inject.reference import reference_path


def can_pack(inputs: dict, method, state: ConditioningState, pack_inference: bool) -> bool:
    """Whether the host reads this batch packed: at inference (no gradients), the ``method`` packable, its
    injections on (``state.enabled``), ``pack_inference`` set, the batch padded or of text pairs, and not on
    the reference path (``inject/reference.py``)."""
    worth = "input_ids_b" in inputs or not bool(inputs["attention_mask"].all())
    return (worth and pack_inference and method.packs_sequences and state.enabled
            and not torch.is_grad_enabled() and not reference_path())


@dataclass(frozen=True)
class TextReader:
    """An encoder host, with the method's injections reading ``state``, reading a batch's texts into what
    the task heads read (``Encoded``); ``options`` say how its token states pool, ``special_ids`` which
    tokens are no text."""

    host: nn.Module
    backbone: object
    method: object
    state: ConditioningState
    options: HeadsConfig
    special_ids: list[int]
    pack_inference: bool = True

    def __call__(self, inputs: dict, task_ids: torch.Tensor) -> tuple[Encoded, Encoded | None]:
        """The batch's first texts, and its second texts where a pair task encodes them separately."""
        if can_pack(inputs, self.method, self.state, self.pack_inference):
            return self.packed(inputs, task_ids)
        second = self.padded(inputs, "_b") if "input_ids_b" in inputs else None
        return self.padded(inputs, ""), second

    def padded(self, inputs: dict, suffix: str) -> Encoded:
        """One text of every example (``suffix`` "" or "_b"), as the padded batch of it."""
        names = ("input_ids", "attention_mask", "token_type_ids")
        sequence = self.method.prepare_inputs(self.host, {n: inputs[n + suffix] for n in names}, self.state)
        hidden = self.host(**sequence).last_hidden_state
        return self.read(hidden, inputs["input_ids" + suffix], sequence["attention_mask"])

    def read(self, hidden: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        """Texts' pooled vectors and token states from the host's ``hidden`` states of token ``ids``; the
        mask covers any positions the method put before the texts (prompts)."""
        pooled = pool(hidden, attention_mask, self.options.pooling, self.options.normalize_pooled)
        special = torch.tensor(self.special_ids, device=ids.device)
        token_mask = attention_mask[:, -ids.shape[1]:].bool() & ~torch.isin(ids, special)
        token_mask = F.pad(token_mask, (hidden.shape[1] - ids.shape[1], 0), value=False)  # prompts lead
        return Encoded(pooled, hidden, token_mask)

    def packed(self, inputs: dict, task_ids: torch.Tensor) -> tuple[Encoded, Encoded | None]:
        """What reading the batch padded gives, from one forward over the packed row of all its tokens."""
        suffixes = ["", "_b"] if "input_ids_b" in inputs else [""]
        widths = [inputs["input_ids" + suffix].shape[1] for suffix in suffixes]
        width = max(widths)

        def stacked(name: str) -> torch.Tensor:  # [texts, width]: first texts, then second texts
            return torch.cat([F.pad(inputs[name + s], (0, width - w)) for s, w in zip(suffixes, widths)])

        tasks = task_ids.repeat(len(suffixes))
        rows = None if self.state.rows is None else self.state.rows.repeat(len(suffixes))
        packing = Packing.of(stacked("attention_mask").bool(), rows, tasks)
        positions = torch.arange(width, device=tasks.device) + self.backbone.first_position(self.host)
        with packed(packing):
            hidden = self.host(input_ids=packing.pack(stacked("input_ids")),
                               token_type_ids=packing.pack(stacked("token_type_ids")),
                               position_ids=packing.pack(positions.expand(len(tasks), -1))).last_hidden_state
        texts = packing.unpack(hidden)
        batch = len(task_ids)
        encoded = [self.read(texts[i * batch:(i + 1) * batch, :w], inputs["input_ids" + suffix],
                             inputs["attention_mask" + suffix])
                   for i, (suffix, w) in enumerate(zip(suffixes, widths))]
        return encoded[0], encoded[1] if len(encoded) > 1 else None


def packed_encoder_states(host: nn.Module, backbone, state: ConditioningState, inputs: dict,
                          with_cache: bool) -> tuple[torch.Tensor, Cache | None]:
    """A text-to-text host's encoder states of the batch [B, L, d], from one encoder forward over the
    packed row of its real tokens (zeros at padding, which the decoder's attention mask hides); with
    ``with_cache``, the decoder's cache of its cross-attention keys and values of those states where the
    backbone makes one (``cross_attention_cache``: projected from the real tokens only)."""
    packing = Packing.of(inputs["attention_mask"].bool(), state.rows, state.task_ids)
    encoder = host.get_encoder()
    with packed(packing), row_position_bias_skipped(encoder):
        hidden = encoder(input_ids=packing.pack(inputs["input_ids"])).last_hidden_state
    cache = backbone.cross_attention_cache(host, hidden, packing) if with_cache else None
    return packing.unpack(hidden), cache


def packed_generation_inputs(host: nn.Module, backbone, state: ConditioningState, inputs: dict) -> dict:
    """``generate``'s inputs with the encoder's states of the packed batch in place of its token ids, and
    the decoder's cross-attention cache where it uses one, none was given, and one sequence is generated
    per input (beams widen the batch after the encoder, the cache would not follow)."""
    one_sequence = (inputs.get("num_beams") or 1) == (inputs.get("num_return_sequences") or 1) == 1
    configured = getattr(host.generation_config, "use_cache", True)
    with_cache = (one_sequence and inputs.get("use_cache", configured) is not False
                  and inputs.get("past_key_values") is None)
    states, cache = packed_encoder_states(host, backbone, state, inputs, with_cache=with_cache)
    inputs = {k: v for k, v in inputs.items() if k != "input_ids"}
    inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=states)
    if cache is not None:
        inputs["past_key_values"] = cache
    return inputs
