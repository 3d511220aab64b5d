"""Command-line parsing: the one-line rule (a usage error is one line on stderr, exit code 2), the argument
types, and options derived from a typed dataclass, so a default is said once, in the dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Literal


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are ``error: <command>: <message>`` alone (``--help`` still
    prints the usage); one with ``add_overrides`` takes its options and positionals in any order."""

    intermixed = False

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        if not self.intermixed:
            return super().parse_known_args(args, namespace)
        self.intermixed = False  # the intermixed parse calls parse_known_args twice: options, then the rest
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self.intermixed = True


def add_overrides(parser: OneLineParser, help: str) -> None:
    """The command's ``KEY=VALUE`` config overrides, which may come before, between or after its options
    (argparse alone takes no positional after an option once the positionals have started)."""
    parser.add_argument("overrides", nargs="*", type=str, metavar="KEY=VALUE", help=help)
    parser.intermixed = True


def positive_int(text: str) -> int:
    """An argument that must be an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def finite_float(text: str) -> float:
    """An argument that must be a finite number (``inf`` and ``nan`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argument that must be a finite number > 0."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argument that must be a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_ints(text: str) -> list[int]:
    """An argument of integers >= 1 separated by commas, e.g. 4,16,32: sorted, each once."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1, got '{text}'")
    return sorted(set(values))


def names(text: str) -> list[str]:
    """An argument of names separated by commas: in order, each once."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def name_values(text: str) -> list[tuple[str, str]]:
    """An argument of NAME=VALUE pairs separated by commas, e.g. full=runs/full,adapters-shared=runs/a."""
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() or not pair[1].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE pairs separated by commas, got '{text}'")
    return [(name.strip(), value.strip()) for name, value in pairs]


Dtype = Literal["float32", "bfloat16", "float16"]
DEVICE_HELP = ("where the model runs: cpu, cuda, cuda:N or mps", "cuda when available, else cpu")
DTYPE_HELP = ("the dtype the frozen host weights are loaded in (trained weights stay float32)",
              "the run's model.dtype")


def add_placement(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``: where and in what precision a run's checkpoint answers."""
    for name, (help, shown), choices in (("--device", DEVICE_HELP, None),
                                         ("--dtype", DTYPE_HELP, typing.get_args(Dtype))):
        parser.add_argument(name, default=None, choices=choices, help=f"{help} (default: {shown})")


def option(default, help: str, type=None, shown: str | None = None):
    """A dataclass field that is also a command-line option (see ``add_options``): its default, its help
    (without the default, which --help appends), an argument type where the annotation's is too loose
    (``positive_int``), and how --help shows the default where ``str`` does not say it well."""
    return dataclasses.field(default=default, metadata={"help": help, "type": type, "shown": shown})


def _shown(value) -> str:
    if value is None:
        return "none"
    return format(value, "g") if isinstance(value, float) else str(value)


def _argument(annotation) -> dict:
    """argparse's type or choices for a field's annotation: a Literal's choices, else the one type that
    the annotation names besides None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": typing.get_args(annotation)}
    if annotation not in (str, int, float):
        raise TypeError(f"no command-line option for a field of type {annotation}")
    return {"type": finite_float if annotation is float else annotation}  # no float option takes inf/nan


def add_options(parser: argparse.ArgumentParser, options_class) -> None:
    """One ``--name`` per field of ``options_class`` (underscores as dashes), in field order: its type or
    choices from the annotation (or ``option``'s type), its default from the field, its help with the
    default."""
    hints = typing.get_type_hints(options_class)
    for f in dataclasses.fields(options_class):
        meta = f.metadata
        kwargs = {"action": "store_true"} if hints[f.name] is bool else _argument(hints[f.name])
        if meta.get("type") is not None:
            kwargs["type"] = meta["type"]
        shown = meta.get("shown") or _shown(f.default)
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default,
                            help=f"{meta.get('help', '')} (default: {shown})", **kwargs)


def options_from(options_class, args: argparse.Namespace):
    """The ``options_class`` instance that ``add_options``' arguments parsed into."""
    return options_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_class)})
