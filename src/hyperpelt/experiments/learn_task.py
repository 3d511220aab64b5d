"""A new task learned from k labelled examples, for a served run (``POST /v1/tasks``, ``hyperpelt tasks
add``): the few-shot ``taskembed`` cell (``fewshot.cell_config``, ``transfer.grow``, the one training loop)
on a split of the examples.

The examples are shuffled by the seed and split: ``HELD_OUT`` of them (at least one) are held out, the rest
train. They are written as a task file's jsonl files in a folder of their own (train; dev and test both the
held-out part), so that the task is read, checked and scored as any declared task. The new task starts from
the most similar of the run's tasks: the one whose task embedding, copied to the new task's row, gives the
lowest mean loss on the training part (on an encoder, through the new task's head as the run's seed first
draws it). Only the new task's embedding (and head, on an encoder) trains, for ``steps`` steps with one
validation, at the end: the checkpoint kept is the last, and its score on the held-out part is the task's
score (no choice was made on it).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import UserError

HELD_OUT = 0.2  # the share of the examples held out for the score
DEFAULT_STEPS = 100


@dataclass
class Learned:
    """What training a new task gave: its embedding and head (state dict and kind, None on text-to-text
    backbones), its held-out score, the run task it started from and each candidate's loss."""

    embedding: object
    head: dict | None
    head_kind: str | None
    score: float
    source: str
    losses: dict[str, float]
    trained_on: int
    held_out: int
    seconds: float


def split_examples(examples: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """(training part, held-out part): the examples shuffled by ``seed``, ``HELD_OUT`` of them held out."""
    if len(examples) < 2:
        raise UserError(f"examples: {len(examples)} given; a task is learned from a few (some held out)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = max(1, round(len(examples) * HELD_OUT))
    return [examples[i] for i in order[held:]], [examples[i] for i in order[:held]]


def learn_task(run_dir: str | Path, declaration: dict, examples: list[dict], seed: int = 0,
               steps: int = DEFAULT_STEPS, hosts=None, trust_remote_code: bool = False) -> Learned:
    """Learn the task ``declaration`` declares (a task file's fields, without files) from ``examples``
    (objects with its input fields and "label": a label name, or a number for a score), for the run at
    ``run_dir``. ``hosts``: a ``transfer.SharedHosts`` lending the host (default: loaded here)."""
    from ..run_folders import finished_run
    from ..transfer import TASKEMBED, grow, new_task_embedding, train_for_transfer
    from .fewshot import cell_config, plan

    start = time.perf_counter()
    run_dir = finished_run(run_dir)
    train, held = split_examples(examples, seed)
    with tempfile.TemporaryDirectory(prefix="hyperpelt-task-") as tmp:
        folder = Path(tmp)
        files = {}
        for role, rows in (("train", train), ("dev", held), ("test", held)):
            files[role] = f"{role}.jsonl"
            (folder / files[role]).write_text("".join(json.dumps(row) + "\n" for row in rows))
        task_file = folder / "task.yaml"
        task_file.write_text(yaml.safe_dump({**declaration, "format": "jsonl", "files": files,
                                             "split_rule": "given"}))
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        known = list(config.get("data", {}).get("task_files") or [])
        overrides = [f"data.task_files={json.dumps([*known, str(task_file)])}", f"train.steps={steps}",
                     f"train.eval_every={steps}", "train.save_every=0", "data.max_eval_examples=null"]
        meta_tasks = _run_tasks(run_dir)
        fs = plan(run_dir, declaration["name"], [len(train)], 1, [TASKEMBED], meta_tasks[0], "random",
                  folder / "out", overrides, trust_remote_code)
        model, grown = grow(fs.run_dir / "best", fs.spec, fs.source, seed, hosts)
        losses = source_losses(model, fs.spec, train_rows(fs, seed), meta_tasks)
        fs.source = min(losses, key=losses.get)
        _copy_row(model, meta_tasks.index(fs.source))
        train_for_transfer(model, TASKEMBED, grown)
        from ..training.sweep import train_run

        results = train_run(cell_config(fs, TASKEMBED, len(train), seed), folder / "run", model=model)
        if hosts is not None:
            hosts.check()
    kind, head = model.task_head(len(model.tasks) - 1)
    return Learned(new_task_embedding(model), head, kind, results["tasks"][fs.spec.name]["score"], fs.source,
                   losses, len(train), len(held), time.perf_counter() - start)


def _run_tasks(run_dir) -> list[str]:
    from ..checkpoint import read_checkpoint_config

    return list(read_checkpoint_config(Path(run_dir) / "best")["tasks"])


def train_rows(fs, seed: int) -> list[dict]:
    """The training part as the task reads it (labels as indices)."""
    from ..tasks import load_task_splits

    return load_task_splits(fs.spec, None, seed).train  # its files are given as they are: no split drawn


def source_losses(model, task, rows: list[dict], candidates: list[str], batch_size: int = 32
                  ) -> dict[str, float]:
    """Each candidate run task's mean loss on ``rows`` of the new (last) task, its task embedding copied to
    the new task's row; the model's new row is left as the last candidate's."""
    import torch

    features = model.encode(task, rows)
    task_id = len(model.tasks) - 1
    losses = {}
    for index, name in enumerate(candidates):
        _copy_row(model, index)
        total = 0.0
        with torch.no_grad():
            for at in range(0, len(features), batch_size):
                part = features[at:at + batch_size]
                batch = model.collator(part, [task_id] * len(part))
                total += float(model(**batch)["loss"]) * len(part)
        losses[name] = total / len(features)
    return losses


def _copy_row(model, index: int) -> None:
    """Set the new (last) task's embedding row to task ``index``'s."""
    import torch

    rows = getattr(model.method, model.method.task_embedding_name)
    with torch.no_grad():
        rows[-1].copy_(rows[index])
    model.method.weights_changed()
