"""Many-task serving benchmark: one MiniLM-L6 HyperPELT run serving 8 to 10,000 tasks from its task store
within a 64 MiB weight cache, against peft LoRA with as many adapters as fit in the same 64 MiB.

    python -m bench.many_tasks [--counts 8,100,1000,10000] [--weight-cache-mb 64] [--rounds 2]
                               [--quick] [--report reports/bench_many_tasks.md]
                               [--png reports/bench_many_tasks.png] [--json PATH]

Takes about 15 minutes a round on 2 quiet cores (``--quick``: one short round of 8 and 100 tasks and the
LoRA server, about 3 minutes).

The run: bench/serving/runs.py's "minilm" run (configs/demo.yaml's model, method and heads; 8 tasks: rte,
mrpc, stsb, cola, sst2, qnli, cb, boolq; one training step, since throughput does not depend on training),
cached under runs/bench_many_tasks/ with its data folder (see bench/serve.py).

The tasks: for each N of ``--counts``, a task store (``hyperpelt serve --task-store``) holding the run's 8
tasks and N - 8 copies of them in turn (task i made from task i mod 8, named "SOURCE-i", declared as its
source, with its source's head), each copy's task embedding its source's trained one plus Gaussian noise
of ``--noise`` times that embedding's root mean square, all ready. Every row is written in the one
transaction that creates the store (``TaskStore.open``'s first rows), so 10,000 rows take a second.

The load: ``hyperpelt serve RUN --batching mixed --max-batch-size 16 --max-wait-ms 5 --task-store STORE
--weight-cache-mb 64``, a process of its own, and bench/serve.py's load client (aiohttp, 127.0.0.1): a
closed loop of 32 concurrent senders, Zipf popularity (s = ``--zipf-s``, 1.1) over the N tasks in the
order above (the run's own tasks the most asked), each request one real validation (dev) instance of the
task's source. Recorded: throughput after the warm-up (as bench/serve.py counts it), p50 and p99
latency, the server's resident set (VmRSS) once idle after its start-up warm-up, and once idle after the
load, its peak (VmHWM), and from /metrics the weight cache's hits, misses, evictions, cached tasks and
bytes, hypernetwork calls and their time, and the distinct tasks per batch.

The LoRA server: ``python -m bench.serve_lora RUN --batching mixed --adapters A`` (bench/serve_lora.py:
the run's frozen backbone, one peft LoRA adapter of r = 8 on query and value per task, the tasks the
same copies as above), measured the same way with Zipf over its A tasks, for each A of
``--lora-counts``: "fit" is as many adapters as fit in the weight cache's budget, floor(64 MiB / one
adapter's bytes), and 8 its count at the run's own tasks.

Every round starts every server afresh, in the same order; ``--rounds`` rounds interleave them; every
figure is the median over rounds and every ratio the median of the rounds' ratios. The targets (issue 33):
throughput at 10,000 tasks >= 0.8x that at 8; peak RSS at 10,000 tasks - at 8 <= 100 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench.serving.copies import build_store, many_workload, mean_length
from bench.serving.many_report import markdown, plot
from bench.serving.runs import ROOT, data_folder, log, make_run
from bench.serving.servers import IDLE_S, Server, spawn_worker
from bench.serving.workers import rss_kb
from bench.serving.workload import add_load_options, closed_phase, make_workload, round_seed
from bench.worker_result import write_report

CACHE_METRICS = ("hyperpelt_weight_cache_hits_total", "hyperpelt_weight_cache_misses_total",
                 "hyperpelt_weight_cache_evictions_total", "hyperpelt_weight_cache_tasks",
                 "hyperpelt_weight_cache_bytes", "hyperpelt_weight_generation_seconds_count",
                 "hyperpelt_weight_generation_seconds_sum", "hyperpelt_batch_tasks_sum",
                 "hyperpelt_batch_tasks_count")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="8,100,1000,10000", help="comma-separated numbers of tasks")
    parser.add_argument("--lora-counts", default="8,fit",
                        help="LoRA adapters, comma-separated; fit: as many as the cache budget holds")
    parser.add_argument("--weight-cache-mb", type=float, default=64.0)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--noise", type=float, default=0.05,
                        help="the copies' noise, times their source embedding's root mean square")
    parser.add_argument("--rounds", type=int, default=2)
    add_load_options(parser, seconds=30.0, requests=100_000, warmup_s=5.0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 8 and 100 tasks, LoRA at its fitting count, 1 round of 6 s loops")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "bench_many_tasks"), help="runs, stores, logs")
    parser.add_argument("--report", default=str(ROOT / "reports" / "bench_many_tasks.md"))
    parser.add_argument("--png", default=str(ROOT / "reports" / "bench_many_tasks.png"))
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.counts, args.lora_counts, args.rounds, args.seconds, args.warmup_s = "8,100", "fit", 1, 6.0, 2.0
    try:
        args.counts = sorted({int(c) for c in args.counts.split(",")})
        args.lora_counts = [c if c == "fit" else int(c) for c in args.lora_counts.split(",") if c]
    except ValueError:
        parser.error("--counts takes numbers, --lora-counts numbers or 'fit'")
    if args.counts[0] < 8 or any(c != "fit" and c < 1 for c in args.lora_counts):
        parser.error("--counts start at 8 (the run's own tasks); --lora-counts are >= 1")
    args.one_task = None  # make_workload's one-task popularity, unused here
    args.cache = Path(args.cache)
    return args


def cache_figures(url: str) -> dict:
    """The weight cache's counts and the batches' distinct tasks, from the server's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return {name: samples.get(name) for name in CACHE_METRICS}


