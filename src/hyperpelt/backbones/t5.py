"""T5 (encoder-decoder, text to text): the only file that knows T5's module layout."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

from ..inject import ParallelAdapter
from .base import Dims, Site

BLOCK_TYPES = ("encoder_self_attention", "decoder_self_attention", "cross_attention", "encoder_ffn", "decoder_ffn")

# Architectures buildable offline (random weights) and the hub ids of their pretrained weights.
BUILTIN = {
    "t5-tiny": (dict(d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16), None),
    "t5-small": (dict(d_model=512, d_ff=2048, num_layers=6, num_heads=8, d_kv=64), "google-t5/t5-small"),
    "t5-base": (dict(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64), "google-t5/t5-base"),
    "t5-large": (dict(d_model=1024, d_ff=4096, num_layers=24, num_heads=16, d_kv=64), "google-t5/t5-large"),
}
T5_SPECIAL_IDS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def local_t5_tokenizer() -> str | None:
    from ..tasks.sources import default_data_dir

    path = Path(default_data_dir()) / "tokenizers" / "t5"
    return str(path) if path.is_dir() else None


class T5Backbone:
    family = "t5"
    generative = True
    block_types = BLOCK_TYPES
    ffn_wrapper = ParallelAdapter

    @staticmethod
    def matches(name: str, config) -> bool:
        return name in BUILTIN or getattr(config, "model_type", "") in ("t5", "mt5")

    def load(self, cfg):
        if cfg.name in BUILTIN:
            sizes, hub_id = BUILTIN[cfg.name]
            if cfg.pretrained and hub_id is not None:
                host = T5ForConditionalGeneration.from_pretrained(hub_id)
            else:
                host = T5ForConditionalGeneration(T5Config(vocab_size=32128, dropout_rate=0.0, **T5_SPECIAL_IDS, **sizes))
            tokenizer = cfg.tokenizer or local_t5_tokenizer() or hub_id
        else:
            if cfg.pretrained:
                host = T5ForConditionalGeneration.from_pretrained(cfg.name)
            else:
                host = T5ForConditionalGeneration(T5Config.from_pretrained(cfg.name))
            tokenizer = cfg.tokenizer or cfg.name
        return host, AutoTokenizer.from_pretrained(tokenizer)

    def dims(self, host) -> Dims:
        c = host.config
        return Dims(c.num_layers, c.d_model, c.num_heads, c.d_kv, c.d_ff)

    def sites(self, host) -> list[Site]:
        """Prefix sites (attention), parallel-adapter sites (ffn) and, for adapters placed after a block
        (Houlsby, Hyperformer), the output projections of self-attention and FFN (attention_output, ffn_output)."""
        sites = []
        for i in range(len(host.encoder.block)):
            enc = f"encoder.block.{i}.layer"
            sites += [Site(f"{enc}.0.SelfAttention", "attention", 0, i), Site(f"{enc}.1.DenseReluDense", "ffn", 3, i)]
            sites += [Site(f"{enc}.0.SelfAttention.o", "attention_output", 0, i)]
            sites += [Site(f"{enc}.1.DenseReluDense.wo", "ffn_output", 3, i)]
        for i in range(len(host.decoder.block)):
            dec = f"decoder.block.{i}.layer"
            sites += [Site(f"{dec}.0.SelfAttention", "attention", 1, i), Site(f"{dec}.1.EncDecAttention", "attention", 2, i)]
            sites += [Site(f"{dec}.2.DenseReluDense", "ffn", 4, i), Site(f"{dec}.0.SelfAttention.o", "attention_output", 1, i)]
            sites += [Site(f"{dec}.2.DenseReluDense.wo", "ffn_output", 4, i)]
        return sites

    def frozen_head(self, host):
        return host.lm_head

    def encode(self, tokenizer, task, examples, task_prefix: bool, cfg) -> list[dict]:
        inputs = tokenizer(
            [task.input_text(ex, with_prefix=task_prefix) for ex in examples],
            max_length=cfg.max_input_length,
            truncation=True,
        )["input_ids"]
        targets = tokenizer(
            [task.target_text(ex) for ex in examples], max_length=cfg.max_target_length, truncation=True
        )["input_ids"]
        return [{"input_ids": i, "labels": t, "label": ex["label"]} for i, t, ex in zip(inputs, targets, examples)]

    def collate(self, features: list[dict], tokenizer) -> dict:
        pad = tokenizer.pad_token_id
        input_ids = _pad([f["input_ids"] for f in features], pad)
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != pad).long() if pad is not None else torch.ones_like(input_ids),
            "labels": _pad([f["labels"] for f in features], -100),
        }


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out
