"""The `Task` description (text-to-text format, labels, metrics, data sources) and the task registry."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from hyperpelt.errors import UserError
from hyperpelt.textfiles import json_line


def round_stsb(score: float) -> float:
    """Round to the nearest multiple of 0.2 within 0..5; ties (e.g. 2.5, 3.7) go up, on the decimal value
    as written."""
    fifths = (Decimal(repr(float(score))) * 5).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return min(max(float(fifths) / 5, 0.0), 5.0)


KINDS = ("classification", "regression", "answer", "caption")
OPEN_KINDS = ("answer", "caption")


@dataclass(frozen=True)
class Task:
    """One text-to-text task: how examples become input/target text, and how predictions are scored.

    `split_rule` names the split protocol of `hyperpelt.tasks.splits` ("halve_dev", "halve_test",
    "carve_train", "given").

    `kind` says what a target is (left empty, it follows `label_names`):
      classification - a class index into `label_names`; regression - a float score (label_names None);
      answer  - a short answer from an open vocabulary (VQA): the label is the answer text; T5 generates
                it, an encoder backbone classifies over `answer_vocabulary` of the training split;
      caption - free text (image captions), always generated.
    `reference_key` names the example key the metrics score predictions against ("label", or e.g.
    "answers": the human answers of the VQA score, "references": the reference captions).
    `round_scores` (regression): targets are the score rounded to 0.2 within 0..5 (`round_stsb`), T5's
    convention for STS-B; otherwise a target is the score with 4 significant digits.
    """

    name: str
    input_fields: tuple[tuple[str, str], ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[Callable[..., dict[str, float]], ...]
    local: Any = None
    hub: Any = None
    prefix: str = ""
    split_rule: str = "halve_dev"
    kind: str = ""
    reference_key: str = "label"
    round_scores: bool = False

    def __post_init__(self):
        if not self.prefix:
            object.__setattr__(self, "prefix", self.name)
        if not self.kind:
            object.__setattr__(self, "kind", "regression" if self.label_names is None else "classification")
        if self.kind not in KINDS:
            raise ValueError(f"task '{self.name}': kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.label_names is None) != (self.kind != "classification"):
            raise ValueError(f"task '{self.name}': label_names go with kind 'classification' only")

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_open(self) -> bool:
        """Targets are free text (kinds "answer" and "caption"), not a fixed label set or a score."""
        return self.kind in OPEN_KINDS

    @property
    def num_labels(self) -> int:
        if self.is_open:
            raise ValueError(f"task '{self.name}' has an open vocabulary: size a classifier by its answer "
                             f"vocabulary (hyperpelt.tasks.vl.answer_vocabulary)")
        return 1 if self.label_names is None else len(self.label_names)

    def reference(self, example: dict):
        """What the metrics score a prediction of this example against."""
        return example[self.reference_key]

    def input_text(self, example: dict, with_prefix: bool = True) -> str:
        """E.g. "rte sentence1: A sentence2: B"; field values are stripped of surrounding whitespace."""
        parts = [f"{shown}: {str(example[key]).strip()}" for shown, key in self.input_fields]
        if with_prefix:
            parts.insert(0, self.prefix)
        return " ".join(parts)

    def target_text(self, example: dict) -> str:
        """The verbalized label; for regression the score (see ``round_scores``)."""
        label = example["label"]
        if self.is_open:
            return str(label).strip()
        if self.label_names is None:
            return f"{round_stsb(label):.1f}" if self.round_scores else f"{label:.4g}"
        return self.label_names[label]

    def parse_prediction(self, text: str) -> int | float | None:
        """Class index of a generated verbalizer, a finite float for regression, the text itself for open
        tasks; None when not a valid label."""
        text = text.strip()
        if self.is_open:
            return text
        if self.label_names is None:
            try:
                value = float(text)
            except ValueError:
                return None
            return value if math.isfinite(value) else None
        return self.label_names.index(text) if text in self.label_names else None

    @property
    def field_keys(self) -> list[str]:
        return [key for _, key in self.input_fields]

    def parse_input(self, raw: dict | str, where: str) -> dict:
        """One raw input as an example of this task (with a placeholder label): a dict with the field keys;
        or a string holding a JSON object with them, the text itself (one-field tasks), or the field values
        separated by a TAB (a literal backslash-t also works); a dict keeps "image" (a file) and "image_id".
        ``where`` names the input in errors."""
        keys = self.field_keys
        if isinstance(raw, str) and raw.strip().startswith("{"):
            raw = json_line(raw.strip(), where)
            if not isinstance(raw, dict):
                raise UserError(f"{where}: expected a JSON object with keys {', '.join(keys)}")
        if isinstance(raw, dict):
            missing = [k for k in keys if k not in raw]
            if missing:
                raise UserError(
                    f"{where}: missing key '{missing[0]}' (task '{self.name}' needs {', '.join(keys)})"
                )
            bad = [k for k in keys if raw[k] is None or isinstance(raw[k], (dict, list))]
            if bad:
                raise UserError(f"{where}: key '{bad[0]}' holds {json.dumps(raw[bad[0]])[:40]}, not a text")
            fields = {k: str(raw[k]) for k in keys}
        elif len(keys) == 1:
            fields = {keys[0]: raw}
        else:
            parts = raw.split("\t" if "\t" in raw else "\\t")
            if len(parts) != len(keys):
                raise UserError(
                    f"{where}: task '{self.name}' takes {len(keys)} fields ({', '.join(keys)}) "
                    f"separated by a TAB or as a JSON object; got {len(parts)}"
                )
            fields = dict(zip(keys, parts))
        images = {k: str(raw[k]) for k in ("image", "image_id") if isinstance(raw, dict) and k in raw}
        return {**fields, **images, "label": "" if self.is_open else 0.0 if self.is_regression else 0}

    def answer(self, prediction: int | float | str | None) -> str | float | None:
        """A prediction as users read it: the label name, the score rounded to 4 digits, the generated
        text, or None."""
        if prediction is None:
            return None
        if self.is_open:
            return str(prediction)
        if self.is_regression:
            return round(float(prediction), 4)
        return self.label_names[int(prediction)]

    def score(self, targets, predictions) -> tuple[dict[str, float], float]:
        """All metric values merged, and the task score: their mean."""
        merged: dict[str, float] = {}
        for metric in self.metrics:
            merged.update(metric(targets, predictions))
        return merged, sum(merged.values()) / len(merged)


_REGISTRY: dict[str, Task] = {}  # process-wide: the built-in tasks and those registered in Python


def register(task: Task) -> Task:
    """Add a task; a second task with the same name is a ValueError."""
    if task.name in _REGISTRY:
        raise ValueError(f"task '{task.name}' is already registered")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown task '{name}'; known tasks: {', '.join(task_names())}") from None


def task_names() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_REGISTRY)


class TaskRegistry:
    """The tasks one run knows by name: the process-wide ones (built in, or registered in Python) and, on
    top, the tasks its config or checkpoint declares in YAML (`declared.declare`), each with its canonical
    declaration and where it was declared. Runs loaded in one process keep their declarations apart."""

    def __init__(self):
        self._declared: dict[str, tuple[Task, dict, str]] = {}  # name -> (task, declaration, where)

    def get(self, name: str) -> Task:
        """The task called `name`: a declared one, else a process-wide one."""
        if name in self._declared:
            return self._declared[name][0]
        if name in _REGISTRY:
            return _REGISTRY[name]
        raise UserError(f"unknown task '{name}'; known tasks: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Names of all tasks known here, sorted."""
        return sorted({*_REGISTRY, *self._declared})

    def add(self, task: Task, declaration: dict, where: str) -> None:
        """Add a declared task (`declared.declare` checks it first)."""
        self._declared[task.name] = (task, declaration, where)

    def declaration(self, name: str) -> dict | None:
        """The canonical declaration of a declared task; None for a process-wide one."""
        known = self._declared.get(name)
        return None if known is None else known[1]

    def declared_in(self, name: str) -> str | None:
        """Where a declared task was first declared (a file, a config key); None for a process-wide one."""
        known = self._declared.get(name)
        return None if known is None else known[2]
