"""YAML files the user gives (configs, task files, comparison files), read with ``yaml.safe_load``: a file
that does not parse, or nests deeper than the parser can follow, is a one-line error naming file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .textfiles import read_text

DEEPEST = 100  # nesting levels reported as too deep when the parser runs out of stack
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def parse_yaml(path: str | Path) -> Any:
    """A YAML file's value; a syntax error names the file and its line, as does nesting too deep to build
    (Python's recursion limit, some thousand levels: the line where it passes `DEEPEST` levels)."""
    text = read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML "
                        f"({getattr(err, 'problem', None) or err})") from None
    except RecursionError:
        raise UserError(f"{path}:{_too_deep_line(text)}: invalid YAML (nested more than {DEEPEST} levels "
                        f"deep)") from None


def read_yaml(path: Path) -> dict:
    """A YAML mapping (a config or comparison file); a syntax error names the file and line."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    data = parse_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return data


def _too_deep_line(text: str) -> int:
    """The line where ``text``'s nesting first passes `DEEPEST` levels (the parser's events keep no stack
    of calls, unlike the composer); 1 when it never does."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        depth += isinstance(event, _OPEN) - isinstance(event, _CLOSE)
        if depth > DEEPEST:
            return event.start_mark.line + 1
    return 1
