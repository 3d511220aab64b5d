"""Typed option dataclasses read from plain mappings (YAML, JSON, ``key=value`` overrides).

Every key is checked on the way in: an unknown key, a value of the wrong type or a value outside a
``Literal`` field's choices is a ``UserError`` naming the key, never a silent default.
"""

from __future__ import annotations

import dataclasses
import types
import typing

from .errors import UserError


def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _shown(annotation) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def _yaml_float(value, annotation):
    """PyYAML reads ``1e-3`` (no dot) as a string; accept it where a float is expected."""
    accepts_float = annotation is float or float in typing.get_args(annotation)
    if accepts_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _yaml_no(value, annotation):
    """PyYAML reads ``no`` as false; where "no" is one of the choices (train.precision), it means "no"."""
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    return "no" if value is False and "no" in choices else value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and mistyped values."""
    if not isinstance(data, dict):
        raise UserError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise UserError(f"unknown config key '{name}'; known keys: {', '.join(fields)}")
        annotation = hints[key]
        value = _yaml_no(_yaml_float(value, annotation), annotation)
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = from_dict(annotation, value, name)
        elif not _type_ok(value, annotation):
            raise UserError(f"config key '{name}' expects {_shown(annotation)}, got {value!r}")
        else:
            kwargs[key] = float(value) if annotation is float else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserError(f"{where or cls.__name__}: {err}") from None


def changed_fields(options) -> list[str]:
    """Names of the fields of a dataclass instance that differ from the class defaults."""
    default = type(options)()
    return [
        f.name for f in dataclasses.fields(options) if getattr(options, f.name) != getattr(default, f.name)
    ]
