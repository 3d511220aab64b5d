"""What a backbone provides, written down once: the ``Backbone`` protocol and the data it describes.

A backbone is the only code that knows a host model's internals: how to load it, where methods inject
(its sites, described as data), how a task's examples become tensors, which of its modules are layer
norms and their epsilon, its position bias, its decoder's cross-attention and its first position id.
Adding one is one file with a subclass of ``Backbone`` (whose defaults stand for what a host lacks: no
position bias, no cross-attention, positions counted from 0) plus one ``register_backbone`` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from ..devices import DTYPES
from ..errors import UserError
from ..inject.attention import PositionBias, RelativePositionBias
from ..inject.packing import Packing

SITE_ROLES = ("attention", "ffn", "attention_output", "ffn_output")


@dataclass(frozen=True)
class Site:
    """One place a method tunes.

    ``role``: ``attention`` (an attention module: prefixes), ``ffn`` (a feed-forward block: parallel
    adapters), ``attention_output`` / ``ffn_output`` (a block's output projection: adapters after it).
    ``block_type`` indexes the backbone's ``block_types``; ``layer`` counts within its stack.
    """

    path: str
    role: str
    block_type: int
    layer: int

    @property
    def stack(self) -> str:
        """encoder or decoder."""
        return self.path.split(".", 1)[0]


@dataclass(frozen=True)
class SiteTemplate:
    """A site of every layer of a stack: ``{stack}.{layers}.{i}.{module}`` (e.g. T5's self-attention)."""

    module: str
    role: str
    block_type: str


def layer_sites(stack: str, layers: str, count: int, templates, block_types: tuple[str, ...]) -> list[Site]:
    """The sites of ``count`` layers, in layer order and, within a layer, in the order of ``templates``."""
    return [
        Site(f"{stack}.{layers}.{i}.{t.module}", t.role, block_types.index(t.block_type), i)
        for i in range(count)
        for t in templates
    ]


@dataclass(frozen=True)
class Dims:
    num_layers: int
    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim


class Backbone(Protocol):
    """Everything the rest of the library asks of a host model family. Backbones subclass it; the methods
    with a body here are defaults for hosts without the thing they describe."""

    generative: ClassVar[bool]
    """True: text to text (labels are generated); False: an encoder whose task heads read its output."""
    block_types: ClassVar[tuple[str, ...]]
    """Names of the kinds of block that sites belong to (``Site.block_type`` indexes them)."""
    layer_norm_classes: ClassVar[tuple[type, ...]]
    """The host's layer-norm module classes (methods may train or replace them)."""
    parallel_adapter: ClassVar[type]
    """The wrapper that puts a parallel adapter beside this host's feed-forward block (see inject.py)."""

    @staticmethod
    def matches(name: str, config: Any) -> bool:
        """Whether this backbone serves a built-in name, or a hub/local model of this Hugging Face config."""

    def load_host(self, cfg) -> nn.Module:
        """The host model of ``cfg`` (a ModelConfig): pretrained weights, or the architecture at random."""

    def load_tokenizer(self, cfg):
        """The host's tokenizer (loaded only when examples are encoded)."""

    def set_dropout(self, host: nn.Module, p: float) -> None:
        """Every dropout of ``host`` drops with probability ``p`` (model.dropout): its ``nn.Dropout``
        modules, which Hugging Face attention also reads its probability from."""
        for module in host.modules():
            if isinstance(module, nn.Dropout):
                module.p = p

    def dims(self, host: nn.Module) -> Dims:
        """Layer count and widths."""

    def sites(self, host: nn.Module) -> list[Site]:
        """Every site of the host, in a fixed order that methods' per-site weights follow."""

    def prefix_position_bias(self, host: nn.Module, site: Site) -> PositionBias | None:
        """For prefix keys placed as past tokens: a function (query positions [q], key positions [k]) ->
        the position bias [1, heads, q, k] the host gives those keys at ``site``; None (the default)
        where the site has no position bias (absolute positions, cross-attention)."""
        return None

    def relative_position_biases(self, host: nn.Module) -> dict[str, RelativePositionBias]:
        """The host's attention modules (by path) that compute a relative position bias from their own
        weights, each with how it does (what attention over packed rows needs); none by default."""
        return {}

    def layer_norm_eps(self, norm: nn.Module) -> float:
        """The epsilon of one of the host's layer norms (``layer_norm_classes``); default: torch's
        ``nn.LayerNorm``'s."""
        return norm.eps

    def cross_attention_cache(self, host: nn.Module, hidden: torch.Tensor, packing: Packing):
        """Text-to-text hosts: the decoder's cache of its cross-attention keys and values of the packed
        encoder states ``hidden`` (laid out by ``packing``), computed before generation; None (the
        default, and for hosts without cross-attention) lets the decoder project the padded states."""
        return None

    def first_position(self, host: nn.Module) -> int:
        """The position id of a text's first token (default 0)."""
        return 0

    def encode(self, tokenizer, task, examples: list[dict], *, task_prefix: bool, max_input_length: int,
               max_target_length: int, separate_pairs: bool) -> list[dict]:
        """Features of a task's examples: token ids (and targets), one dict per example with its "label"."""

    def collate(self, features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
        """Pad a list of features into the host's inputs, with "labels"."""


def is_layer_norm(module: nn.Module, backbone: Backbone) -> bool:
    return isinstance(module, backbone.layer_norm_classes)


def pad_sequences(sequences: list[list[int]], value: int) -> torch.Tensor:
    """[batch, longest] token ids, right-padded with ``value``."""
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def host_dtype(cfg) -> torch.dtype:
    """The torch dtype of a ModelConfig's model.dtype: what its frozen host weights are stored in."""
    name = getattr(cfg, "dtype", "float32")
    if name not in DTYPES:
        raise UserError(f"config key 'model.dtype' expects one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def pretrained_dtype(cfg) -> dict:
    """``from_pretrained``'s keyword for model.dtype: none for float32, which loads as it always has."""
    dtype = host_dtype(cfg)
    return {} if dtype == torch.float32 else {"dtype": dtype}


def in_host_dtype(host: nn.Module, cfg) -> nn.Module:
    """A host built with random weights, cast to model.dtype after they were drawn (the same numbers as in
    float32), keeping in float32 what ``from_pretrained`` keeps (transformers' ``_keep_in_fp32_modules``
    under float16, ``_keep_in_fp32_modules_strict`` under both half dtypes). Float32: ``host`` untouched."""
    dtype = host_dtype(cfg)
    if dtype == torch.float32:
        return host
    keep = set(getattr(host, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        keep |= set(getattr(host, "_keep_in_fp32_modules", None) or ())
    for name, module in host.named_modules():
        if keep.intersection(name.split(".")):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)
        for key, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, key, buffer.to(dtype))
    return host
