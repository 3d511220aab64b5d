"""The ``fewshot``, ``lowresource`` and ``embed-plot`` commands: their arguments and their calls into the
experiment modules (loaded only when a command runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arguments import name_values, names, positive_int, positive_ints

FEWSHOT_KS = "4,16,32,100,500,1000,2000"


def cmd_fewshot(args) -> int:
    """Few-shot transfer of a trained multi-task run to a new task: every mode x k x seed trained and scored
    (finished cells are kept); writes fewshot.json, fewshot.md and fewshot.png."""
    from ..quiet import quiet_libraries
    from .fewshot import plan, run_fewshot

    overrides = args.overrides
    if args.task_file:  # a task declared in a file: every cell's config names the file
        overrides = [f"data.task_files={json.dumps([str(Path(f).resolve()) for f in args.task_file])}",
                     *overrides]
    fewshot = plan(args.run_dir, args.task, args.k, args.seeds, args.mode, args.source, args.sample, args.out,
                   overrides, args.trust_remote_code, args.from_runs)
    quiet_libraries()
    run_fewshot(fewshot, progress=not args.quiet)
    print((fewshot.out / "fewshot.md").read_text())
    print(f"written: {fewshot.out / 'fewshot.json'}, fewshot.md, fewshot.png")
    return 0


def cmd_lowresource(args) -> int:
    """Every method of a recipe trained with every task cut to n examples, per n and seed (finished runs are
    kept); writes lowresource.json, lowresource.md and lowresource.png."""
    from ..quiet import quiet_libraries
    from .lowresource import plan, run_lowresource

    plan(args.config, args.n, args.seeds, args.out, args.overrides)  # bad input fails before anything loads
    quiet_libraries()
    folder, _ = run_lowresource(args.config, args.n, args.seeds, args.out, args.overrides, not args.quiet)
    print((folder / "lowresource.md").read_text())
    print(f"written: {folder / 'lowresource.json'}, lowresource.md, lowresource.png")
    return 0


def cmd_embed_plot(args) -> int:
    """A 2-D PCA of a run's learned task embeddings and of its few-shot tasks' (PNG)."""
    from .embed_plot import embed_plot

    print(f"written: {embed_plot(args.run_dir, args.fewshot_dirs, args.out)}")
    return 0


def add_experiment_commands(sub: argparse._SubParsersAction) -> None:
    def command(name, func, help):
        p = sub.add_parser(name, help=help, description=func.__doc__)
        p.set_defaults(func=func)
        return p

    overrides = dict(dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p = command("fewshot", cmd_fewshot, "few-shot transfer of a trained run to a new task")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    p.add_argument("--task", required=True, help="a registered task the run never saw, e.g. cb")
    p.add_argument("--task-file", action="append", default=[], metavar="FILE",
                   help="a task file that declares --task (see docs/extending.md), e.g. reviews/reviews.yaml")
    p.add_argument("--k", type=positive_ints, default=positive_ints(FEWSHOT_KS), metavar="K[,K...]",
                   help=f"training examples per cell (default: {FEWSHOT_KS})")
    p.add_argument("--seeds", type=positive_int, default=5, help="seeds 0..N-1 per k and mode (default: 5)")
    p.add_argument("--mode", type=names, required=True, metavar="MODE[,MODE...]",
                   help="taskembed, the run's own method (hyperpelt, hyperformer++, ...), or a baseline "
                   "trained afresh: prompt, adapters-shared, full, ...")
    p.add_argument("--from", dest="from_runs", type=name_values, action="extend", default=[],
                   metavar="MODE=RUN_DIR[,...]", help="start MODE's cells from RUN_DIR, a finished run of "
                   "that method on the run's backbone, grown by the task (e.g. full=runs/glue-full; default: "
                   "the method new on the run's backbone)")
    p.add_argument("--source", help="the run's task whose weights start the new task's (default: the "
                   "papers' most similar task)")
    p.add_argument("--sample", choices=("balanced", "random"), default="balanced",
                   help="how the k examples are drawn (default: balanced over the classes)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/fewshot-TASK)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the code a run's hub model ships (only for a run folder you trust)")
    p.add_argument("--set", **overrides, help="overrides of each cell's config, e.g. train.steps=100")

    p = command("lowresource", cmd_lowresource, "multi-task training with n examples per task")
    p.add_argument("config", metavar="CONFIG", help="comparison file (base + methods) or run config")
    p.add_argument("--n", type=positive_ints, default=positive_ints("100,500,1000,2000,4000"),
                   metavar="N[,N...]",
                   help="training examples per task (default: 100,500,1000,2000,4000)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per n and method (default: 3)")
    p.add_argument("--out", help="output folder (default: <train.output_dir>/lowresource-<config name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--set", **overrides, help="overrides of every run's config, e.g. train.steps=100")

    p = command("embed-plot", cmd_embed_plot, "plot a run's task embeddings (PCA)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    p.add_argument("fewshot_dirs", nargs="*", metavar="FEWSHOT_DIR", help="folders written by 'hyperpelt "
                   "fewshot' from this run")
    p.add_argument("--out", help="the PNG (default: RUN_DIR/task_embeddings.png)")
