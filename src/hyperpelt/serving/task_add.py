"""``hyperpelt tasks add RUN_DIR --task-file FILE``: a task added to a run's task store offline, learned
as ``POST /v1/tasks`` learns one (the same checks, row, trainer and held-out score)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..arguments import positive_int
from ..errors import UserError

DEFAULT_K = 64


def add_task_add_arguments(parser) -> None:
    """``hyperpelt tasks``' arguments for ``add`` (the others list or check tasks)."""
    parser.add_argument("action", nargs="?", choices=("add",), help="add: learn the task of --task-file from "
                        "examples and add it to RUN_DIR's task store")
    parser.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="(add) the run whose task store "
                        "gains it")
    parser.add_argument("--examples", metavar="FILE", help="(add) JSON lines of labelled examples (default: "
                        "--k of the task's training split)")
    parser.add_argument("--task-store", metavar="PATH", help="(add) the task store (default: "
                        "RUN_DIR/tasks.sqlite)")
    parser.add_argument("--seed", type=int, default=0, help="(add) the split's and the draw's seed "
                        "(default: 0)")
    parser.add_argument("--k", type=positive_int, default=DEFAULT_K, help="(add) examples drawn without "
                        f"--examples (default: {DEFAULT_K})")
    parser.add_argument("--steps", type=positive_int, default=None, help="(add) training steps (default: "
                        "100)")


def tasks_add_command(args) -> int:
    if args.run_dir is None or not args.task_file or len(args.task_file) != 1:
        raise UserError("tasks add needs RUN_DIR and one --task-file FILE")
    print(tasks_add(args.run_dir, args.task_file[0], args.examples, args.task_store, args.seed, args.k,
                    args.steps, args.trust_remote_code))
    return 0


def tasks_add(run_dir: str | Path, task_file: str, examples_file: str | None = None,
              task_store: str | None = None, seed: int = 0, k: int = DEFAULT_K, steps: int | None = None,
              trust_remote_code: bool = False) -> str:
    """Add the one task ``task_file`` declares to the run's task store, learned from ``examples_file``'s
    examples (JSON lines, as ``POST /v1/tasks`` takes them), else from ``k`` examples of the task's
    training split drawn by ``seed`` (balanced over the classes, as ``fewshot`` draws them); the line to
    print."""
    from ..inference import load_run
    from ..tasks.declared import declare_file
    from ..tasks.registry import TaskRegistry
    from .engine import RequestError
    from .new_task import read_new_task
    from .served_tasks import open_run_store
    from .task_worker import add_row, train_row

    registry = TaskRegistry()
    tasks = declare_file(task_file, into=registry)
    if len(tasks) != 1:
        raise UserError(f"{task_file}: declares {len(tasks)} tasks; tasks add takes a file of one task")
    task, declaration = tasks[0], registry.declaration(tasks[0].name)
    body = {key: declaration[key] for key in ("name", "prefix", "labels", "regression", "metrics")
            if key in declaration}
    body["inputs"] = list(declaration["inputs"])
    examples = read_examples(examples_file) if examples_file else drawn_examples(task, k, seed)
    try:
        new = read_new_task({**body, "examples": examples, "seed": seed})
    except RequestError as err:
        raise UserError(f"{examples_file or task_file}: {err}") from None
    model = load_run(run_dir, trust_remote_code=trust_remote_code)
    store = open_run_store(task_store, Path(run_dir), model)
    del model  # the store's first rows are written; the trainer builds models of its own
    try:
        row = add_row(store, new)
    except RequestError as err:
        raise UserError(f"{store.path}: {err}") from None
    row = train_row(store, row, new, Path(run_dir), steps,
                    trust_remote_code=trust_remote_code)
    metrics = "/".join(row.metrics)
    return (f"task '{row.name}' ready in {store.path}: held-out {metrics} {row.score:.2f} ({row.detail})")


def read_examples(path: str) -> list[dict]:
    """The examples of a JSON-lines file: one object per line."""
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                examples.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {number}: not JSON ({err.msg})") from None
    return examples


def drawn_examples(task, k: int, seed: int) -> list[dict]:
    """``k`` examples of ``task``'s training split, drawn by ``seed`` as a few-shot cell draws them, in the
    form ``POST /v1/tasks`` takes (label names, not indices)."""
    from ..tasks.splits import load_task_splits, sample_balanced, sample_rows

    train = load_task_splits(task).train
    draw = sample_rows if task.label_names is None else sample_balanced
    fields = [key for _, key in task.input_fields]
    return [{**{key: row[key] for key in fields},
             "label": row["label"] if task.label_names is None else task.label_names[row["label"]]}
            for row in draw(train, k, random.Random(seed))]
