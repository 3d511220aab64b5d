"""T5 (encoder-decoder, text to text): the only file that knows T5's module layout."""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Attention, T5LayerNorm

from ..errors import UserError
from ..inject import ParallelAdapter
from ..inject.packing import Packing, packed
from ..tasks.sources import default_data_dir
from .base import (
    Backbone,
    Dims,
    Site,
    SiteTemplate,
    host_dtype,
    in_host_dtype,
    layer_sites,
    pad_sequences,
    pretrained_dtype,
)
from .few_rows import few_rows_linears

BLOCK_TYPES = (
    "encoder_self_attention", "decoder_self_attention", "cross_attention", "encoder_ffn", "decoder_ffn"
)

# Each layer's sites, in the order methods' per-site weights follow. Adapters placed after a block
# (Houlsby, Hyperformer) sit on the output projections of self-attention and the feed-forward block.
ENCODER_SITES = (
    SiteTemplate("layer.0.SelfAttention", "attention", "encoder_self_attention"),
    SiteTemplate("layer.1.DenseReluDense", "ffn", "encoder_ffn"),
    SiteTemplate("layer.0.SelfAttention.o", "attention_output", "encoder_self_attention"),
    SiteTemplate("layer.1.DenseReluDense.wo", "ffn_output", "encoder_ffn"),
)
DECODER_SITES = (
    SiteTemplate("layer.0.SelfAttention", "attention", "decoder_self_attention"),
    SiteTemplate("layer.1.EncDecAttention", "attention", "cross_attention"),
    SiteTemplate("layer.2.DenseReluDense", "ffn", "decoder_ffn"),
    SiteTemplate("layer.0.SelfAttention.o", "attention_output", "decoder_self_attention"),
    SiteTemplate("layer.2.DenseReluDense.wo", "ffn_output", "decoder_ffn"),
)

# Architectures buildable offline (random weights) and the hub ids of their pretrained weights.
BUILTIN = {
    "t5-tiny": (dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16), None),
    "t5-small": (dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64), "google-t5/t5-small"),
    "t5-base": (dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64), "google-t5/t5-base"),
    "t5-large": (dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16, d_kv=64), "google-t5/t5-large"),
}
T5_SPECIAL_IDS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
HUB_TOKENIZER = "google-t5/t5-small"  # t5-tiny has no hub weights; every T5 size shares this vocabulary


def random_t5(name: str) -> T5ForConditionalGeneration:
    """A built-in T5 architecture with random weights (drawn from torch's global generator)."""
    sizes, _ = BUILTIN[name]
    return T5ForConditionalGeneration(T5Config(vocab_size=32128, dropout_rate=0.0, **T5_SPECIAL_IDS, **sizes))


def few_row_decoding(host: T5ForConditionalGeneration) -> T5ForConditionalGeneration:
    """``host``, its decoding steps' linear layers computing a few rows faster (``few_rows.py``)."""
    few_rows_linears([host.lm_head, *host.decoder.modules()])
    return host


class _RecomputedLayerNorm(T5LayerNorm):
    """T5's layer norm over a half-precision host: the same forward, run again in the backward pass instead
    of keeping what it computed. T5 normalises in float32, and with a trained (float32) weight its
    output stays float32, so each norm would keep two float32 copies of the hidden states for the
    backward pass: under bf16 they were a third of a t5-base step's activations."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad):
            return checkpoint(super().forward, hidden_states, use_reentrant=False)
        return super().forward(hidden_states)


def recomputed_layer_norms(host: T5ForConditionalGeneration, cfg) -> T5ForConditionalGeneration:
    """``host``, its layer norms recomputed in the backward pass where model.dtype is a half dtype
    (``_RecomputedLayerNorm``; the same weights and outputs). Float32: ``host`` untouched."""
    if host_dtype(cfg) != torch.float32:
        for module in host.modules():
            if type(module) is T5LayerNorm:
                module.__class__ = _RecomputedLayerNorm
    return host


def _load_t5(cfg) -> T5ForConditionalGeneration:
    """The host of ``cfg`` with its weights in model.dtype (``base.in_host_dtype``)."""
    if cfg.name in BUILTIN:
        hub_id = BUILTIN[cfg.name][1]
        if cfg.pretrained and hub_id is not None:
            return T5ForConditionalGeneration.from_pretrained(hub_id, use_safetensors=True,
                                                              **pretrained_dtype(cfg))
        return in_host_dtype(random_t5(cfg.name), cfg)
    if cfg.pretrained:
        return T5ForConditionalGeneration.from_pretrained(cfg.name, use_safetensors=True,
                                                          **pretrained_dtype(cfg))
    return in_host_dtype(T5ForConditionalGeneration(T5Config.from_pretrained(cfg.name)), cfg)


def _relative_bias(attention, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """T5's bias [1, heads, q, k] for keys at ``key_positions`` seen from queries at ``query_positions``, as
    ``T5Attention.compute_bias`` computes it for a past (relative position key - query, the layer's own
    bidirectional setting and buckets)."""
    buckets = attention._relative_position_bucket(
        key_positions[None, :] - query_positions[:, None],
        bidirectional=not attention.is_decoder,
        num_buckets=attention.relative_attention_num_buckets,
        max_distance=attention.relative_attention_max_distance,
    )
    return attention.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)


class _OwnRelativeBias:
    """``inject.attention.RelativePositionBias`` of a T5 attention module holding the relative position
    weights (the first self-attention of each stack; later layers reuse what it computes)."""

    def __init__(self, attention):
        self.attention = attention

    def within(self, width: int, device) -> torch.Tensor:
        # the class's method: skipped() may have replaced the instance's
        return type(self.attention).compute_bias(self.attention, width, width, device=device)

    @contextmanager
    def skipped(self):
        weight = self.attention.relative_attention_bias.weight  # [buckets, heads]
        self.attention.compute_bias = lambda *_, **__: weight.new_zeros(1, weight.shape[1], 1, 1)
        try:
            yield
        finally:
            del self.attention.compute_bias


def _heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, L, heads x head_dim] -> [B, heads, L, head_dim]."""
    return states.view(*states.shape[:2], -1, head_dim).transpose(1, 2)


