"""One command on one GPU (under 8 minutes on an H100): bf16 on a T5-base-sized model with random weights
(nothing downloads), written to reports/bench_gpu.md.

    python -m bench.gpu_check [--device cuda] [--dtype bfloat16] [--report reports/bench_gpu.md]
                              [--json PATH] [--smoke]

 * Training step of HyperPELT, full fine-tuning and peft LoRA: median step time and peak memory during
   the steps (``torch.cuda.max_memory_allocated``; on the CPU the resident set's peak), each method in a
   process of its own; the frozen backbone in the dtype (model.dtype) under Accelerate's mixed precision
   of it (train.precision), as bench/train_step.py measures it (bench/measures.py).
 * HyperPELT generation: with its cached weight table, exported into static tensors, regenerated at every
   decoding step (the research code's way), and the frozen backbone alone (bench/measures.py).
 * Serving: HyperPELT's engine (8 tasks, answers of at most 6 tokens) driven by hyperpelt's batcher with
   no HTTP (bench/serving/workers.py's ``drive``), closed loop, uniform popularity, made-up texts:
   batching "mixed" against "off" (one instance at a time).

``--smoke`` cuts the shapes down to a t5-tiny, one or two steps and a few requests: the test suite runs it
on the CPU (``--device cpu --smoke``) so that the command cannot rot. Without it, on the CPU, it runs the
full shapes (slowly).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from bench.measures import PRECISION, measure_generate, measure_train, tuned_model
from bench.worker_result import print_result, run_worker_process, write_report

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("hyperpelt", "full", "peft-lora")
SHAPES = {  # training and generation shapes, and the serving loop's
    False: dict(model="t5-base", batch=32, input_len=128, target_len=8, steps=10, serve_words=(8, 40),
                concurrency=32, requests=100_000, seconds=15.0, warmup_s=3.0, per_task=64),
    True: dict(model="t5-tiny", batch=2, input_len=16, target_len=4, steps=2, serve_words=(3, 8),
               concurrency=4, requests=16, seconds=60.0, warmup_s=0.0, per_task=4),
}
MAX_BATCH_SIZE, MAX_WAIT_MS, ANSWER_TOKENS = 16, 5.0, 6  # hyperpelt serve's defaults; bench/serve.py's T5
WORDS = ("the a man woman child dog plays reads a film book song fine poor good bad market rose fell "
         "today city river question answer because never always quickly slowly new old").split()


def shapes(smoke: bool) -> SimpleNamespace:
    return SimpleNamespace(**SHAPES[smoke])


def made_up_instances(tasks, words: tuple[int, int], per_task: int, seed: int = 0) -> list[list[dict]]:
    """``per_task`` requests' instances for each task: every input field a text of made-up words."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))

    return [[{"task": task.name, **{key: text() for _, key in task.input_fields}} for _ in range(per_task)]
            for task in tasks]


def measure_serving(size: SimpleNamespace, device: str, dtype: str) -> dict:
    """Requests per second and latency of the engine under the batcher, "mixed" and "off"."""
    import torch

    from bench.serving.workers import drive
    from bench.serving.workload import popularity_weights
    from hyperpelt.serving.engine import Engine

    torch.manual_seed(0)
    model = tuned_model(size.model, "hyperpelt", dtype, max_input_length=size.input_len,
                        max_target_length=ANSWER_TOKENS)
    engine = Engine(model.eval().to(device))
    instances = made_up_instances(model.tasks, size.serve_words, size.per_task)
    out = {}
    for batching in ("mixed", "off"):
        spec = {"name": batching, "weights": popularity_weights("uniform", len(instances)), "seed": 0,
                "warmup_s": size.warmup_s, "concurrency": size.concurrency, "requests": size.requests,
                "seconds": size.seconds}
        out[batching] = drive(engine, instances, spec, MAX_BATCH_SIZE, MAX_WAIT_MS, batching)
    return out


def spawn_train(args, method: str, dtype: str) -> dict:
    """One method's training step measured in a process of its own (its peak memory is its alone)."""
    command = [sys.executable, "-m", "bench.gpu_check", "--worker", method, "--dtype", dtype,
               "--device", args.device, *(["--smoke"] if args.smoke else [])]
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"  training step: {method} in {dtype} ...", file=sys.stderr, flush=True)
    return run_worker_process(command, f"{method} ({dtype})", env=env, cwd=ROOT)


def device_name(device: str) -> str:
    import torch

    from hyperpelt.provenance import bf16_units, cpu_model, describe_bf16

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} ({device}, CUDA {torch.version.cuda})"
    return f"{device}: {cpu_model()}, {os.cpu_count()} CPUs, {describe_bf16(bf16_units())}"


