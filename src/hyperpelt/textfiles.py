"""The text files users give (data, configs, task files, inputs to predict) are UTF-8, a BOM allowed;
anything else is a one-line error that names the file and line."""

from __future__ import annotations

import codecs
import io
import json
from pathlib import Path
from typing import Any

from .errors import UserError


def read_text(path: str | Path) -> str:
    """A file's text, decoded as UTF-8 (a leading byte-order mark dropped)."""
    data = Path(path).read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{path}: UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save it as UTF-8 "
                        f"(is it a binary file?)") from None


def read_json(path: str | Path) -> Any:
    """A JSON file's value; a file that does not parse is a UserError naming it."""
    try:
        return json.loads(read_text(path))
    except (ValueError, RecursionError) as err:  # (json.JSONDecodeError is a ValueError)
        raise UserError(f"{path}: not valid JSON ({err})") from None


def json_line(line: str, where: str):
    """One line's JSON value; a line that does not parse (or nests or counts beyond Python's limits) is a
    UserError naming ``where``."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:
        raise UserError(f"{where}: not valid JSON ({str(err).split(';')[0]})") from None


def read_input_lines(file: str | Path) -> list[tuple[str, str]]:
    """(where, text) of every non-empty line of a UTF-8 file of raw inputs, ``where`` as path:line."""
    path = Path(file)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    lines = enumerate(io.StringIO(read_text(path)), start=1)
    return [(f"{path}:{n}", line.rstrip("\r\n")) for n, line in lines if line.strip()]


def read_inputs(texts: list[str] | None, file: str | Path | None) -> list[tuple[str, str]]:
    """(where, text) of raw inputs given as texts (``--text N``) or as the lines of a file."""
    given = [(f"--text {i + 1}", text) for i, text in enumerate(texts)] if texts else read_input_lines(file)
    if not given:
        raise UserError("no inputs to predict")
    return given
