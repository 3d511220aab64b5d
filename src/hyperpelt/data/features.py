"""Tokenized splits, built once per run, and the batch streams drawn from them."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..tasks import Splits, load_task_splits
from ..tasks.registry import round_stsb
from ..tasks.splits import sample_rows
from .mixture import TaskSampler


@dataclass
class TaskData:
    """One task's examples and their features (the backbone's tokenization), per split."""

    task: object
    task_id: int
    examples: dict[str, list[dict]]
    features: dict[str, list[dict]]


def _subset(examples: list[dict], limit: int | None, seed: int) -> list[dict]:
    return examples if limit is None else sample_rows(examples, limit, random.Random(seed))


def read_splits(data_config, seed: int) -> list[Splits]:
    """Every task's train / validation / test examples (the readers cache what they read)."""
    return [
        load_task_splits(name, data_config.data_dir, seed=seed, source=data_config.source,
                         max_train=data_config.max_train_examples, carve_from=data_config.carve_from)
        for name in data_config.tasks
    ]


def load_task_data(model, data_config, seed: int) -> list[TaskData]:
    """Load, split and tokenize every task of the run once."""
    out = []
    for task_id, (task, splits) in enumerate(zip(model.tasks, read_splits(data_config, seed))):
        examples = {
            "train": splits.train,
            "validation": _subset(splits.validation, data_config.max_eval_examples, seed),
            "test": _subset(splits.test, data_config.max_eval_examples, seed),
        }
        features = {name: model.encode(task, rows) for name, rows in examples.items()}
        if task.is_regression and data_config.stsb_gold == "rounded":  # scored against rounded gold
            for name in ("validation", "test"):
                features[name] = [{**f, "label": round_stsb(f["label"])} for f in features[name]]
        out.append(TaskData(task, task_id, examples, features))
    return out


class _Shuffled:
    """Endless reshuffled passes over one task's training features."""

    def __init__(self, features: list[dict], rng: random.Random):
        self.features, self.rng, self.order = features, rng, []

    def take(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            if not self.order:
                self.order = list(range(len(self.features)))
                self.rng.shuffle(self.order)
            out.append(self.features[self.order.pop()])
        return out


class BatchStream:
    """Training batches: the task drawn by temperature sampling per batch, or per example when mixing.

    With several processes, every process draws the same global batch of ``batch_size * num_processes``
    examples (same seed, same tasks) and keeps its own slice of it, so processes never repeat each other.
    """

    def __init__(self, data: list[TaskData], model, batch_size: int, temperature: float, mixed: bool,
                 seed: int, process_index: int = 0, num_processes: int = 1):
        self.data, self.model, self.batch_size, self.mixed = data, model, batch_size, mixed
        self.process_index, self.num_processes = process_index, num_processes
        sizes = {d.task.name: len(d.features["train"]) for d in data}
        self.sampler = TaskSampler(sizes, temperature, seed)
        self.by_name = {d.task.name: d for d in data}
        rng = random.Random(seed)
        self.streams = {
            d.task.name: _Shuffled(d.features["train"], random.Random(rng.random())) for d in data
        }

    def next(self) -> dict:
        size = self.batch_size * self.num_processes
        names = self.sampler.next_tasks(size) if self.mixed else [self.sampler.next_task()] * size
        features, task_ids = [], []
        for name in dict.fromkeys(names):
            count = names.count(name)
            features += self.streams[name].take(count)
            task_ids += [self.by_name[name].task_id] * count
        mine = slice(self.process_index, None, self.num_processes)
        return make_batch(self.model, features[mine], task_ids[mine])


def make_batch(model, features: list[dict], task_ids: list[int]) -> dict:
    """The backbone's collated inputs of ``features``, with each example's task id."""
    batch = model.backbone.collate(features, model.tokenizer)
    batch["task_ids"] = torch.tensor(task_ids, dtype=torch.long)
    return batch

