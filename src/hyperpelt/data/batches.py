"""Tokenized splits, built once per run, the collator that batches them, and the batch streams drawn from
them."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import torch

from ..errors import UserError
from ..tasks import Splits, load_task_splits
from ..tasks.declared import in_declaration
from ..tasks.registry import round_stsb
from ..tasks.sources import SourceError
from ..tasks.splits import sample_rows
from ..tasks.vl import answer_vocabulary
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


def read_splits(data_config) -> list[Splits]:
    """Every task's train / validation / test examples (the readers cache what they read), carved with
    ``data_config.split_seed``: the training seed never moves them. A data file that does not fit a declared
    task is an error naming the task's declaration and field. The tasks are those of the run's registry
    (``data_config.registry``)."""
    out, registry = [], data_config.registry
    for name in data_config.tasks:
        task = registry.get(name)
        try:
            splits = load_task_splits(
                task, data_config.data_dir, seed=data_config.split_seed, source=data_config.source,
                max_train=data_config.max_train_examples, carve_from=data_config.carve_from,
                sample=data_config.train_sample, sample_seed=data_config.train_sample_seed)
        except SourceError as err:
            raise in_declaration(name, err, registry) from None
        empty = [split for split in ("train", "validation", "test") if not splits[split]]
        if empty:  # (a model cannot train or be scored on none)
            message = (f"no {' or '.join(empty)} examples (split rule {task.split_rule}); see "
                       f"hyperpelt tasks --check")
            raise (in_declaration(name, SourceError(message, "files"), registry) if registry.declared_in(name)
                   else UserError(f"task '{name}': {message}"))
        out.append(splits)
    return out


def answer_vocabularies(tasks: list, splits: list[Splits], min_count: int) -> dict[str, list[str]]:
    """The answer vocabulary ({task: answers}) of each open-answer task, from its training split."""
    out = {}
    for task, task_splits in zip(tasks, splits):
        if task.kind == "answer":
            out[task.name] = list(answer_vocabulary(task_splits.train, min_count))
            if not out[task.name]:
                raise UserError(f"task '{task.name}': no training answer is seen {min_count} times "
                                f"(heads.answer_min_count); its answer head would have no answers")
    return out


def load_task_data(tasks: list, encode: Callable[[object, list[dict]], list[dict]], data_config
                   ) -> list[TaskData]:
    """Load, split and tokenize (``encode(task, rows)``: features) every task of ``data_config.tasks`` once
    (splits and subsets by ``split_seed``); each keeps its id, its index in ``tasks`` (the tasks a model
    serves, which may be more: few-shot transfer)."""
    out, seed = [], data_config.split_seed
    names = [task.name for task in tasks]
    for name, splits in zip(data_config.tasks, read_splits(data_config)):
        if name not in names:
            raise UserError(f"task '{name}' is not one of this model's tasks: {', '.join(names)}")
        task_id = names.index(name)
        task = tasks[task_id]
        examples = {
            "train": splits.train,
            "validation": _subset(splits.validation, data_config.max_eval_examples, seed),
            "test": _subset(splits.test, data_config.max_eval_examples, seed),
        }
        features = {name: encode(task, rows) for name, rows in examples.items()}
        if task.round_scores and data_config.stsb_gold == "rounded":  # scored against rounded gold
            for name in ("validation", "test"):
                features[name] = [{**f, "label": round_stsb(f["label"])} for f in features[name]]
        out.append(TaskData(task, task_id, examples, features))
    return out


class _Shuffled:
    """Endless reshuffled passes over one task's training features."""

    def __init__(self, features: list[dict], rng: random.Random):
        self.features, self.rng, self.order = features, rng, []
        self.pass_start = rng.getstate()  # before the current pass's shuffle: its order follows from it

    def take(self, n: int) -> list[dict]:
        out = []
        while len(out) < n:
            if not self.order:
                self.pass_start = self.rng.getstate()
                self.order = list(range(len(self.features)))
                self.rng.shuffle(self.order)
            out.append(self.features[self.order.pop()])
        return out

    def state(self) -> dict:
        """The position, as JSON data: the current pass's seed state and the examples left in it."""
        rng = self.pass_start if self.order else self.rng.getstate()
        return {"rng": [rng[0], list(rng[1]), rng[2]], "left": len(self.order)}

    def restore(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.pass_start, self.order = self.rng.getstate(), []
        if state["left"]:
            self.order = list(range(len(self.features)))
            self.rng.shuffle(self.order)
            del self.order[state["left"]:]  # the pass's examples are popped from the end


class BatchStream:
    """Training batches: the task drawn by temperature sampling per batch, or per example when mixing.

    ``batch_size`` is the global batch of one optimizer step. Every process draws the same global batch
    (same seed, same tasks), keeps its own share of it (every ``num_processes``-th example, so processes
    never repeat each other) and splits that into micro-batches of ``micro_batch_size`` (default: the
    whole share). ``next`` returns the micro-batches with each one's weight: the factor that makes the
    weighted losses' gradients, summed over micro-batches and averaged over processes (as distributed
    data parallel does), the mean over the global batch. The weight is the micro-batch's share of the
    loss's units (target tokens for text-to-text labels, else examples) times ``num_processes``.
    """

    def __init__(self, data: list[TaskData], collate: Collator, batch_size: int, temperature: float,
                 mixed: bool, seed: int, process_index: int = 0, num_processes: int = 1,
                 micro_batch_size: int | None = None):
        self.data, self.collate, self.batch_size, self.mixed = data, collate, batch_size, mixed
        self.process_index, self.num_processes = process_index, num_processes
        self.micro_batch_size = micro_batch_size or batch_size // num_processes
        sizes = {d.task.name: len(d.features["train"]) for d in data}
        self.sampler = TaskSampler(sizes, temperature, seed)
        self.by_name = {d.task.name: d for d in data}
        rng = random.Random(seed)
        self.streams = {
            d.task.name: _Shuffled(d.features["train"], random.Random(rng.random())) for d in data
        }

    def next(self) -> list[tuple[dict, float]]:
        """This process's micro-batches of the next global batch, each with its loss weight."""
        size = self.batch_size
        names = self.sampler.next_tasks(size) if self.mixed else [self.sampler.next_task()] * size
        features, task_ids = [], []
        for name in dict.fromkeys(names):
            count = names.count(name)
            features += self.streams[name].take(count)
            task_ids += [self.by_name[name].task_id] * count
        n, m = self.num_processes, self.micro_batch_size
        if n == 1 and m == size:  # one process, one batch: the loss as it is
            return [(self.collate(features, task_ids), 1.0)]
        shares = [(features[p::n], task_ids[p::n]) for p in range(n)]
        micro = [[self.collate(f[i:i + m], t[i:i + m]) for i in range(0, len(f), m)]
                 for f, t in shares]
        units = [[loss_units(batch) for batch in batches] for batches in micro]
        total = sum(map(sum, units))
        mine = self.process_index
        return [(batch, n * u / total) for batch, u in zip(micro[mine], units[mine])]

    def state(self) -> dict:
        """Where the stream stands (task sampler and every task's pass), as JSON data."""
        return {"sampler": self.sampler.state(), "tasks": {n: s.state() for n, s in self.streams.items()}}

    def restore(self, state: dict) -> None:
        """Continue exactly where `state` was taken (from a stream of the same data and seed)."""
        self.sampler.restore(state["sampler"])
        for name, stream in self.streams.items():
            stream.restore(state["tasks"][name])


def loss_units(batch: dict) -> int:
    """What the batch's mean loss averages over: target tokens (labels padded with -100), else examples."""
    labels = batch.get("labels")
    if labels is not None and labels.dim() > 1:
        return int((labels != -100).sum())
    return len(batch["task_ids"])


@dataclass(frozen=True)
class Collator:
    """What turns features into a batch: the ``backbone``'s collate with its ``tokenizer``, each example's
    task id, and, with an ``image_lookup`` (a mapping image id -> [grid, dim], e.g. a feature cache),
    ``image_features`` [B, grid, dim] of the examples' images (zeros for an example without "image_id").
    With a ``device``, every tensor of the batch is put there (the model's); None: where it was made."""

    backbone: object
    tokenizer: object
    image_lookup: Mapping[str, torch.Tensor] | None = None
    device: torch.device | str | None = None

    def __call__(self, features: list[dict], task_ids: list[int]) -> dict:
        batch = self.backbone.collate(features, self.tokenizer)
        batch["task_ids"] = torch.tensor(task_ids, dtype=torch.long)
        lookup = self.image_lookup
        if lookup is not None and any("image_id" in f for f in features):
            rows = [lookup[f["image_id"]] if "image_id" in f else None for f in features]
            blank = torch.zeros_like(next(r for r in rows if r is not None))
            batch["image_features"] = torch.stack([blank if r is None else r for r in rows])
        if self.device is None:
            return batch
        return {key: value.to(self.device) for key, value in batch.items()}

    def with_images(self, image_lookup: Mapping[str, torch.Tensor] | None) -> Collator:
        """This collator reading images from ``image_lookup`` instead."""
        return replace(self, image_lookup=image_lookup)

    def batches(self, task_id: int, features: list[dict], batch_size: int) -> Iterator[dict]:
        """Collated batches of one task's features, in order."""
        for start in range(0, len(features), batch_size):
            chunk = features[start:start + batch_size]
            yield self(chunk, [task_id] * len(chunk))


def with_other_images(features: list[dict], seed: int) -> list[dict]:
    """The features with every image replaced by another image of the same list (a fixed derangement of
    the distinct image ids, so no example keeps its own image): what a model scores when it reads images
    it was not asked about. Features without "image_id" stay as they are."""
    images = sorted({f["image_id"] for f in features if "image_id" in f})
    if len(images) < 2:
        raise UserError("pairing questions with other images needs at least two distinct images")
    random.Random(seed).shuffle(images)
    other = {image: images[(i + 1) % len(images)] for i, image in enumerate(images)}
    return [{**f, "image_id": other[f["image_id"]]} if "image_id" in f else f for f in features]
