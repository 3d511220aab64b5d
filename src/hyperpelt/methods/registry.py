"""Methods by name: a config dataclass and a module class, registered once each."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import from_dict
from ..errors import UserError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    module_cls: type


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, module_cls: type) -> None:
    if name in _METHODS:
        raise ValueError(f"method '{name}' is already registered")
    _METHODS[name] = MethodSpec(name, config_cls, module_cls)


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}'; known methods: {', '.join(method_names())}")
    return _METHODS[name]


def method_config(options: dict):
    """The method's config dataclass from ``{"name": ..., option: value, ...}``, every key checked."""
    options = dict(options)
    spec = get_method(options.pop("name", "hyperpelt"))
    return from_dict(spec.config_cls, options, "method")
