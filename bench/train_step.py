"""Training-step and generation benchmark on a T5-base-sized model, against full fine-tuning and peft.

    python -m bench.train_step [--json] [--steps 3] [--rounds 3] [--threads 2] [--out reports/bench_cpu.json]
                               [--report reports/bench_cpu.md] [--dtype float32,bfloat16]

Every measurement runs in its own process (so peak memory is that method's alone): median step time over
``--steps`` timed steps after one warm-up step, peak resident memory (ru_maxrss), and the trained share
of the backbone. ``--rounds`` repeats every measurement, the rounds interleaved (all methods once, then
all again), and keeps each figure's median over rounds, so that a shared machine's drift between rounds
does not decide a ratio of two processes run minutes apart (reports/bench_cpu.md lists each round).
Generation: HyperPELT with its weight table, regenerating at every decoding step (the research code's
behaviour), exported into static tensors, and the frozen backbone alone. Mixed-task against one-task
batch step time. VL-HyperPELT on the same batch with one image per example (a 7x7 grid of 2048-d
features, the paper's CLIP RN101 setting), so every example has visual weights of its own, against the
text-only HyperPELT step. Randomly initialised weights: speed does not depend on their values.
``--dtype float32,bfloat16`` also measures HyperPELT (and ``--dtype-methods``: full fine-tuning, peft
LoRA) with its frozen backbone in bf16 under bf16 mixed precision, each in its own process in the same
rounds, against its float32 row (bench/measures.py runs both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from bench.measures import measure_generate, measure_train, parse_dtypes
from bench.worker_result import print_result, run_worker_process
from hyperpelt.provenance import bf16_units, code_version, cpu_model, describe_bf16

TRAIN_METHODS = ("full", "peft-lora", "peft-prefix", "adapters-shared", "hyperformer++", "hyperpelt",
                 "vl-hyperpelt")
DTYPE_METHODS = ("hyperpelt", "full", "peft-lora")  # the methods --dtype measures in other dtypes too
PEAK_MEMORY_TARGET = 0.60  # hyperpelt's bf16 step against its float32 step (issue 31)


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    method, _, dtype = args.worker.partition("@")  # "hyperpelt@bfloat16": that method in that dtype
    if method == "generate":
        result = measure_generate(args)
    elif method == "mixed":
        result = measure_train(args, "hyperpelt", mixed=True)
    else:
        result = measure_train(args, method, dtype=dtype or "float32")
    print_result(result)


def spawn(args, worker: str) -> dict:
    cmd = [sys.executable, "-m", "bench.train_step", "--worker", worker, "--model", args.model,
           "--steps", str(args.steps), "--threads", str(args.threads), "--batch", str(args.batch),
           "--input-len", str(args.input_len), "--target-len", str(args.target_len)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    print(f"  measuring {worker} ...", file=sys.stderr, flush=True)
    return run_worker_process(cmd, worker, env=env)


def median_over_rounds(measurements: list[dict]) -> dict:
    """Each figure's median over the rounds; peak memory is the largest any round saw."""
    return {
        key: (max(m[key] for m in measurements) if key == "peak_mem_gb"
              else statistics.median(m[key] for m in measurements))
        for key in measurements[0]
    }


def table(results: dict) -> str:
    rows = ["| method | step (s) | peak memory (GB) | trained (% of backbone) |", "|---|---:|---:|---:|"]
    for name, r in results["train"].items():
        rows.append(f"| {name} | {r['step_s']:.3f} | {r['peak_mem_gb']:.2f} | {r['trainable_pct']:.3f} |")
    g = results["generate"]
    rows += ["", "| generation (HyperPELT) | seconds |", "|---|---:|"]
    rows += [f"| cached weights | {g['cached_s']:.3f} |",
             f"| regenerated every decoding step | {g['uncached_s']:.3f} |"]
    rows += [f"| exported static weights | {g['static_s']:.3f} |",
             f"| frozen backbone alone | {g['frozen_s']:.3f} |"]
    rows += ["", f"mixed-task batch step {results['mixed_batch_step_s']:.3f} s, "
                 f"one-task batch step {results['single_batch_step_s']:.3f} s", ""]
    rows += ["| ratio | value | target | met |", "|---|---:|---:|---|"]
    for name, (value, target) in results["ratios"].items():
        rows.append(f"| {name} | {value:.3f} | ≤ {target} | {'yes' if value <= target else 'no'} |")
    if results.get("dtypes"):
        rows += ["", *dtype_table(results)]
    if len(results.get("rounds", [])) > 1:
        rows += ["", "Step time (s) in each round:", "",
                 "| method | " + " | ".join(f"round {i + 1}" for i in range(len(results["rounds"]))) + " |"]
        rows.append("|---|" + "---:|" * len(results["rounds"]))
        for worker in (*results["train"], "mixed", *dtype_workers(results.get("dtypes", {}))):
            rows.append(f"| {worker} | "
                        + " | ".join(f"{r[worker]['step_s']:.3f}" for r in results["rounds"]) + " |")
    return "\n".join(rows)


