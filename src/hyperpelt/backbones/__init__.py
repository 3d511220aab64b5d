"""Backbone families, registered by class: each knows its host's sites and how tasks become tensors."""

from __future__ import annotations

from transformers import AutoConfig

from ..errors import UserError
from .base import Backbone, Dims, Site, is_layer_norm, pad_sequences
from .bert import PACKAGED, BertBackbone
from .t5 import BUILTIN, T5Backbone

_BACKBONES: list[type] = []
BUILTIN_NAMES = (*BUILTIN, *PACKAGED)


def register_backbone(cls: type) -> type:
    """Add a backbone class (see ``Backbone``); the first whose ``matches`` accepts a model serves it."""
    if cls in _BACKBONES:
        raise ValueError(f"backbone {cls.__name__} is already registered")
    _BACKBONES.append(cls)
    return cls


register_backbone(T5Backbone)
register_backbone(BertBackbone)


def known_backbone(name: str) -> Backbone | None:
    """The backbone of a name that needs no download to resolve (a built-in name), else None."""
    for cls in _BACKBONES:
        if cls.matches(name, None):
            return cls()
    return None


def get_backbone(name: str, trust_remote_code: bool = False) -> Backbone:
    """The backbone family of a built-in name, local path or hub id (``trust_remote_code``: the config's
    model.trust_remote_code)."""
    known = known_backbone(name)
    if known is not None:
        return known
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(
            f"model '{name}' is not a built-in name ({', '.join(BUILTIN_NAMES)}) "
            f"and could not be loaded: {err}"
        ) from None
    for cls in _BACKBONES:
        if cls.matches(name, config):
            return cls()
    raise UserError(
        f"model '{name}' has model_type '{config.model_type}', which no backbone supports (t5, bert)"
    )


__all__ = ["Backbone", "Dims", "Site", "get_backbone", "is_layer_norm", "known_backbone", "pad_sequences",
           "register_backbone"]