def markdown(results: dict, command: str) -> str:
    s = results["shapes"]
    lines = [
        "# GPU check (one run)", "",
        f"Command: `{command}`", "",
        f"Device: {results['device']}; torch {results['torch']}; code {results['code']}; {results['date']}; "
        f"took {results['wall_s']:.0f} s.", "",
        f"{s['model']}-sized T5 with random weights (speed does not depend on their values), 8 tasks, "
        f"batch {s['batch']}, input {s['input_len']} tokens, target {s['target_len']} tokens; median of "
        f"{s['steps']} timed steps after one warm-up. A dtype other than float32: the frozen backbone's "
        "weights stored in it (model.dtype) under Accelerate's mixed precision of it (train.precision); "
        "every trained weight stays float32 (all of them under full fine-tuning).", "",
        "## Training step", "",
        "Each method in a process of its own; peak memory: torch.cuda.max_memory_allocated during the steps "
        "(on a CPU: the resident set's peak during the steps, libraries included).", "",
        "| method | dtype | step (ms) | peak memory (GiB) | trained (% of backbone) |",
        "|---|---|---:|---:|---:|",
    ]
    for dtype, methods in results["train"].items():
        for method, r in methods.items():
            lines.append(f"| {method} | {dtype} | {1000 * r['step_s']:.1f} | {r['peak_mem_gb']:.3f} | "
                         f"{r['trainable_pct']:.3f} |")
    lines += ["", "## Generation (HyperPELT)", "",
              f"A batch of {s['batch']} of one task, {s['target_len']} new tokens, greedy.", "",
              "| path | dtype | ms |", "|---|---|---:|"]
    labels = {"cached_s": "cached weight table", "static_s": "exported static weights",
              "uncached_s": "regenerated every decoding step", "frozen_s": "frozen backbone alone"}
    for dtype, g in results["generate"].items():
        lines += [f"| {label} | {dtype} | {1000 * g[key]:.1f} |" for key, label in labels.items()]
        lines.append(f"| cached / static | {dtype} | ratio {g['cached_s'] / g['static_s']:.3f} |")
    lines += ["", "## Serving (in-process)", "",
              f"HyperPELT's engine (answers of at most {ANSWER_TOKENS} tokens) behind hyperpelt's batcher, "
              f"no HTTP: closed loop of {s['concurrency']} requests outstanding, uniform over the 8 tasks, "
              f"made-up texts of {s['serve_words'][0]}-{s['serve_words'][1]} words per field, "
              f"--max-batch-size {MAX_BATCH_SIZE}, --max-wait-ms {MAX_WAIT_MS}.", "",
              "| batching | dtype | throughput (requests/s) | p50 (ms) | p99 (ms) | errors |",
              "|---|---|---:|---:|---:|---:|"]
    for dtype, served in results["serve"].items():
        for batching, r in served.items():
            label = "off (one at a time)" if batching == "off" else batching
            lines.append(f"| {label} | {dtype} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['errors']} |")
        ratio = served["mixed"]["throughput"] / served["off"]["throughput"]
        lines.append(f"| mixed / off | {dtype} | ratio {ratio:.2f} | | | |")
    return "\n".join([*lines, ""])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--dtype", default="bfloat16",
                        help=f"comma list of {', '.join(('float32', *PRECISION))} (default bfloat16)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps and requests")
    parser.add_argument("--report", default=str(ROOT / "reports" / "bench_gpu.md"))
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = list(dict.fromkeys(d.strip() for d in args.dtype.split(",") if d.strip()))
    if not args.dtype or not {*args.dtype} <= {"float32", *PRECISION}:
        parser.error(f"--dtype: a comma list of {', '.join(('float32', *PRECISION))}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device {args.device}: cuda, cuda:N or cpu")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    size = shapes(args.smoke)
    import torch

    torch.manual_seed(0)
    if args.worker:
        return print_result(measure_train(size, args.worker, device=args.device, dtype=args.dtype[0]))

    from hyperpelt.backbones.t5 import local_t5_tokenizer
    from hyperpelt.provenance import code_version

    if local_t5_tokenizer() is None:  # no data folder here: the fixtures' T5 tokenizer (serving encodes)
        os.environ["HYPERPELT_DATA_DIR"] = str(ROOT / "tests" / "fixtures" / "data")
    start = time.perf_counter()
    results = {"device": device_name(args.device), "torch": torch.__version__, "code": code_version(),
               "date": time.strftime("%Y-%m-%d"), "shapes": vars(size)}
    results["train"] = {d: {m: spawn_train(args, m, d) for m in METHODS} for d in args.dtype}
    results["generate"], results["serve"] = {}, {}
    for dtype in args.dtype:
        print(f"  generation in {dtype} ...", file=sys.stderr, flush=True)
        results["generate"][dtype] = measure_generate(size, args.device, dtype)
        print(f"  serving in {dtype} ...", file=sys.stderr, flush=True)
        results["serve"][dtype] = measure_serving(size, args.device, dtype)
    results["wall_s"] = time.perf_counter() - start
    write_report("bench.gpu_check", argv, results, markdown, args.report, args.json)
    return results


if __name__ == "__main__":
    main()
