"""Backbone families: each knows its host's sites and how tasks become tensors."""

from __future__ import annotations

from transformers import AutoConfig

from ..errors import UserError
from .bert import PACKAGED, BertBackbone
from .t5 import BUILTIN, T5Backbone

BACKBONES = (T5Backbone, BertBackbone)


def get_backbone(name: str):
    """The backbone family of a built-in name, local path or hub id."""
    config = None
    if name not in BUILTIN and name not in PACKAGED:
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise UserError(f"model '{name}' is not a built-in name ({', '.join([*BUILTIN, *PACKAGED])}) and could not be loaded: {err}") from None
    for cls in BACKBONES:
        if cls.matches(name, config):
            return cls()
    raise UserError(f"model '{name}' has model_type '{config.model_type}', which no backbone supports (t5, bert)")
