"""Reading a task's original splits: local files in their original formats, or the Hugging Face hub.

Each reader returns a tuple of example dicts: the task's fields, "label" (class index, or float for
regression) and "idx" (row position in the original split, or the hub's "idx" column).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hyperpelt.errors import UserError
from hyperpelt.textfiles import json_line, read_text

TREC_CODES = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


@dataclass(frozen=True)
class LocalSpec:
    """Where a task's files lie under data_dir and how to read them.

    format: "tsv" / "csv" (columns by index, negative counts from the end, or by header name), "jsonl"
    (by key) or "trec". files: (split role, candidate paths tried in order), roles being "train", "dev",
    "test"; relative paths are under data_dir. label_values: (raw value, class index) pairs; None means
    the label is a float score. header: first line is a header; every line must then have as many
    columns as it, else `num_columns` (None: as many as the first line).
    """

    format: str
    files: tuple[tuple[str, tuple[str, ...]], ...]
    fields: tuple[tuple[str, Any], ...] = ()
    label: Any = "label"
    label_values: tuple[tuple[Any, int], ...] | None = None
    header: bool = True
    num_columns: int | None = None


@dataclass(frozen=True)
class HubSpec:
    """A `datasets.load_dataset` call and the mapping of its columns to example keys.

    label_values: (hub value, class index) pairs for string labels; None keeps the hub's value.
    """

    path: tuple[str, ...]
    splits: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, str], ...]
    label: str = "label"
    label_values: tuple[tuple[Any, int], ...] | None = None


class SourceError(UserError):
    """A data file that does not fit its task's spec; ``field`` names the part at fault as a task file
    spells it: files.<role>, inputs.<key>, label (the column) or labels (the label set)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class HubError(UserError):
    """A task's hub dataset could not be loaded; ``reason`` says why, without the task's name."""

    def __init__(self, task_name: str, reason: str):
        super().__init__(f"task '{task_name}': {reason}")
        self.reason = reason


def default_data_dir() -> Path:
    """$HYPERPELT_DATA_DIR, else ../shared/data from the working directory, else next to the repository."""
    if os.environ.get("HYPERPELT_DATA_DIR"):
        return Path(os.environ["HYPERPELT_DATA_DIR"])
    near = Path.cwd().parent / "shared" / "data"
    if near.is_dir():
        return near
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def roles(spec: LocalSpec | HubSpec) -> tuple[str, ...]:
    """The split roles a source provides."""
    return tuple(role for role, _ in (spec.files if isinstance(spec, LocalSpec) else spec.splits))


def _role_value(pairs, role: str, task_name: str):
    for key, value in pairs:
        if key == role:
            return value
    raise UserError(
        f"unknown split '{role}' for task '{task_name}'; it has: {', '.join(k for k, _ in pairs)}"
    )


def local_candidates(
    task_name: str, spec: LocalSpec, role: str, data_dir: str | Path | None = None
) -> list[Path]:
    """The paths tried, in order, for one original split of a task under data_dir."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return [root / rel for rel in _role_value(spec.files, role, task_name)]


def missing_local(
    task_name: str, spec: LocalSpec, role: str, data_dir: str | Path | None = None
) -> str | None:
    """None when a file of the split exists, else the paths looked for, as one phrase."""
    candidates = local_candidates(task_name, spec, role, data_dir)
    if any(path.is_file() for path in candidates):
        return None
    return f"{candidates[0]}" + (
        f" (or {', '.join(map(str, candidates[1:]))})" if len(candidates) > 1 else ""
    )


def local_status(task_name: str, spec: LocalSpec | None, data_dir: str | Path | None = None) -> str:
    """Whether a task's local files are there: yes, no, partial (the roles present) or hub only."""
    if spec is None:
        return "no (hub only)"
    present = [role for role in roles(spec) if missing_local(task_name, spec, role, data_dir) is None]
    if len(present) == len(spec.files):
        return "yes"
    return f"partial ({', '.join(present)})" if present else "no"


def read_local(
    task_name: str, spec: LocalSpec, role: str, data_dir: str | Path | None = None
) -> tuple[dict, ...]:
    """Examples of one original split ("train", "dev", "test") from the files under data_dir."""
    for path in local_candidates(task_name, spec, role, data_dir):
        if path.is_file():
            if spec.format in _ROLE_READERS:
                return _ROLE_READERS[spec.format](str(path), spec, role)
            return _READERS[spec.format](str(path), spec)
    raise SourceError(
        f"{missing_local(task_name, spec, role, data_dir)}: file not found; "
        f"task '{task_name}' needs it for its "
        f"{role} split (pass data_dir or set HYPERPELT_DATA_DIR to point elsewhere)", f"files.{role}"
    )


def _label(raw: Any, spec_values, where: str) -> int | float:
    if spec_values is None:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise SourceError(f"{where} label {raw!r} is not a number", "label") from None
        if not math.isfinite(value):  # nan or inf: a loss that is not finite, steps later
            raise SourceError(f"{where} label {raw!r} is not a finite number", "label")
        return value
    for value, index in spec_values:
        if raw == value and type(raw) is type(value):
            return index
    allowed = ", ".join(repr(v) for v, _ in spec_values)
    raise SourceError(f"{where} label {raw!r} is not allowed (expected one of {allowed})", "labels")


def _spec_columns(spec: LocalSpec) -> list[tuple[str, Any, str]]:
    """(example key, column, spec field) of every value a row gives, the label last."""
    return [*((key, col, f"inputs.{key}") for key, col in spec.fields), ("label", spec.label, "label")]


