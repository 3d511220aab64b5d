"""One task declared in YAML checked field by field and turned into a `Task`: no Python needed.

`parse` reads one declaration (a mapping; docs/extending.md gives the fields) into a `Task` (a `LocalSpec`
for files, a `HubSpec` for a hub dataset) and its canonical form: every choice spelled out, absolute
paths, plain data that parses back to the same task. An error is one line naming where the declaration
is (its file), the task and the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hyperpelt.errors import UserError
from hyperpelt.tasks.metrics import BY_NAME
from hyperpelt.tasks.registry import Task
from hyperpelt.tasks.sources import HubSpec, LocalSpec
from hyperpelt.tasks.splits import RULES

KEYS = ("name", "prefix", "inputs", "label", "labels", "label_values", "regression", "metrics", "format",
        "header", "files", "hub", "split_rule")
FORMATS = ("tsv", "csv", "jsonl")
ROLES = ("train", "dev", "test")
RESERVED_KEYS = ("label", "idx", "image", "image_id")  # example keys the library itself sets
DEFAULT_METRICS = {"classification": ["accuracy"], "regression": ["pearson", "spearman"]}
INFERRED_RULES = {("train", "dev", "test"): "given", ("train", "dev"): "halve_dev",
                  ("train", "test"): "halve_test"}
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

class _Fields:
    """One declaration's fields; ``fail`` raises the one-line error naming where, the task and the field."""

    def __init__(self, raw: dict, where: str):
        self.raw, self.where = raw, where

    def fail(self, field: str, message: str):
        raise UserError(f"{self.where}: {field}: {message}")

    def get(self, key: str, default=None):
        return self.raw.get(key, default)

    def scalar(self, value, field: str):
        """A label name or value: a string or a number (a YAML boolean is refused: quote it)."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            hint = " (quote yes/no/true/false/on/off in YAML)" if isinstance(value, bool) else ""
            self.fail(field, f"{value!r} is not a string or a number{hint}")
        return value

    def column(self, value, field: str, by_index: bool, by_name: bool):
        """A column: a name, or an index from 0 (tsv/csv files only); names need a header line."""
        if isinstance(value, int) and not isinstance(value, bool):
            if not by_index:
                self.fail(field, f"column {value} is an index; a jsonl file or a hub dataset names its keys")
            return value
        if not isinstance(value, str) or not value:
            self.fail(field, f"expected a column name or an index (from 0), got {value!r}")
        if not by_name:
            self.fail(field, f"column '{value}' is named, but header is false: give its index (from 0)")
        return value


def _inputs(f: _Fields) -> dict:
    raw = f.get("inputs")
    if isinstance(raw, list) and all(isinstance(col, str) for col in raw):
        raw = {col: col for col in raw}
    if not isinstance(raw, dict) or not raw:
        f.fail("inputs", "expected a mapping {field: column} or a list of column names")
    for key in raw:
        if not isinstance(key, str) or not NAME.fullmatch(key):
            f.fail("inputs", f"field name {key!r} must start with a letter and hold letters, digits, _ or -")
        if key in RESERVED_KEYS:
            f.fail(f"inputs.{key}", f"'{key}' is a key the library sets; call the field otherwise")
    return raw


def _labels(f: _Fields) -> tuple[list[str] | None, list | None]:
    """(label names, their values in the data), or (None, None) for a score (regression)."""
    labels, values, regression = f.get("labels"), f.get("label_values"), f.get("regression", False)
    if not isinstance(regression, bool):
        f.fail("regression", f"expected true or false, got {regression!r}")
    if regression:
        if labels is not None or values is not None:
            f.fail("regression", "a task has label names or a score, not both; drop labels")
        return None, None
    if labels is None:
        f.fail("labels", "missing: give the label names (labels: [negative, positive]) or regression: true")
    if isinstance(labels, dict):
        if values is not None:
            f.fail("label_values", "give labels as a mapping {value: name} or label_values, not both")
        values, labels = list(labels), list(labels.values())
    if not isinstance(labels, list) or len(labels) < 2:
        f.fail("labels", "expected a list of two or more label names, or a mapping {value in the data: name}")
    names = [str(f.scalar(v, "labels")) for v in labels]
    if any(not name.strip() or name != name.strip() for name in names):
        f.fail("labels", "label names must be non-empty, without spaces around them")
    values = list(labels) if values is None else values
    if not isinstance(values, list) or len(values) != len(names):
        f.fail("label_values", f"expected a list of {len(names)} values, one per label, in the labels' order")
    values = [f.scalar(v, "label_values") for v in values]
    values_field = "label_values" if "label_values" in f.raw else "labels"
    for field, items in (("labels", names), (values_field, values)):
        twice = [item for i, item in enumerate(items) if item in items[:i]]
        if twice:
            f.fail(field, f"{twice[0]!r} is given twice")
    return names, values


def _metrics(f: _Fields, kind: str, num_labels: int) -> list[str]:
    raw = f.get("metrics", DEFAULT_METRICS[kind])
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names:
        f.fail("metrics", f"expected a list of metric names, from: {', '.join(BY_NAME)}")
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in BY_NAME:
            f.fail("metrics", f"unknown metric {name!r}; known: {', '.join(BY_NAME)}")
        if BY_NAME[name][1] != kind:
            f.fail("metrics", f"'{name}' scores {BY_NAME[name][1]} tasks, and this task is {kind}")
        if name == "f1" and num_labels != 2:
            f.fail("metrics", f"f1 scores the second of two labels; this task has {num_labels}")
        if name in names[:i]:
            f.fail("metrics", f"'{name}' is given twice")
    return names


def _known_roles(f: _Fields, field: str, given: dict) -> None:
    unknown = [role for role in given if role not in ROLES]
    if unknown:
        f.fail(field, f"unknown split {unknown[0]!r}; splits are {', '.join(ROLES)}")


def _files(f: _Fields, base: Path | None) -> dict[str, list[str]] | None:
    raw = f.get("files")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        f.fail("files", "expected a mapping {train: path, dev: path, test: path}")
    _known_roles(f, "files", raw)
    out = {}
    for role in sorted(raw, key=ROLES.index):
        paths = [raw[role]] if isinstance(raw[role], str) else raw[role]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            f.fail(f"files.{role}", "expected a path, or a list of paths tried in order")
        out[role] = [os.path.abspath(os.path.join(base or "", os.path.expanduser(p))) for p in paths]
    return out


def _hub(f: _Fields) -> dict | None:
    raw = f.get("hub")
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"path", "splits"}:
        f.fail("hub", "expected a mapping with path (load_dataset's arguments) and splits {train: name, ...}")
    path = [raw["path"]] if isinstance(raw["path"], str) else raw["path"]
    if not isinstance(path, list) or not path or not all(isinstance(p, str) and p for p in path):
        f.fail("hub.path", "expected a dataset id, or a list: the id and its config name")
    splits = raw["splits"]
    if not isinstance(splits, dict) or not splits or not all(isinstance(s, str) for s in splits.values()):
        f.fail("hub.splits", "expected a mapping {train: hub split name, dev: ..., test: ...}")
    _known_roles(f, "hub.splits", splits)
    return {"path": path, "splits": {role: splits[role] for role in sorted(splits, key=ROLES.index)}}


def _split_rule(f: _Fields, files: dict | None, hub: dict | None) -> str:
    rule = f.get("split_rule")
    roles = tuple(files or hub["splits"])
    if rule is None:
        if roles not in INFERRED_RULES:
            f.fail("split_rule", f"missing, and the splits given ({', '.join(roles)}) fit no default "
                                 f"rule; give train and dev, or train and test, or a split_rule")
        rule = INFERRED_RULES[roles]
    if rule not in RULES:
        f.fail("split_rule", f"unknown split rule {rule!r}; known: {', '.join(RULES)}")
    needed = RULES[rule][0]
    for field, given in (("files", files), ("hub.splits", hub and hub["splits"])):
        if given is None:
            continue
        missing, unread = [r for r in needed if r not in given], [r for r in given if r not in needed]
        if missing:
            f.fail(field, f"split rule '{rule}' reads {', '.join(needed)}; {missing[0]} is missing")
        if unread:
            f.fail(f"{field}.{unread[0]}", f"split rule '{rule}' does not read a {unread[0]} split "
                                           f"(it reads {', '.join(needed)})")
    return rule


def parse(raw, where: str, base: str | Path | None = None, position: str = "") -> tuple[Task, dict]:
    """One declaration as a `Task` and its canonical form; relative file paths are under ``base`` (default
    the working folder). ``where`` starts every error (e.g. the file), with ``position`` (e.g. ": tasks[2]")
    until the task's name is known."""
    f = _Fields(raw, where + position)
    if not isinstance(raw, dict):
        f.fail("task", f"expected a mapping of fields, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        f.fail("name", "missing" if name is None else
               f"{name!r}: a task name starts with a letter and holds letters, digits, _ or -")
    f.where = f"{where}: task '{name}'"
    unknown = [key for key in raw if key not in KEYS]
    if unknown:
        f.fail(str(unknown[0]), f"unknown field; known fields: {', '.join(KEYS)}")
    prefix = f.get("prefix", name)
    if not isinstance(prefix, str) or not prefix.strip():
        f.fail("prefix", f"expected the text that starts the task's inputs, got {prefix!r}")
    files, hub = _files(f, Path(base) if base is not None else None), _hub(f)
    if files is None and hub is None:
        f.fail("files", "missing: give the files per split ({train: PATH, dev: PATH}) and/or a hub dataset")
    fmt = f.get("format")
    if files is None and ("format" in raw or "header" in raw):
        f.fail("format" if "format" in raw else "header", "applies to files only, and this task has none")
    if files is not None and fmt is None:
        fmt = Path(next(iter(files.values()))[0]).suffix.lower().lstrip(".")
        if fmt not in FORMATS:
            f.fail("format", f"missing, and the file names do not say it; give one of {', '.join(FORMATS)}")
    if files is not None and fmt not in FORMATS:
        f.fail("format", f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    header = f.get("header", True)
    if fmt == "jsonl" and "header" in raw:
        f.fail("header", "only tsv and csv files have a header line")
    if not isinstance(header, bool):
        f.fail("header", f"expected true or false, got {header!r}")
    delimited = fmt in ("tsv", "csv")
    by_index, by_name = delimited and hub is None, header or not delimited
    inputs = {key: f.column(col, f"inputs.{key}", by_index, by_name) for key, col in _inputs(f).items()}
    label = f.column(f.get("label", "label"), "label", by_index, by_name)
    names, values = _labels(f)
    kind = "regression" if names is None else "classification"
    metrics = _metrics(f, kind, len(names or ()))
    rule = _split_rule(f, files, hub)

    decl = {"name": name, "prefix": prefix, "inputs": inputs, "label": label}
    decl.update({"regression": True} if names is None else {"labels": names})
    if names is not None and values != names:
        decl["label_values"] = values
    decl["metrics"] = metrics
    if files is not None:
        decl.update({"format": fmt, "header": header} if fmt != "jsonl" else {"format": fmt})
        decl["files"] = files
    if hub is not None:
        decl["hub"] = hub
    decl["split_rule"] = rule
    return _task(decl), decl


def _task(d: dict) -> Task:
    """The `Task` of a canonical declaration."""
    fields = tuple(d["inputs"].items())
    names, values = d.get("labels"), d.get("label_values", d.get("labels"))
    local = hub = None
    if "files" in d:
        text = d["format"] != "jsonl"  # a csv or tsv cell is a string
        local_values = None if names is None else tuple(
            (str(v) if text else v, i) for i, v in enumerate(values))
        local = LocalSpec(d["format"], tuple((role, tuple(paths)) for role, paths in d["files"].items()),
                          fields, d["label"], local_values, d.get("header", True))
    if "hub" in d:
        hub_values = None
        if names is not None:  # an int hub label (a ClassLabel) is the class index, unless values are ints
            hub_values = [(v, i) for i, v in enumerate(values)]
            if not any(isinstance(v, int) for v in values):
                hub_values += [(i, i) for i in range(len(values))]
        hub = HubSpec(tuple(d["hub"]["path"]), tuple(d["hub"]["splits"].items()), fields, d["label"],
                      None if hub_values is None else tuple(hub_values))
    return Task(d["name"], tuple((key, key) for key in d["inputs"]), None if names is None else tuple(names),
                tuple(BY_NAME[m][0] for m in d["metrics"]), local, hub, d["prefix"], d["split_rule"])
