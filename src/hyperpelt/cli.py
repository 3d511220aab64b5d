"""The ``hyperpelt`` command: argument parsing, dispatch, and every fixable error as one line.

Each command is a thin call into the library. An error a user can fix (``UserError``, a missing file, bad
YAML, a model that cannot be fetched) prints ``error: <message>`` on stderr and exits with 2, as usage
errors do; no traceback. torch, transformers and the server load only in the commands that need them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from . import __version__
from .arguments import OneLineParser, add_overrides, add_placement, positive_int
from .errors import UserError
from .experiments.commands import add_experiment_commands
from .params_command import add_params_command
from .quiet import quiet_libraries
from .serving.command import add_serve_command
from .serving.task_add import add_task_add_arguments
from .training.signals import TrainingStopped
from .vision.command import add_features_command

EXIT_USER_ERROR = 2
TRUST_HELP = "run the code a run's hub model ships with it (model.trust_remote_code): only for runs you trust"


def cmd_train(args) -> int:
    """Train on the config's tasks, or continue a run (--resume); print the test table and the run folder."""
    from .training.state import run_to_train

    main_process = os.environ.get("RANK", "0") == "0"  # print once under `accelerate launch`
    config, run_dir, state = run_to_train(args.config, args.overrides, args.resume, check=main_process)
    quiet_libraries()
    from .evaluation.report import results_table
    from .training.trainer import train

    results = train(config, run_dir, quiet=args.quiet, resume=state)
    if main_process:
        print(results_table(results, f"test results (checkpoint of step {results.get('best_step')})"))
        print(f"run folder: {run_dir}")
    return 0


def cmd_eval(args) -> int:
    """Score a run's best checkpoint on a split; writes only RUN_DIR/eval_<split>.json."""
    quiet_libraries()
    from .evaluation.report import results_table
    from .inference import evaluate_run

    results, out = evaluate_run(args.run_dir, args.split, args.overrides, args.other_images, args.device,
                                args.dtype, args.trust_remote_code)
    paired = " with every question paired with another image" if args.other_images else ""
    print(results_table(results, f"{args.split} results of {Path(args.run_dir) / 'best'}{paired}"))
    print(f"written: {out}")
    return 0


def cmd_predict(args) -> int:
    """Print one answer per input: a label name, a number (regression) or <invalid>."""
    from .inference import load_run, run_config
    from .textfiles import read_inputs

    config = run_config(args.run_dir)
    task = config.data.registry.get(args.task)
    if task.name not in config.data.tasks:
        raise UserError(f"task '{task.name}' was not trained in {args.run_dir}; it has: "
                        f"{', '.join(config.data.tasks)}")
    # bad input fails before the model loads
    rows = [task.parse_input(text, where) for where, text in read_inputs(args.text, args.file)]
    quiet_libraries()
    model = load_run(args.run_dir, device=args.device, dtype=args.dtype,
                     trust_remote_code=args.trust_remote_code)
    for answer in model.predict(task.name, rows, args.batch_size, config.train.num_beams):
        print("<invalid>" if answer is None else format(answer, "g") if isinstance(answer, float) else answer)
    return 0


def cmd_tasks(args) -> int:
    """List the tasks (built in and declared) and their data, or check a task file: sizes, label counts."""
    from .tasks.command import tasks_command

    if args.action == "add":
        from .serving.task_add import tasks_add_command

        return tasks_add_command(args)
    print(tasks_command(args.task_file, args.check, args.data_dir))
    return 0


def cmd_compare(args) -> int:
    """Train every method of a comparison over its seeds (finished runs are kept); write its report."""
    quiet_libraries()
    from .experiments.compare import run_comparison

    report = run_comparison(args.config, "hyperpelt compare " + args.config, quiet=args.quiet)
    print(report.read_text())
    print(f"report: {report}")
    return 0


def add_trust(parser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="hyperpelt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hyperpelt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help):
        p = sub.add_parser(name, help=help, description=func.__doc__)
        p.set_defaults(func=func)
        return p

    p = command("train", cmd_train, "train on a YAML recipe")
    p.add_argument("config", metavar="CONFIG", nargs="?",
                   help="YAML recipe, e.g. configs/demo.yaml (with --resume: the run's config by default)")
    add_overrides(p, "config overrides, e.g. train.steps=100 data.tasks=[rte,stsb]")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its newest valid state")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command("eval", cmd_eval, "score a run's best checkpoint")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    p.add_argument("--split", choices=("test", "validation"), default="test", help="default: test")
    p.add_argument("--other-images", action="store_true",
                   help="pair every question with another image of the split (does the model read images?)")
    add_placement(p)
    add_trust(p)
    add_overrides(p, "overrides of the run's config, e.g. data.data_dir=PATH")

    p = command("predict", cmd_predict, "predict raw inputs with a run's best checkpoint")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    p.add_argument("--task", required=True, help="one of the run's tasks")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", nargs="+", action="extend", metavar="TEXT",
                       help="raw input(s): the text; for pair tasks TAB-separated fields or a JSON object")
    given.add_argument("--file", metavar="FILE", help="one input per line, as --text takes it")
    p.add_argument("--batch-size", type=positive_int, default=32, help="inputs per forward (default: 32)")
    add_placement(p)
    add_trust(p)

    p = command("compare", cmd_compare, "compare methods over seeds; writes a markdown report")
    p.add_argument("config", metavar="COMPARISON", help="comparison file, e.g. configs/compare_minilm.yaml")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    add_params_command(sub)

    p = command("tasks", cmd_tasks, "list registered tasks, check a task file, or add one to a run's store")
    add_task_add_arguments(p)
    add_trust(p)
    p.add_argument("--data-dir", default=None, help="data folder to check (default: the library's default)")
    p.add_argument("--task-file", action="append", metavar="FILE", help="also list the tasks FILE declares")
    p.add_argument("--check", metavar="FILE", help="check a task file: its split sizes and label counts")
    for add_commands in (add_features_command, add_experiment_commands, add_serve_command):
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)  # usage errors exit with 2
    try:
        return args.func(args) or 0
    except TrainingStopped as stopped:  # a clean stop (SIGINT, SIGTERM): how to resume, said once
        if os.environ.get("RANK", "0") == "0":
            print(stopped, file=sys.stderr)
        return 0
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
    print("error: " + " ".join(part.strip() for part in message.splitlines() if part.strip()),
          file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