def _column_positions(spec: LocalSpec, header: list[str] | None, width: int, path: str) -> dict[str, int]:
    """Each example key's column index; names are looked up in the header."""
    positions = {}
    for key, col, field in _spec_columns(spec):
        if isinstance(col, str):
            if header is None:
                raise SourceError(f"{path}: column '{col}' is named, but the file has no header", field)
            if col not in header:
                raise SourceError(f"{path}:1: no column '{col}' in the header "
                                  f"(columns: {', '.join(header)})", field)
            col = header.index(col)
        elif not -width <= col < width:
            raise SourceError(f"{path}: no column {col} (lines have {width} columns, counted from 0)", field)
        positions[key] = col
    return positions


@cache
def _read_delimited(path: str, spec: LocalSpec) -> tuple[dict, ...]:
    delimiter, quoting = ("\t", csv.QUOTE_NONE) if spec.format == "tsv" else (",", csv.QUOTE_MINIMAL)
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting,
                        strict=True)  # a quote left open is an error, not a field that runs on
    try:
        rows = list(reader)
    except csv.Error as err:  # e.g. a field over csv's limit: mostly a quote left open
        hint = " (a quote left open?)" if "field limit" in str(err) else ""
        raise UserError(f"{path}:{reader.line_num}: {err}{hint}") from None
    expected, first, header = spec.num_columns, 0, None
    if spec.header:
        if not rows:
            raise UserError(f"{path}:1: header line missing")
        header, first = rows[0], 1
        expected = len(header)
    elif expected is None:
        expected = len(next((row for row in rows if row), ()))
    positions = _column_positions(spec, header, expected, path)
    examples = []
    for lineno, row in enumerate(rows[first:], start=first + 1):
        if not row:
            continue
        if len(row) != expected:
            sep = "tab" if spec.format == "tsv" else "comma"
            raise UserError(f"{path}:{lineno}: expected {expected} {sep}-separated columns, found {len(row)}")
        example = {key: row[positions[key]] for key, _ in spec.fields}
        example["label"] = _label(row[positions["label"]], spec.label_values, f"{path}:{lineno}:")
        if spec.format == "csv":
            example = {k: v.replace("\\n", "\n").replace('\\"', '"') if isinstance(v, str) else v
                       for k, v in example.items()}
        example["idx"] = len(examples)
        examples.append(example)
    return tuple(examples)


@cache
def _read_jsonl(path: str, spec: LocalSpec) -> tuple[dict, ...]:
    examples = []
    for lineno, line in enumerate(io.StringIO(read_text(path)), start=1):
        if not line.strip():
            continue
        record = json_line(line, f"{path}:{lineno}")
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object")
        missing = [(col, field) for _, col, field in _spec_columns(spec) if col not in record]
        if missing:
            raise SourceError(f"{path}:{lineno}: missing key '{missing[0][0]}'", missing[0][1])
        for key, src in spec.fields:
            if not isinstance(record[src], str):
                raise SourceError(f"{path}:{lineno}: key '{src}' holds {json.dumps(record[src])[:40]}, not a "
                                  f"text", f"inputs.{key}")
        example = {key: record[src] for key, src in spec.fields}
        example["label"] = _label(record[spec.label], spec.label_values, f"{path}:{lineno}:")
        example["idx"] = len(examples)
        examples.append(example)
    return tuple(examples)


@cache
def _read_trec(path: str, spec: LocalSpec) -> tuple[dict, ...]:
    """TREC "COARSE:fine question" lines; bytes that are not UTF-8 become spaces (as on the hub)."""
    examples = []
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.decode("utf-8", errors="replace").replace("\ufffd", " ").strip()
            if not line:
                continue
            label, _, text = line.partition(" ")
            coarse = label.split(":")[0]
            if ":" not in label or coarse not in TREC_CODES or not text:
                raise UserError(
                    f"{path}:{lineno}: expected 'COARSE:fine question', COARSE one of {', '.join(TREC_CODES)}"
                )
            examples.append({"text": text, "label": TREC_CODES.index(coarse), "idx": len(examples)})
    return tuple(examples)


_READERS = {"tsv": _read_delimited, "csv": _read_delimited, "jsonl": _read_jsonl, "trec": _read_trec}
_ROLE_READERS: dict = {}


def register_reader(format: str, reader) -> None:
    """Add a file format: ``reader(path, spec, role)`` returns the examples of one split (the role is
    given because some layouts, as Karpathy's COCO file, hold every split in one file)."""
    if format in _READERS or format in _ROLE_READERS:
        raise ValueError(f"file format '{format}' is already registered")
    _ROLE_READERS[format] = reader


@cache
def read_hub(task_name: str, spec: HubSpec, role: str) -> tuple[dict, ...]:
    """Examples of one original split from the Hugging Face hub (needs internet or the datasets cache)."""
    import datasets

    split = _role_value(spec.splits, role, task_name)
    try:
        rows = datasets.load_dataset(*spec.path, split=split)
    except Exception as err:  # offline, unknown id, a broken cache: datasets raises many kinds
        raise HubError(task_name, f"the hub dataset {' '.join(spec.path)} ({split}) could not be loaded "
                                  f"({type(err).__name__}: {err})") from None
    examples = []
    for position, row in enumerate(rows):
        example = {key: row[col] for key, col in spec.fields}
        raw = row[spec.label]
        example["label"] = raw if spec.label_values is None else dict(spec.label_values)[raw]
        example["idx"] = int(row.get("idx", position))
        examples.append(example)
    return tuple(examples)
