"""How an encoder reads a batch's texts: padded, one host forward per text of the examples (training,
and methods that change the inputs), or packed at inference: every text of the batch, both texts of
separately encoded pairs included, in one host forward over their real tokens only (the layout:
``inject/packing.py``).

A mixed-task batch of short and long texts padded to its longest text spends most of its matmuls on
padding, and the second forward of separately encoded pairs runs on every row; packed, a batch costs
about what its tokens cost, whatever its mix of tasks and lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from .heads import Encoded, pool
from .inject.attention import row_position_bias_skipped
from .inject.packing import Packing, packed
from .inject.reference import reference_path


def encode_texts(model, inputs: dict, task_ids: torch.Tensor) -> tuple[Encoded, Encoded | None]:
    """The batch's first texts, and its second texts where a pair task encodes them separately."""
    if can_pack(model, inputs):
        return encode_packed(model, inputs, task_ids)
    second = encode_padded(model, inputs, "_b") if "input_ids_b" in inputs else None
    return encode_padded(model, inputs, ""), second


def encode_padded(model, inputs: dict, suffix: str) -> Encoded:
    """One text of every example (``suffix`` "" or "_b"), as the padded batch of it."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    sequence = model.method.prepare_inputs(model.host, {n: inputs[n + suffix] for n in names}, model.state)
    hidden = model.host(**sequence).last_hidden_state
    return read_encoding(model, hidden, inputs["input_ids" + suffix], sequence["attention_mask"])


def read_encoding(model, hidden: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
    """Texts' pooled vectors and token states from the host's ``hidden`` states of token ``ids``; the
    mask covers any positions the method put before the texts (prompts)."""
    options = model.heads_config
    pooled = pool(hidden, attention_mask, options.pooling, options.normalize_pooled)
    special = torch.tensor(model.tokenizer.all_special_ids, device=ids.device)
    token_mask = attention_mask[:, -ids.shape[1]:].bool() & ~torch.isin(ids, special)
    token_mask = F.pad(token_mask, (hidden.shape[1] - ids.shape[1], 0), value=False)  # prompts lead
    return Encoded(pooled, hidden, token_mask)


def can_pack(model, inputs: dict) -> bool:
    """Whether ``model`` encodes this batch packed: at inference (no gradients), its method packable, its
    injections on, ``model.pack_inference`` set, the batch padded or of text pairs, and not on the reference
    path (``inject/reference.py``)."""
    worth = "input_ids_b" in inputs or not bool(inputs["attention_mask"].all())
    return (worth and model.pack_inference and model.method.packs_sequences and model.state.enabled
            and not torch.is_grad_enabled() and not reference_path())


def packed_encoder_states(model, inputs: dict, with_cache: bool) -> tuple[torch.Tensor, Cache | None]:
    """A text-to-text host's encoder states of the batch [B, L, d], from one encoder forward over the
    packed row of its real tokens (zeros at padding, which the decoder's attention mask hides); with
    ``with_cache``, the decoder's cache holding its cross-attention keys and values of those states,
    projected from the real tokens only (the decoder would project the padded states), where the backbone
    says how (``cross_attention_projections``)."""
    packing = Packing.of(inputs["attention_mask"].bool(), model.state.rows, model.state.task_ids)
    encoder = model.host.get_encoder()
    with packed(packing), row_position_bias_skipped(encoder):
        hidden = encoder(input_ids=packing.pack(inputs["input_ids"])).last_hidden_state
    project_with = getattr(model.backbone, "cross_attention_projections", None)  # optional in the protocol
    projections = project_with(model.host) if with_cache and project_with is not None else None
    if projections is None:
        return packing.unpack(hidden), None
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with packed(packing):
        for layer, (key, value, head_dim) in enumerate(projections):
            keys, values = (_heads(packing.unpack(project(hidden)), head_dim) for project in (key, value))
            cache.cross_attention_cache.update(keys, values, layer)
            cache.is_updated[layer] = True
    return packing.unpack(hidden), cache


def packed_generation_inputs(model, inputs: dict) -> dict:
    """``generate``'s inputs with the encoder's states of the packed batch in place of its token ids, and
    the decoder's cross-attention cache where it uses one, none was given, and one sequence is generated
    per input (beams widen the batch after the encoder, the cache would not follow)."""
    one_sequence = (inputs.get("num_beams") or 1) == (inputs.get("num_return_sequences") or 1) == 1
    configured = getattr(model.host.generation_config, "use_cache", True)
    with_cache = (one_sequence and inputs.get("use_cache", configured) is not False
                  and inputs.get("past_key_values") is None)
    states, cache = packed_encoder_states(model, inputs, with_cache=with_cache)
    inputs = {k: v for k, v in inputs.items() if k != "input_ids"}
    inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=states)
    if cache is not None:
        inputs["past_key_values"] = cache
    return inputs


def _heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, L, heads x head_dim] -> [B, heads, L, head_dim]."""
    return states.view(*states.shape[:2], -1, head_dim).transpose(1, 2)


def encode_packed(model, inputs: dict, task_ids: torch.Tensor) -> tuple[Encoded, Encoded | None]:
    """What ``encode_texts`` gives, from one forward over the packed row of all the batch's tokens."""
    suffixes = ["", "_b"] if "input_ids_b" in inputs else [""]
    widths = [inputs["input_ids" + suffix].shape[1] for suffix in suffixes]
    width = max(widths)

    def stacked(name: str) -> torch.Tensor:  # [texts, width]: first texts, then second texts
        return torch.cat([F.pad(inputs[name + s], (0, width - w)) for s, w in zip(suffixes, widths)])

    tasks = task_ids.repeat(len(suffixes))
    rows = None if model.state.rows is None else model.state.rows.repeat(len(suffixes))
    packing = Packing.of(stacked("attention_mask").bool(), rows, tasks)
    positions = torch.arange(width, device=tasks.device) + model.backbone.first_position(model.host)
    with packed(packing):
        hidden = model.host(input_ids=packing.pack(stacked("input_ids")),
                            token_type_ids=packing.pack(stacked("token_type_ids")),
                            position_ids=packing.pack(positions.expand(len(tasks), -1))).last_hidden_state
    texts = packing.unpack(hidden)
    batch = len(task_ids)
    encoded = [read_encoding(model, texts[i * batch:(i + 1) * batch, :w], inputs["input_ids" + suffix],
                             inputs["attention_mask" + suffix])
               for i, (suffix, w) in enumerate(zip(suffixes, widths))]
    return encoded[0], encoded[1] if len(encoded) > 1 else None