def dtype_workers(dtypes: dict) -> list[str]:
    return [f"{method}@{dtype}" for dtype, methods in dtypes.items() for method in methods]


def above_libraries(m: dict) -> float:
    """A measurement's peak memory less the process before the model (torch, transformers, hyperpelt)."""
    return m["peak_mem_gb"] - m.get("start_gb", math.nan)


def dtype_table(results: dict) -> list[str]:
    """Each method measured in another dtype next to its float32 row, and the ratios of the two."""
    rows = [f"Other dtypes, measured in the same run on the same machine ({cpu_model()}, "
            f"{describe_bf16(bf16_units())}):", "",
            "| method | dtype | step (s) | peak memory (GB) | before the model (GB) | weights (GB) "
            "| step / float32 | peak memory / float32 | above the libraries / float32 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for dtype, methods in results["dtypes"].items():
        for method, r in methods.items():
            base = results["train"][method]
            for name, m in (("float32", base), (dtype, r)):
                ratios = (f"{m['step_s'] / base['step_s']:.3f} | "
                          f"{m['peak_mem_gb'] / base['peak_mem_gb']:.3f} | "
                          f"{above_libraries(m) / above_libraries(base):.3f}" if m is r else " |  | ")
                start, weights = m.get("start_gb", math.nan), m.get("weights_gb", math.nan)
                rows.append(f"| {method} | {name} | {m['step_s']:.3f} | {m['peak_mem_gb']:.2f} | "
                            f"{start:.3f} | {weights:.3f} | {ratios} |")
    return rows


def dtype_ratios(results: dict) -> dict:
    """The issue's target: hyperpelt's peak memory in each other dtype against float32, both less the
    libraries' share (what a GPU's peak of allocated memory counts; the dtype table shows the whole
    process's ratio beside it)."""
    train = results["train"]["hyperpelt"]
    return {f"hyperpelt {dtype} peak memory above the libraries / float32":
            (above_libraries(methods["hyperpelt"]) / above_libraries(train), PEAK_MEMORY_TARGET)
            for dtype, methods in results.get("dtypes", {}).items() if "hyperpelt" in methods}


DTYPE_NOTES = (
    "Another dtype: the frozen backbone's weights stored in it (model.dtype) and the step run under "
    "Accelerate's mixed precision of that dtype (train.precision), as the trainer runs it; every trained "
    "weight stays float32 (under full fine-tuning all of them, so its row is the autocast alone; peft keeps "
    "its LoRA weights float32 on the half-precision host). Peak memory is the process's largest resident "
    "set during its steps: besides the weights (\"weights\": every parameter's bytes), activations, "
    "gradients and optimizer state it holds the libraries (\"before the model\": the process with torch, "
    "transformers and hyperpelt loaded), the same in both rows, so the ratio of whole-process peaks lies "
    "nearer 1 than the weights' ratio. The target (0.6) is read on the peaks less the libraries' share, "
    "which is what a GPU's peak (allocated memory) counts; the whole-process ratio is shown beside it."
)


NOTES = (
    "Another dtype: the frozen backbone's weights stored in it (model.dtype) and the step run under "
    "Accelerate's mixed precision of that dtype (train.precision), as the trainer runs it; every trained "
    "weight stays float32 (under full fine-tuning all of them, so its row is the autocast alone; peft keeps "
    "its LoRA weights float32 on the half-precision host). Peak memory is the process's maximum resident "
    "set: besides the weights (\"weights\": every parameter's bytes), activations, gradients and optimizer "
    "state it holds the libraries (\"before the model\": the process with torch, transformers and hyperpelt "
    "loaded), the same in both rows, so the ratio of peaks lies nearer 1 than the weights' ratio."
)


NOTES = (
    "peft-prefix steps faster than the other methods because peft's seq2seq prefix-tuning passes its "
    "prefixes to the decoder only (as past key values): no gradient flows through the encoder. HyperPELT "
    "prefixes the encoder too, so its backward pass runs through both stacks."
)


def markdown(results: dict, command: str) -> str:
    """The run as a report: command, setup, tables, and which targets it meets."""

    import torch

    c = results["config"]
    missed = [name for name, (value, target) in results["ratios"].items() if value > target]
    lines = [
        "# CPU benchmark (one run)",
        "",
        f"Command: `{command}`",
        "",
        f"{c['model']}-sized T5 with random weights (speed does not depend on their values), "
        f"batch {c['batch']}, input {c['input_len']} tokens, target {c['target_len']} tokens, "
        f"8 tasks registered, {c['threads']} torch threads; torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs ({cpu_model()}, {describe_bf16(bf16_units())}), "
        f"{time.strftime('%Y-%m-%d')}, code {code_version()}. "
        f"Each measurement runs in its own process: median of {c['steps']} timed steps after one warm-up, "
        f"repeated in {c.get('rounds', 1)} interleaved rounds (every method once, then again) "
        "with the median over rounds kept; peak memory is the largest resident set of its processes during "
        "their steps (the high-water mark is reset once the model is built, so what building a model "
        "leaves behind is not counted: a random host in half precision is drawn in float32 and cast). "
        "\"trained\" is all trained parameters (8 tasks) as a percentage of the backbone.",
        "",
        table(results),
        "",
        "Targets met: all." if not missed else f"Targets not met: {', '.join(missed)}.",
        "",
        NOTES,
        "",
    ]
    if results.get("dtypes"):
        lines[-1:-1] = ["", DTYPE_NOTES]
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--model", default="t5-base", help="built-in T5 size (default t5-base)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (or generations) per measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved repeats of every measurement (median kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--target-len", type=int, default=8)
    parser.add_argument("--out", type=str, default=None, help="also write the JSON object to this file")
    parser.add_argument("--report", type=str, default=None,
                        help="also write the run as a markdown report to this file")
    parser.add_argument("--dtype", default="float32",
                        help="comma list of frozen-backbone dtypes: float32 (always measured), bfloat16")
    parser.add_argument("--dtype-methods", default=",".join(DTYPE_METHODS),
                        help=f"the methods measured in the other dtypes (default {','.join(DTYPE_METHODS)})")
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    try:
        args.dtype = parse_dtypes(args.dtype)
    except ValueError as error:
        parser.error(str(error))
    args.dtype_methods = args.dtype_methods.split(",")
    if not {*args.dtype_methods} <= {*DTYPE_METHODS} or "hyperpelt" not in args.dtype_methods:
        parser.error(f"--dtype-methods: hyperpelt and any of {', '.join(DTYPE_METHODS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    keys = ("model", "steps", "rounds", "threads", "batch", "input_len", "target_len", "dtype")
    results = {"config": {k: getattr(args, k) for k in keys}}
    others = {dtype: list(args.dtype_methods) for dtype in args.dtype[1:]}
    workers = (*TRAIN_METHODS, "generate", "mixed", *dtype_workers(others))
    rounds = [{w: spawn(args, w) for w in workers} for _ in range(args.rounds)]
    measured = {w: median_over_rounds([r[w] for r in rounds]) for w in workers}
    results["train"] = {m: measured[m] for m in TRAIN_METHODS}
    results["generate"] = measured["generate"]
    results["mixed_batch_step_s"] = measured["mixed"]["step_s"]
    results["rounds"] = rounds  # every round's own figures, to show the spread behind the medians
    results["single_batch_step_s"] = results["train"]["hyperpelt"]["step_s"]
    if others:
        results["dtypes"] = {dtype: {m: measured[f"{m}@{dtype}"] for m in methods}
                             for dtype, methods in others.items()}
    train, gen = results["train"], results["generate"]
    results["ratios"] = {
        "hyperpelt step / full step": (train["hyperpelt"]["step_s"] / train["full"]["step_s"], 0.60),
        "hyperpelt step / peft-lora step":
            (train["hyperpelt"]["step_s"] / train["peft-lora"]["step_s"], 1.15),
        "hyperpelt peak memory / full":
            (train["hyperpelt"]["peak_mem_gb"] / train["full"]["peak_mem_gb"], 0.70),
        "cached generation / static": (gen["cached_s"] / gen["static_s"], 1.05),
        "mixed-task step / one-task step":
            (results["mixed_batch_step_s"] / results["single_batch_step_s"], 1.15),
        "vl-hyperpelt step / hyperpelt step": (train["vl-hyperpelt"]["step_s"] / train["hyperpelt"]["step_s"],
                                               1.25),
        **dtype_ratios(results),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.report:
        command = "python -m bench.train_step " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(markdown(results, command.strip()))
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()
