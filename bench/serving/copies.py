"""The many-task benchmark's tasks: a run's own, then copies of them whose task embeddings are the trained
ones perturbed, written to a task store; and the workload that asks for each by name."""

from __future__ import annotations

import json
from pathlib import Path

from bench.serving.workload import derived_tasks, popularity_weights


def perturbed_entries(entries: list, n: int, noise: float, seed: int) -> list:
    """``n`` ready task entries: ``entries`` (the run's own), then copies of them in turn (``derived_tasks``),
    each declared as its source, with its source's head and the source's embedding plus Gaussian noise of
    ``noise`` times the embedding's root mean square."""
    import torch

    from hyperpelt.serving.task_rows import TaskEntry

    generator = torch.Generator().manual_seed(seed)
    out = list(entries)
    for task, source in derived_tasks([e.task for e in entries], n)[len(entries):]:
        base = entries[source]
        scale = noise * base.embedding.pow(2).mean().sqrt()
        embedding = base.embedding + scale * torch.randn(base.embedding.shape, generator=generator)
        out.append(TaskEntry(task, embedding, base.head, base.head_kind, base.answers, status="ready",
                             examples_hash=f"perturbed from {base.task.name}"))
    return out


def build_store(path: Path, run_dir: Path, model, n: int, noise: float, seed: int) -> Path:
    """A new task store at ``path`` for ``run_dir`` serving ``n`` tasks (``perturbed_entries``), every row
    written in the one transaction that creates the store."""
    from hyperpelt.serving.served_tasks import checkpoint_hash, run_entries
    from hyperpelt.serving.task_store import TaskStore

    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = TaskStore.open(path, run_dir.name, checkpoint_hash(run_dir),
                           lambda: perturbed_entries(run_entries(model), n, noise, seed))
    store.close()
    return path


def many_workload(base: Path, n: int, out: Path) -> Path:
    """The workload of ``n`` tasks (``derived_tasks`` of the base workload's), each drawing its requests
    from its source task's instances (``request_bodies`` reads "sources")."""
    from hyperpelt.tasks import get_task

    workload = json.loads(base.read_text())
    served = derived_tasks([get_task(name) for name in workload["tasks"]], n)
    out.write_text(json.dumps({**workload, "tasks": [task.name for task, _ in served],
                               "sources": [workload["tasks"][source] for _, source in served]}))
    return out


def mean_length(workload: dict, s: float) -> float:
    """The mean input length (tokens) of a request drawn with Zipf popularity ``s`` over the workload's
    tasks: each task's weight times its source's mean length."""
    weights = popularity_weights("zipf", len(workload["tasks"]), s=s)
    sources = workload.get("sources", workload["tasks"])
    return sum(w * workload["mean_length"][source] for w, source in zip(weights, sources))