def local_t5_tokenizer() -> str | None:
    path = Path(default_data_dir()) / "tokenizers" / "t5"
    return str(path) if path.is_dir() else None


class T5Backbone(Backbone):
    generative = True
    block_types = BLOCK_TYPES
    layer_norm_classes = (T5LayerNorm,)
    parallel_adapter = ParallelAdapter

    @staticmethod
    def matches(name: str, config) -> bool:
        return name in BUILTIN or getattr(config, "model_type", "") in ("t5", "mt5")

    def load_host(self, cfg) -> T5ForConditionalGeneration:
        return few_row_decoding(recomputed_layer_norms(_load_t5(cfg), cfg))

    def load_tokenizer(self, cfg):
        """The configured tokenizer; for built-in names the local copy under the data folder, else the
        hub's."""
        if cfg.tokenizer or cfg.name not in BUILTIN:
            return AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.name,
                                                 trust_remote_code=cfg.trust_remote_code)
        local = local_t5_tokenizer()
        if local:
            return AutoTokenizer.from_pretrained(local, trust_remote_code=False)
        hub_id = BUILTIN[cfg.name][1] or HUB_TOKENIZER
        try:
            return AutoTokenizer.from_pretrained(hub_id, trust_remote_code=False)
        except OSError:
            raise UserError(
                f"T5 tokenizer: no local copy at {Path(default_data_dir()) / 'tokenizers' / 't5'} "
                f"and the hub ({hub_id}) could not be reached; set model.tokenizer to a tokenizer folder"
            ) from None

    def set_dropout(self, host, p: float) -> None:
        """T5's ``nn.Dropout`` modules, and its attention's own probability (a float, not a module)."""
        super().set_dropout(host, p)
        for module in host.modules():
            if isinstance(module, T5Attention):
                module.dropout = p

    def dims(self, host) -> Dims:
        c = host.config
        return Dims(c.num_layers, c.d_model, c.num_heads, c.d_kv, c.d_ff)

    def sites(self, host) -> list[Site]:
        return [
            *layer_sites("encoder", "block", len(host.encoder.block), ENCODER_SITES, BLOCK_TYPES),
            *layer_sites("decoder", "block", len(host.decoder.block), DECODER_SITES, BLOCK_TYPES),
        ]

    def prefix_position_bias(self, host, site: Site):
        """How T5 biases keys at a distance at an attention site (prefix keys as past tokens), or None for
        cross-attention, which has no position bias. Only the first layer of a stack holds the relative
        attention bias; the later layers reuse what it computes, so the function reads that layer's."""
        if BLOCK_TYPES[site.block_type] == "cross_attention":
            return None
        return partial(_relative_bias, host.get_submodule(f"{site.stack}.block.0.layer.0.SelfAttention"))

    def relative_position_biases(self, host) -> dict[str, _OwnRelativeBias]:
        return {name: _OwnRelativeBias(module) for name, module in host.named_modules()
                if getattr(module, "has_relative_attention_bias", False)}

    def layer_norm_eps(self, norm: T5LayerNorm) -> float:
        return norm.variance_epsilon

    def cross_attention_projections(self, host) -> list[tuple[nn.Module, nn.Module, int]]:
        attentions = [block.layer[1].EncDecAttention for block in host.decoder.block]
        return [(a.k, a.v, a.key_value_proj_dim) for a in attentions]

    def cross_attention_cache(self, host, hidden: torch.Tensor, packing: Packing) -> EncoderDecoderCache:
        """The decoder's cache of its cross-attention keys and values of the packed encoder states
        ``hidden`` [1, tokens, d] (``packing`` lays them out as the batch), projected from the real tokens
        only: the decoder would project the padded states."""
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        with packed(packing):
            for layer, (key, value, head_dim) in enumerate(self.cross_attention_projections(host)):
                keys, values = (_heads(packing.unpack(project(hidden)), head_dim) for project in (key, value))
                cache.cross_attention_cache.update(keys, values, layer)
                cache.is_updated[layer] = True
        return cache

    def encode(self, tokenizer, task, examples, *, task_prefix, max_input_length, max_target_length,
               separate_pairs=False) -> list[dict]:
        texts = [task.input_text(ex, with_prefix=task_prefix) for ex in examples]
        inputs = tokenizer(texts, max_length=max_input_length, truncation=True)["input_ids"]
        targets = [task.target_text(ex) for ex in examples]
        targets = tokenizer(targets, max_length=max_target_length, truncation=True)["input_ids"]
        return [
            {"input_ids": i, "labels": t, "label": ex["label"]}
            for i, t, ex in zip(inputs, targets, examples)
        ]

    def collate(self, features: list[dict], tokenizer) -> dict:
        pad = tokenizer.pad_token_id
        input_ids = pad_sequences([f["input_ids"] for f in features], pad)
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != pad).long() if pad is not None else torch.ones_like(input_ids),
            "labels": pad_sequences([f["labels"] for f in features], -100),
        }
