"""The train / validation / test protocol of Hyperformer and HyperPELT, seeded and deterministic.

Each task names its rule (`Task.split_rule`):
  halve_dev   - small tasks: whole train; the original dev set shuffled and halved
                (validation gets floor(n/2)).
  halve_test  - IMDB, TREC, Yelp (no dev set): whole train; the original test set halved the same way.
  carve_train - large tasks: 1,000 train examples moved out of train into validation; test = original dev.
  given       - PAWS, SciTail: original train, dev and test.
The carved validation examples are drawn among inputs that occur once in train, so no input text is
in both train and validation (``carve_from="unique"``), or, as the papers say no more than "1,000
examples of the training set", among all of train (``carve_from="any"``).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hyperpelt.errors import UserError
from hyperpelt.tasks.registry import Task, get_task
from hyperpelt.tasks.sources import HubError, missing_local, read_hub, read_local

CARVED_VALIDATION = 1000


@dataclass
class Splits:
    """Lists of example dicts."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]

    def __getitem__(self, name: str) -> list[dict]:
        if name not in ("train", "validation", "test"):
            raise UserError(f"unknown split '{name}'; splits are train, validation, test")
        return getattr(self, name)


def _halve(held_out: list[dict], rng: random.Random) -> tuple[list[dict], list[dict]]:
    order = list(held_out)
    rng.shuffle(order)
    half = len(order) // 2
    return order[:half], order[half:]


def _halve_dev(task, parts, rng, **options):
    return Splits(parts["train"], *_halve(parts["dev"], rng))


def _halve_test(task, parts, rng, **options):
    return Splits(parts["train"], *_halve(parts["test"], rng))


def _carve_train(task, parts, rng, carve_from="unique"):
    train = parts["train"]
    if carve_from == "unique":
        texts = [task.input_text(ex, with_prefix=False) for ex in train]
        counts = Counter(texts)
        pool = [i for i, text in enumerate(texts) if counts[text] == 1]
    else:
        pool = list(range(len(train)))
    size = min(CARVED_VALIDATION, len(pool), len(train) // 2)
    chosen = rng.sample(pool, size)
    taken = set(chosen)
    rest = [ex for i, ex in enumerate(train) if i not in taken]
    return Splits(rest, [train[i] for i in chosen], parts["dev"])


def _given(task, parts, rng, **options):
    return Splits(parts["train"], parts["dev"], parts["test"])


RULES = {
    "halve_dev": (("train", "dev"), _halve_dev),
    "halve_test": (("train", "test"), _halve_test),
    "carve_train": (("train", "dev"), _carve_train),
    "given": (("train", "dev", "test"), _given),
}


def _auto_source(task: Task, roles: tuple[str, ...], data_dir) -> tuple[str, str | None]:
    """local when every split's file is there; else hub, with what was looked for locally."""
    if task.local is None:
        return "hub", None
    missing = [m for m in (missing_local(task.name, task.local, role, data_dir) for role in roles) if m]
    if not missing or task.hub is None:
        return "local", None
    return "hub", f"task '{task.name}': {missing[0]}"


def load_task_splits(task: Task | str, data_dir: str | Path | None = None, seed: int = 42,
                     source: str = "auto", max_train: int | None = None,
                     carve_from: str = "unique", sample: str = "random",
                     sample_seed: int | None = None) -> Splits:
    """Train / validation / test examples of a task (fresh dicts): from local files, the hub, or (auto)
    local files where they exist and the hub otherwise. ``carve_from`` ("unique" or "any"): which train
    examples the carve_train rule may move to validation. ``max_train`` examples are kept of train, drawn
    (``sample``) at random or balanced over the classes (``sample_balanced``), by ``sample_seed`` when
    given, else by the generator that carved the splits."""
    task = get_task(task) if isinstance(task, str) else task
    missing = None
    if carve_from not in ("unique", "any"):
        raise UserError(f"carve_from must be 'unique' or 'any', got '{carve_from}'")
    if sample not in SAMPLES:
        raise UserError(f"sample must be one of {', '.join(SAMPLES)}, got '{sample}'")
    if task.split_rule not in RULES:
        raise UserError(f"task '{task.name}' has unknown split rule '{task.split_rule}'")
    needed, rule = RULES[task.split_rule]
    if source == "auto":
        source, missing = _auto_source(task, needed, data_dir)
    if source == "local" and task.local is not None:
        parts = {role: read_local(task.name, task.local, role, data_dir) for role in needed}
    elif source == "hub" and task.hub is not None:
        try:
            parts = {role: read_hub(task.name, task.hub, role) for role in needed}
        except HubError as err:
            if missing is None:
                raise
            raise UserError(f"{missing} not found locally (pass data_dir or set HYPERPELT_DATA_DIR to point "
                            f"elsewhere), and {err.reason}") from None
    else:
        raise UserError(f"task '{task.name}' has no source '{source}' (use 'auto', 'local' or 'hub')")
    parts = {role: [dict(ex) for ex in examples] for role, examples in parts.items()}
    rng = random.Random(seed)
    splits = rule(task, parts, rng, carve_from=carve_from)
    if max_train is not None:
        if max_train < 1:
            raise UserError(f"max_train must be a positive number of examples, got {max_train}")
        if max_train < len(splits.train):
            draw = rng if sample_seed is None else random.Random(sample_seed)
            splits.train = SAMPLES[sample](splits.train, max_train, draw)
    return splits


def sample_rows(rows: list, k: int, rng: random.Random, keep_order: bool = True) -> list:
    """min(k, len(rows)) rows drawn by ``rng``; in their original order, or in the order drawn."""
    picked = rng.sample(range(len(rows)), min(k, len(rows)))
    return [rows[i] for i in (sorted(picked) if keep_order else picked)]


def sample_balanced(rows: list[dict], k: int, rng: random.Random, key: str = "label") -> list[dict]:
    """min(k, len(rows)) rows spread as evenly as the classes allow (by ``key``; rows in their original
    order): each class gets k // classes, a class with fewer rows gives its share to the others, and the
    remainder goes to classes drawn by ``rng``. Rows whose label is a float (a score) are drawn at random."""
    if any(isinstance(row[key], float) for row in rows):
        return sample_rows(rows, k, rng)
    by_class: dict = {}
    for index, row in enumerate(rows):
        by_class.setdefault(row[key], []).append(index)
    classes = sorted(by_class, key=str)
    quota, left = dict.fromkeys(classes, 0), min(k, len(rows))
    while left:
        open_classes = [c for c in classes if quota[c] < len(by_class[c])]
        share = left // len(open_classes)
        if share == 0:  # fewer examples left than classes with room: the remainder by lot
            for c in rng.sample(open_classes, left):
                quota[c] += 1
            break
        for c in open_classes:
            taken = min(share, len(by_class[c]) - quota[c])
            quota[c] += taken
            left -= taken
    picked = sorted(i for c in classes for i in rng.sample(by_class[c], quota[c]))
    return [rows[i] for i in picked]


SAMPLES = {"random": sample_rows, "balanced": sample_balanced}
