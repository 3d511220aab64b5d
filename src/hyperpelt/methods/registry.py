"""Methods by name: a config dataclass and a module class, registered once each."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError
from ..options import from_dict

DEFAULT_METHOD = "hyperpelt"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    module_cls: type


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, module_cls: type) -> None:
    """Make a method available by name; each name and each config class is registered once."""
    if name in _METHODS:
        raise ValueError(f"method '{name}' is already registered")
    if any(spec.config_cls is config_cls for spec in _METHODS.values()):
        raise ValueError(f"config class {config_cls.__name__} already belongs to a method; subclass it")
    _METHODS[name] = MethodSpec(name, config_cls, module_cls)


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}'; known methods: {', '.join(method_names())}")
    return _METHODS[name]


def method_name(config) -> str:
    """The registered name of a method config (its class identifies the method)."""
    for spec in _METHODS.values():
        if type(config) is spec.config_cls:
            return spec.name
    raise ValueError(f"{type(config).__name__} is no registered method config")


def method_config(options):
    """The method's config dataclass from ``{"name": ..., option: value, ...}`` (every key checked), or
    the config itself when given one."""
    if dataclasses.is_dataclass(options):
        return options
    options = dict(options)
    spec = get_method(options.pop("name", DEFAULT_METHOD))
    return from_dict(spec.config_cls, options, "method")


def method_options(config) -> dict:
    """``{"name": ..., option: value, ...}``: a method config as plain data (configs, checkpoints)."""
    return {"name": method_name(config), **dataclasses.asdict(config)}