def measure(served: Server, workload: Path, args, seed: int) -> dict:
    """A started server's resident set once warmed up and idle, its Zipf closed loop, its cache figures,
    and its resident set once idle after the load and at its peak; the server is stopped after."""
    try:
        served.ready()
        time.sleep(IDLE_S)
        idle = rss_kb(served.process.pid)
        spec = closed_phase("zipf", {"kind": "zipf", "s": args.zipf_s}, args, seed)
        (result,) = spawn_worker(args, "client", url=served.url, workload=workload,
                                 phases=json.dumps([spec]))["phases"]
        cache = cache_figures(served.url)
        time.sleep(IDLE_S)  # the batcher gives free memory back after a second idle
        after = rss_kb(served.process.pid)
    finally:
        served.stop()
    return {**result, "cache": cache, "rss_idle_kb": idle["rss_kb"], "rss_after_kb": after["rss_kb"],
            "hwm_kb": after["hwm_kb"]}


def lora_fit(run_dir: Path, budget_mb: float) -> tuple[int, int]:
    """How many peft LoRA adapters (r = 8) fit in ``budget_mb`` MiB, and one adapter's bytes."""
    from bench.serve_lora import LoraModel

    one = LoraModel.from_run(run_dir).adapter_bytes()
    return int(budget_mb * 2**20 // one), one


def prepare(args) -> dict:
    """The run, its base workload, and for each count its task store and workload (under ``--cache``)."""
    from hyperpelt.inference import load_run

    args.cache.mkdir(parents=True, exist_ok=True)
    args.data = data_folder(args.cache)
    os.environ["HYPERPELT_DATA_DIR"] = str(args.data)
    run_dir = make_run("minilm", args)
    base = make_workload(run_dir, args)
    model = load_run(run_dir)
    lora_max, adapter_bytes = lora_fit(run_dir, args.weight_cache_mb)
    lora = sorted({lora_max if c == "fit" else c for c in args.lora_counts})
    folder, stores, workloads = args.cache / "many", {}, {}
    for n in sorted({*args.counts, *lora}):
        log(f"  {n} tasks: store and workload ...")
        if n in args.counts:
            stores[n] = build_store(folder / f"tasks-{n}.sqlite", run_dir, model, n, args.noise, args.seed)
        workloads[n] = many_workload(base, n, folder / f"workload-{n}.json")
    return {"run": run_dir, "stores": stores, "workloads": workloads, "lora": lora,
            "adapter_bytes": adapter_bytes, "lora_max": lora_max}


def measure_round(setup: dict, args, round_: int) -> dict:
    """Every count's HyperPELT server, then every LoRA count's server, each started afresh."""
    out = {"hyperpelt": {}, "lora": {}}
    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    seed = round_seed(args, round_)
    for n in args.counts:
        log(f"  round {round_ + 1}: HyperPELT, {n} tasks ...")
        extra = ("--task-store", str(setup["stores"][n]), "--weight-cache-mb", str(args.weight_cache_mb))
        served = Server("mixed", setup["run"], args, logs / f"hyperpelt-{n}-round{round_ + 1}.log", extra)
        out["hyperpelt"][str(n)] = measure(served, setup["workloads"][n], args, seed)
    for n in setup["lora"]:
        log(f"  round {round_ + 1}: peft LoRA, {n} adapters ...")
        served = Server("lora", setup["run"], args, logs / f"lora-{n}-round{round_ + 1}.log",
                        ("--adapters", str(n)))
        out["lora"][str(n)] = measure(served, setup["workloads"][n], args, seed)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    load_at_start = os.getloadavg()[0]
    from bench.serving.report import machine
    from hyperpelt.provenance import code_version

    code = code_version()
    setup = prepare(args)
    rounds = [measure_round(setup, args, r) for r in range(args.rounds)]
    lengths = {str(n): mean_length(json.loads(path.read_text()), args.zipf_s)
               for n, path in setup["workloads"].items()}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = {"machine": machine(load_at_start), "code": code, "settings": settings, "rounds": rounds,
               "lora": {"adapter_bytes": setup["adapter_bytes"], "fit": setup["lora_max"]},
               "mean_length": lengths}
    plot(results, args.png)
    write_report("bench.many_tasks", argv, results, markdown, args.report, args.json)


if __name__ == "__main__":
    main()
