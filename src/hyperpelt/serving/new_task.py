"""A new task as ``POST /v1/tasks`` (and ``hyperpelt tasks add``) declares it: a task file's declaration
(checked by ``tasks.declaration.parse``, as a task file is) with its k labelled examples and a seed.

Body: ``{"name", "inputs": [field, ...], "labels": [name, ...] | "regression": true, "metrics", "prefix",
"examples": [{field: text, ..., "label": name | number}, ...], "seed"}``. A refusal is a ``RequestError``
naming the field: 400 for a body that is no object, 413 past ``MAX_EXAMPLES`` examples, 422 otherwise
(``examples[i].field`` for an example).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from ..errors import UserError
from ..tasks.declaration import parse
from ..tasks.registry import Task
from .engine import MAX_INPUT_CHARS, RequestError, shown

DECLARATION_KEYS = ("name", "prefix", "inputs", "labels", "regression", "metrics")
BODY_KEYS = (*DECLARATION_KEYS, "examples", "seed")
WHERE = "POST /v1/tasks"
MAX_EXAMPLES = 1000
MIN_EXAMPLES = 4  # a few to train on, one held out at least


@dataclass
class NewTask:
    """A checked new task: its declaration (no files), the ``Task`` it declares, its examples and seed."""

    declaration: dict
    task: Task
    examples: list[dict]
    seed: int

    @property
    def examples_hash(self) -> str:
        """The SHA-256 of the examples (as canonical JSON): which examples the task was made from."""
        return hashlib.sha256(json.dumps(self.examples, sort_keys=True).encode()).hexdigest()


def _refuse(field: str, message: str, status: int = 422, error_type: str = "invalid_field"):
    raise RequestError(status, error_type, f"{field}: {message}")


def read_new_task(body, max_input_chars: int = MAX_INPUT_CHARS) -> NewTask:
    """The new task a request body declares, checked; ``RequestError`` naming the field at fault."""
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_type", "the body must be a JSON object: a task declaration with "
                           '"examples"')
    unknown = [key for key in body if key not in BODY_KEYS]
    if unknown:
        _refuse(shown(str(unknown[0])), f"unknown field; the fields are: {', '.join(BODY_KEYS)}")
    declaration = {key: body[key] for key in DECLARATION_KEYS if key in body}
    inputs = declaration.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        _refuse("inputs", "expected a list of field names, e.g. [\"sentence\"]")
    if len(set(inputs)) != len(inputs):
        _refuse("inputs", "a field is named twice")
    files = {"train": "train.jsonl", "dev": "dev.jsonl", "test": "test.jsonl"}
    try:  # checked as a task file's declaration is, with the files the examples will be written to
        task, _ = parse({**declaration, "format": "jsonl", "files": files}, WHERE)
    except UserError as err:
        raise RequestError(422, "invalid_declaration", str(err)) from None
    seed = body.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        _refuse("seed", f"expected an integer from 0 to 2**32 - 1, got {shown(str(seed))}")
    return NewTask(declaration, task, _examples(body.get("examples"), task, max_input_chars), seed)


def _examples(examples, task: Task, max_input_chars: int) -> list[dict]:
    if not isinstance(examples, list):
        _refuse("examples", "expected a list of labelled examples, e.g. [{\"sentence\": \"...\", \"label\": "
                "\"positive\"}]")
    if len(examples) > MAX_EXAMPLES:
        _refuse("examples", f"{len(examples)} examples; at most {MAX_EXAMPLES}", 413, "too_many_examples")
    if len(examples) < MIN_EXAMPLES:
        _refuse("examples", f"{len(examples)} examples; a task is learned from at least {MIN_EXAMPLES}")
    fields = [key for _, key in task.input_fields]
    for i, example in enumerate(examples):
        where = f"examples[{i}]"
        if not isinstance(example, dict):
            _refuse(where, "expected an object with the task's fields and \"label\"")
        unknown = [key for key in example if key not in (*fields, "label")]
        if unknown:
            _refuse(f"{where}.{shown(str(unknown[0]))}", f"not a field of the task ({', '.join(fields)}) nor "
                    "\"label\"")
        for key in (*fields, "label"):
            if key not in example:
                _refuse(f"{where}.{key}", "missing")
        for key in fields:
            _check_text(f"{where}.{key}", example[key], max_input_chars)
        _check_label(f"{where}.label", example["label"], task)
    return examples


def _check_text(field: str, text, max_input_chars: int) -> None:
    if not isinstance(text, str):
        _refuse(field, "expected a string")
    if not text.strip():
        _refuse(field, "is empty")
    if len(text) > max_input_chars:
        _refuse(field, f"has {len(text):,} characters; at most {max_input_chars:,}", 413, "field_too_long")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        _refuse(field, f"is no Unicode text: it holds a lone surrogate at character {err.start}")


def _check_label(field: str, label, task: Task) -> None:
    if task.label_names is None:
        if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
            _refuse(field, "expected a finite number (the task is a regression)")
    elif not isinstance(label, str) or label not in task.label_names:
        _refuse(field, f"{shown(str(label))} is not one of the labels: {', '.join(task.label_names)}")
