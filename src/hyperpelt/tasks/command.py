"""What ``hyperpelt tasks`` prints: the registered tasks (built in and declared in task files), or one task
file checked, with the split sizes and label counts of each of its tasks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hyperpelt.errors import UserError
from hyperpelt.tables import text_table
from hyperpelt.tasks.declared import declare_file
from hyperpelt.tasks.registry import Task, TaskRegistry
from hyperpelt.tasks.sources import HubError, SourceError, default_data_dir, local_status, missing_local
from hyperpelt.tasks.splits import RULES, load_task_splits

SPLIT_SEED = 42  # data.split_seed's default: the splits a run gets unless it moves them


def tasks_command(task_files: list[str] | None, check: str | None, data_dir: str | None) -> str:
    """The text of ``hyperpelt tasks [--task-file F ...] [--check FILE]``."""
    registry = TaskRegistry()
    for path in task_files or []:
        declare_file(path, into=registry)
    if check is not None:
        return "\n".join(check_task_file(check, data_dir, registry))
    root = Path(data_dir) if data_dir else default_data_dir()
    rows = [(t.name, ", ".join(t.label_names) if t.label_names else f"({t.kind})",
             ", ".join(f.__name__ for f in t.metrics), local_status(t.name, t.local, root), t.split_rule,
             registry.declared_in(t.name) or "built in")
            for t in map(registry.get, registry.names())]
    header = ("task", "labels", "metrics", "local data", "split rule", "declared in")
    return "\n".join([f"data dir: {root}", *text_table(header, rows)])


def check_task_file(path: str | Path, data_dir: str | None = None,
                    registry: TaskRegistry | None = None) -> list[str]:
    """Check every task of a task file and read its splits (as a run with data.split_seed 42 would); the
    lines to print: each task's files, and its split sizes and label counts (score range for a regression).
    A fault is a UserError naming the file, the task and the field. ``registry``: the tasks declared beside
    (default none)."""
    tasks = declare_file(path, into=TaskRegistry() if registry is None else registry)
    lines = [f"{path}: {len(tasks)} task{'s' * (len(tasks) != 1)}, every field valid"]
    for task in tasks:
        splits = _read_splits(task, f"{path}: task '{task.name}'", data_dir)
        metrics = ", ".join(f.__name__ for f in task.metrics)
        lines += ["", f"task {task.name}: {task.kind}, metrics {metrics}, split rule {task.split_rule} "
                      f"(split seed {SPLIT_SEED})"]
        lines += [f"  {role}: {files[0]}" for role, files in (task.local.files if task.local else ())]
        if task.hub is not None:
            lines.append(f"  hub: {' '.join(task.hub.path)}")
        names = ("train", "validation", "test")
        if task.is_regression:
            rows = [(n, str(len(splits[n])), *_score_range(splits[n])) for n in names]
            lines += text_table(("split", "examples", "min", "mean", "max"), rows, right=(1, 2, 3, 4))
        else:
            counts = {n: Counter(ex["label"] for ex in splits[n]) for n in names}
            rows = [(n, str(len(splits[n])), *(str(counts[n][i]) for i in range(task.num_labels)))
                    for n in names]
            lines += text_table(("split", "examples", *task.label_names), rows,
                                right=tuple(range(1, task.num_labels + 2)))
    return lines


def _score_range(examples: list[dict]) -> tuple[str, str, str]:
    scores = [float(ex["label"]) for ex in examples]
    if not scores:
        return "-", "-", "-"
    return f"{min(scores):g}", f"{sum(scores) / len(scores):.4g}", f"{max(scores):g}"


def _read_splits(task: Task, where: str, data_dir: str | None):
    """The task's splits; a file that is missing or does not fit the declaration is an error naming the
    field at fault."""
    if task.local is not None and task.hub is None:
        for role in RULES[task.split_rule][0]:
            missing = missing_local(task.name, task.local, role, data_dir)
            if missing:
                raise UserError(f"{where}: files.{role}: {missing}: file not found")
    try:
        return load_task_splits(task, data_dir, seed=SPLIT_SEED)
    except SourceError as err:
        raise UserError(f"{where}: {err.field}: {err}") from None
    except HubError as err:
        raise UserError(f"{where}: hub: {err.reason}") from None
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
