"""Training-step and generation benchmark on a T5-base-sized model, against full fine-tuning and peft.

    python -m bench.train_step [--json] [--steps 3] [--rounds 3] [--threads 2] [--out reports/bench_cpu.json]
                               [--report reports/bench_cpu.md]

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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from bench.worker_result import print_result, run_worker_process
from hyperpelt.provenance import bf16_units, code_version, cpu_model, describe_bf16

TRAIN_METHODS = ("full", "peft-lora", "peft-prefix", "adapters-shared", "hyperformer++", "hyperpelt",
                 "vl-hyperpelt")
GRID, FEATURE_DIM = 49, 2048  # image features of the vl-hyperpelt step
GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _batch(args, torch, task_ids, images: bool = False):
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 32000, (args.batch, args.input_len), generator=gen)
    labels = torch.randint(5, 32000, (args.batch, args.target_len), generator=gen)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if images:  # the same tokens as the text-only batch, and an image of its own for every example
        batch["image_features"] = torch.rand(args.batch, GRID, FEATURE_DIM, generator=gen)
    return batch if task_ids is None else {"task_ids": torch.tensor(task_ids), **batch}


def _tuned(model_name, method):
    from hyperpelt.config import ModelConfig
    from hyperpelt.model import TunedModel
    from hyperpelt.tasks import get_task

    return TunedModel(ModelConfig(name=model_name, pretrained=False), {"name": method},
                      [get_task(t) for t in GLUE])


def _peft(model_name, method):
    from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    from hyperpelt.backbones.t5 import random_t5

    host = random_t5(model_name)
    if method == "peft-lora":
        config = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=8, lora_alpha=16, target_modules=["q", "v"])
    else:
        config = PrefixTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=49)
    return get_peft_model(host, config)


def _timed_steps(step, steps: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def worker_train(args, method: str, mixed: bool = False) -> dict:
    import torch

    if method.startswith("peft-"):
        model = _peft(args.model, method)
        backbone = sum(p.numel() for n, p in model.named_parameters()
                       if "lora_" not in n and "prompt_encoder" not in n)
        batch = _batch(args, torch, None)
    else:
        model = _tuned(args.model, method)
        backbone = model.backbone_params
        task_ids = list(range(args.batch)) if mixed else [0] * args.batch
        batch = _batch(args, torch, [t % len(GLUE) for t in task_ids], images=model.method.reads_images)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = _timed_steps(step, args.steps)
    trainable = sum(p.numel() for p in params)
    return {"step_s": statistics.median(times), "peak_mem_gb": _peak_gb(),
            "trainable_pct": 100 * trainable / backbone}


def worker_generate(args) -> dict:
    import torch

    from bench.research_code import regenerating_every_forward

    model = _tuned(args.model, "hyperpelt").eval()
    batch = _batch(args, torch, None)
    task_ids = torch.zeros(args.batch, dtype=torch.long)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                  max_new_tokens=args.target_len, min_new_tokens=args.target_len)
    static = model.export_static(GLUE[0])

    def cached():
        model.generate(task_ids, **kwargs)

    def uncached():
        with regenerating_every_forward(model, task_ids):
            model.host.generate(**kwargs)

    def exported():
        static.generate(task_ids, **kwargs)

    def frozen():
        with model.disabled():
            model.host.generate(**kwargs)

    # Interleaved (cached, uncached, static, frozen, cached, ...): cached and static run the same kernels, so
    # only interleaving keeps the machine's drift out of their ratio.
    variants = {"cached_s": cached, "uncached_s": uncached, "static_s": exported, "frozen_s": frozen}
    times = {name: [] for name in variants}
    with torch.no_grad():
        for fn in variants.values():
            fn()  # warm-up
        for _ in range(args.steps):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def run_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.worker == "generate":
        result = worker_generate(args)
    elif args.worker == "mixed":
        result = worker_train(args, "hyperpelt", mixed=True)
    else:
        result = worker_train(args, args.worker)
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
    if len(results.get("rounds", [])) > 1:
        rows += ["", "Step time (s) in each round:", "",
                 "| method | " + " | ".join(f"round {i + 1}" for i in range(len(results["rounds"]))) + " |"]
        rows.append("|---|" + "---:|" * len(results["rounds"]))
        for worker in (*results["train"], "mixed"):
            rows.append(f"| {worker} | "
                        + " | ".join(f"{r[worker]['step_s']:.3f}" for r in results["rounds"]) + " |")
    return "\n".join(rows)


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
        "with the median over rounds kept; peak memory is the largest maximum resident set of its processes. "
        "\"trained\" is all trained parameters (8 tasks) as a percentage of the backbone.",
        "",
        table(results),
        "",
        "Targets met: all." if not missed else f"Targets not met: {', '.join(missed)}.",
        "",
        NOTES,
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
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
    parser.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)

    keys = ("model", "steps", "rounds", "threads", "batch", "input_len", "target_len")
    results = {"config": {k: getattr(args, k) for k in keys}}
    workers = (*TRAIN_METHODS, "generate", "mixed")
    rounds = [{w: spawn(args, w) for w in workers} for _ in range(args.rounds)]
    measured = {w: median_over_rounds([r[w] for r in rounds]) for w in workers}
    results["train"] = {m: measured[m] for m in TRAIN_METHODS}
    results["generate"] = measured["generate"]
    results["mixed_batch_step_s"] = measured["mixed"]["step_s"]
    results["rounds"] = rounds  # every round's own figures, to show the spread behind the medians
    results["single_batch_step_s"] = results["train"]["hyperpelt"]["step_s"]
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
