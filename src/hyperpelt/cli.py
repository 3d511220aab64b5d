"""The ``hyperpelt`` command: train | eval | predict | compare | params | tasks.

Every error a user can fix (``UserError``, a missing file, bad YAML) is printed as one line,
``error: <message>``, on stderr with exit code 2 and no traceback; usage errors also exit with 2.
Heavy libraries (torch, transformers) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from . import __version__
from .errors import UserError

EXIT_USER_ERROR = 2


# ---------------------------------------------------------------------------------------------- helpers


def _quiet_libraries() -> None:
    """No load reports, weight-loading bars or advisory warnings from transformers; real errors still raise."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _is_main_process() -> bool:
    """Print only once under ``accelerate launch`` (RANK is set by the launcher)."""
    return os.environ.get("RANK", "0") == "0"


def _existing_run(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    for needed in ("config.yaml", "best"):
        if not (run_dir / needed).exists():
            raise UserError(f"{run_dir} is not a finished run folder: {needed} is missing")
    return run_dir


def _run_config(run_dir: Path, overrides: list[str] = ()):
    from .config import load_config

    return load_config(run_dir / "config.yaml", list(overrides))


def _load_run_model(run_dir: Path, seed: int):
    """The checkpoint on its base model. Seeding first rebuilds a randomly initialised host
    (``model.pretrained: false``) exactly as training built it, since such a host is not saved."""
    from accelerate.utils import set_seed

    from .checkpoint import load_checkpoint

    _quiet_libraries()
    set_seed(seed)
    return load_checkpoint(run_dir / "best").eval()


# ---------------------------------------------------------------------------------------------- train


def _check_before_loading(config) -> None:
    """Fail in seconds, not after loading torch and the model: unknown tasks, an existing run folder,
    unreadable local data (the readers cache what they read, so training does not read it twice)."""
    from .tasks import get_task, load_task_splits

    tasks = [get_task(name) for name in config.data.tasks]
    if config.train.run_name:
        run_dir = Path(config.train.output_dir) / config.train.run_name
        if run_dir.exists():
            raise UserError(f"run folder {run_dir} already exists; choose another train.run_name")
    if config.data.source == "local":
        for task in tasks:
            load_task_splits(task, config.data.data_dir, seed=config.train.seed, source="local",
                             max_train=config.data.max_train_examples)


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the config's tasks; print the test table of the best checkpoint and the run folder."""
    from .config import load_config

    config = load_config(args.config, args.overrides)
    _check_before_loading(config)
    _quiet_libraries()
    from .evaluation.report import results_table
    from .training.trainer import new_run_dir, train

    run_dir = new_run_dir(config, Path(args.config).stem, check=_is_main_process())
    results = train(config, run_dir, quiet=args.quiet)
    if _is_main_process():
        title = f"test results (checkpoint of step {results.get('best_step')})"
        print(results_table(results, title))
        print(f"run folder: {run_dir}")
    return 0


# ---------------------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a run's best checkpoint on a split; writes only RUN_DIR/eval_<split>.json."""
    run_dir = _existing_run(args.run_dir)
    config = _run_config(run_dir, args.overrides)
    model = _load_run_model(run_dir, config.train.seed)
    from .data.features import load_task_data
    from .evaluation.evaluator import evaluate
    from .evaluation.report import results_table

    data = load_task_data(model, config.data, config.train.seed)
    results = evaluate(model, data, args.split, config.train.eval_batch_size, config.train.num_beams)
    results["split"] = args.split
    out = run_dir / f"eval_{args.split}.json"
    out.write_text(json.dumps(results, indent=2))
    print(results_table(results, f"{args.split} results of {run_dir / 'best'}"))
    print(f"written: {out}")
    return 0


# ---------------------------------------------------------------------------------------------- predict


def _split_fields(task, text: str, where: str) -> dict:
    """One raw input: a JSON object with the field keys, the sentence itself (one-field tasks),
    or the field values separated by a TAB (a literal backslash-t also works on the command line)."""
    keys = [key for _, key in task.input_fields]
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object with keys {', '.join(keys)}")
        missing = [k for k in keys if k not in record]
        if missing:
            raise UserError(f"{where}: missing key '{missing[0]}' (task '{task.name}' needs {', '.join(keys)})")
        return {k: str(record[k]) for k in keys}
    if len(keys) == 1:
        return {keys[0]: text}
    separator = "\t" if "\t" in text else "\\t"
    parts = text.split(separator)
    if len(parts) != len(keys):
        raise UserError(
            f"{where}: task '{task.name}' takes {len(keys)} fields ({', '.join(keys)}) separated by a TAB "
            f"or as a JSON object; got {len(parts)}"
        )
    return dict(zip(keys, parts))


def _raw_inputs(task, texts: list[str] | None, file: str | None) -> list[dict]:
    rows = []
    if texts is not None:
        rows = [_split_fields(task, text, f"--text {i + 1}") for i, text in enumerate(texts)]
    else:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        with open(path, encoding="utf-8-sig") as handle:
            for lineno, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    rows.append(_split_fields(task, line, f"{path}:{lineno}"))
    if not rows:
        raise UserError("no inputs to predict")
    dummy = 0.0 if task.is_regression else 0
    return [{**row, "label": dummy, "idx": i} for i, row in enumerate(rows)]


def _show(task, prediction) -> str:
    if prediction is None:
        return "<invalid>"
    if task.is_regression:
        return format(round(float(prediction), 4), "g")
    return task.label_names[int(prediction)]


def cmd_predict(args: argparse.Namespace) -> int:
    """Print one prediction per input: a label name, a number (regression) or <invalid>."""
    from .tasks import get_task

    run_dir = _existing_run(args.run_dir)
    config = _run_config(run_dir)
    task = get_task(args.task)
    trained = config.data.tasks
    if task.name not in trained:
        raise UserError(f"task '{task.name}' was not trained in {run_dir}; it has: {', '.join(trained)}")
    rows = _raw_inputs(task, args.text, args.file)

    model = _load_run_model(run_dir, config.train.seed)
    from .data.features import make_batch

    task_id = model.task_names.index(task.name)
    task = model.tasks[task_id]
    features = model.backbone.encode(model.tokenizer, task, rows, config.data.task_prefix, model.model_config)
    predictions = []
    for start in range(0, len(features), args.batch_size):
        chunk = features[start : start + args.batch_size]
        batch = make_batch(model, chunk, [task_id] * len(chunk))
        task_ids = batch.pop("task_ids")
        predictions += model.predict(
            task_ids, max_new_tokens=model.model_config.max_target_length, num_beams=config.train.num_beams, **batch
        )
    for prediction in predictions:
        print(_show(task, prediction))
    return 0


# ---------------------------------------------------------------------------------------------- tasks


def _local_status(task, root: Path) -> str:
    if task.local is None:
        return "no (hub only)"
    present = [role for role, paths in task.local.files if any((root / p).is_file() for p in paths)]
    if len(present) == len(task.local.files):
        return "yes"
    return f"partial ({', '.join(present)})" if present else "no"


def cmd_tasks(args: argparse.Namespace) -> int:
    """List registered tasks: labels, metrics, local data presence, split rule."""
    from .tasks import get_task, task_names
    from .tasks.sources import default_data_dir

    root = Path(args.data_dir) if args.data_dir else default_data_dir()
    header = ("task", "labels", "metrics", "local data", "split rule")
    rows = []
    for name in task_names():
        task = get_task(name)
        labels = ", ".join(task.label_names) if task.label_names else "(regression)"
        metrics = ", ".join(getattr(f, "__name__", str(f)) for f in task.metrics)
        rows.append((name, labels, metrics, _local_status(task, root), task.split_rule))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(f"{c:<{w}}" for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(f"data dir: {root}")
    print(line(header))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for row in rows:
        print(line(row))
    return 0


# ---------------------------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    """Train every method of a comparison file over its seeds (resuming finished runs) and write its report."""
    _quiet_libraries()
    from .experiments.compare import run_comparison

    command = "hyperpelt compare " + args.config
    report = run_comparison(args.config, command, quiet=args.quiet)
    print(report.read_text())
    print(f"report: {report}")
    return 0


# ---------------------------------------------------------------------------------------------- params


def cmd_params(args: argparse.Namespace) -> int:
    """Count the parameters of a method on a backbone, as the papers report them."""
    from .config import parse_override

    if args.paper_table:
        _quiet_libraries()
        from .accounting import paper_table

        print(paper_table())
        return 0
    if not args.model:
        raise UserError("params needs --model (or --paper-table)")
    method = {"name": args.method}
    for text in args.option or []:
        path, value = parse_override(text)
        method[".".join(path)] = value
    _quiet_libraries()
    from .accounting import count_parameters

    counts = count_parameters(args.model, method, args.tasks)
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"model {args.model}, method {counts['method']}, {args.tasks} tasks")
    print(f"backbone parameters   {counts['backbone_params']:,}")
    print(f"total parameters      {counts['total_params']:,} ({counts['total_multiple']:.3f}x the backbone)")
    print(f"trained parameters    {counts['trainable_params']:,}")
    print(f"trained per task      {counts['trained_per_task_pct']:.3f}% of the backbone")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperpelt",
        description="Hypernetwork-based parameter-efficient multi-task fine-tuning (HyperPELT).",
    )
    parser.add_argument("--version", action="version", version=f"hyperpelt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train on a YAML recipe", description=cmd_train.__doc__)
    p.add_argument("config", type=str, metavar="CONFIG", help="YAML recipe, e.g. configs/demo.yaml")
    p.add_argument(
        "overrides", nargs="*", type=str, metavar="KEY=VALUE",
        help="config overrides, e.g. train.steps=100 data.tasks=[rte,stsb] model.name=t5-small",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a run's best checkpoint", description=cmd_eval.__doc__)
    p.add_argument("run_dir", type=str, metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    p.add_argument("--split", choices=("test", "validation"), default="test", help="split to score (default: test)")
    p.add_argument(
        "overrides", nargs="*", type=str, metavar="KEY=VALUE",
        help="overrides of the run's config, e.g. data.data_dir=PATH train.eval_batch_size=32",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict raw inputs with a run's best checkpoint", description=cmd_predict.__doc__)
    p.add_argument("run_dir", type=str, metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    p.add_argument("--task", type=str, required=True, help="one of the run's tasks")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--text", type=str, nargs="+", action="extend", metavar="TEXT",
        help="raw input(s): the sentence, or for pair tasks the fields separated by a TAB (or a JSON object)",
    )
    given.add_argument(
        "--file", type=str, metavar="FILE",
        help="one input per line: TAB-separated fields, or a JSON object with the task's field keys",
    )
    p.add_argument("--batch-size", type=int, default=32, help="inputs per forward pass (default: 32)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("compare", help="compare methods over seeds; writes a markdown report", description=cmd_compare.__doc__)
    p.add_argument("config", type=str, metavar="COMPARISON", help="comparison file, e.g. configs/compare_minilm.yaml")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("params", help="count a method's parameters on a backbone", description=cmd_params.__doc__)
    p.add_argument("--model", type=str, help="t5-small, t5-base, t5-large, t5-tiny, minilm-l6, a hub id or a path")
    p.add_argument("--method", type=str, default="hyperpelt", help="method name (see README), default hyperpelt")
    p.add_argument("--tasks", type=int, default=8, help="number of tasks trained together (default: 8, GLUE)")
    p.add_argument("--option", type=str, action="append", metavar="KEY=VALUE", help="method option, e.g. adapter_dim=24")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--paper-table", action="store_true", help="print the papers' figures beside ours (markdown)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("tasks", help="list registered tasks", description=cmd_tasks.__doc__)
    p.add_argument("--data-dir", type=str, default=None, help="data folder to check (default: the library's default)")
    p.set_defaults(func=cmd_tasks)
    return parser


def _one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)  # usage errors exit with 2
    try:
        return args.func(args) or 0
    except UserError as err:
        message = str(err)
    except FileNotFoundError as err:
        message = f"{err.filename}: file not found" if err.filename else str(err)
    except yaml.YAMLError as err:
        message = f"invalid YAML: {err}"
    except OSError as err:  # e.g. a hub model that cannot be downloaded (offline, wrong id)
        message = str(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
