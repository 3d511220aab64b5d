"""Serving load benchmark: ``hyperpelt serve`` under load, its batching modes against each other, against
a peft-LoRA server behind the same batcher, and against the same engine driven without HTTP.

    python -m bench.serve [--models minilm,t5] [--rounds 3] [--threads N] [--quick]
                          [--report reports/bench_serve.md] [--json PATH]

Takes about 75 minutes on 2 quiet cores (``--quick``: one short round, a few minutes per model).

Setup (once, cached under runs/bench_serve/): a HyperPELT run of 8 tasks (rte, mrpc, stsb, cola, sst2,
qnli, cb, boolq) for each model, made by ``hyperpelt train`` with one training step, since throughput does
not depend on training: MiniLM-L6 (pretrained) with configs/demo.yaml's method, heads and input length,
and T5-small with random weights (none pretrained are available offline), the paper's HyperPELT sizes and
answers of at most 6 tokens (the longest label of the 8 tasks). The data pack has no QNLI training file:
the runs' data folder (runs/bench_serve/data, links to the real files) lends QNLI's dev file as its
training file, which only feeds the one training step. The served requests are the tasks' original
validation (dev) texts, one instance per request.

Servers, each a process of its own (``--threads`` torch threads, by default one per core as torch itself
takes; the load client shares the cores): ``hyperpelt serve RUN --batching off | by-task | mixed``, and
``python -m bench.serve_lora RUN --batching mixed`` (bench/serve_lora.py: the run's frozen backbone with 8
peft LoRA adapters, r = 8, one per task, a mixed batch in one forward with peft's ``adapter_names``).

The client is a process of its own (aiohttp, 127.0.0.1 only), bounded in requests and seconds:
 * closed loop: 32 concurrent senders, each sending its next request when its last is answered;
   throughput after a warm-up (the senders' rates summed, each its requests over the time from its first
   send to its last: a count of answers in a fixed window moves in steps of a whole batch, whose answers
   land together), p50 and p99 latency, for each task popularity: uniform over the 8 tasks,
   Zipf (s = 1, in the order above), and one task (the task whose inputs' mean length is nearest the
   uniform mix's, so that the comparison is of mixing, not of text length);
 * open loop: Poisson arrivals at 0.7x the ``off`` server's uniform closed-loop throughput of the same
   round, latency from each request's scheduled time (so a late client does not hide queueing); 60 s,
   so that T5's ~4 requests/s still give ~240 latencies and the p99 is not merely the slowest one;
 * a lone request (concurrency 1): p50 latency, over 30 s or 300 requests;
 * the lone request paired (same bounds): the off server stays alive, idle, until the mixed server has been
   measured; then each drawn request goes to one of the two and then to the other, one request at a time,
   the first of the two alternating, each sent 10 ms (``--lone-gap-ms``) after the last answer. Both
   answer the same texts at nearly the same moments, so the difference of their p50s is the mixed
   server's wait, not a drift of the machine's speed between phases minutes apart or a different draw of
   texts (the lone-request target reads this phase). The gap lets each request find the machine idle:
   without it, the off server would start its forward while the other server's threads still spin after
   theirs (the mixed server's 5 ms wait outlasts that), and the difference would read about 2 ms too small.
Overload (``--overload-s``, default 60; in the last round, after all the mixed server's other phases, the
off server stopped): Poisson arrivals at 10x (``--overload-factor``) the mixed server's closed-loop uniform
throughput of that round, at most 512 (``--overload-in-flight``) outstanding (arrivals past that are
skipped and counted, so the client stays bounded), /health polled every 0.5 s on a new connection each
time. Recorded: every outcome's count (200, 429, 503, 504, others, no answer), the answered requests' p50
and p99 latency (from each send), the longest wait of an accepted (not 429/503) request, /health's worst
latency, the server's resident set once idle before and after. Its own section of the report gives the
issue's targets: no 5xx but 503/504, no crash, /health within 1 s throughout, RSS after <= 1.3x before,
every accepted request answered or 504 within the server's request timeout.
In-process: the mixed engine in a process of its own, driven directly by hyperpelt's ``Batcher`` (32
requests outstanding, each encoded by ``Engine.prepare`` as the HTTP layer does), no HTTP and no client.
Memory: each server's resident set (VmRSS) after its load, read once it has been idle for 2 s (its
batcher gives free memory back after 1 s idle), against a process that loads the run's frozen backbone
(and tokenizer) the same way and runs it on the workload's texts in padded batches, then gives free
memory back too (so both have run the same library code: its pages count in the resident set).

Every round starts every server afresh, in the same order (off first: its throughput sets the open-loop
rate; it stays alive, idle, until the mixed server has been measured, for the paired lone requests);
``--rounds`` rounds interleave them, every figure is the median over rounds and every ratio the median of
the rounds' ratios (so the machine's drift between rounds does not decide a ratio).

``--dtype float32,bfloat16``: after the mixed server, a mixed server in each other dtype
(``hyperpelt serve RUN --batching mixed --dtype bfloat16``: the run's frozen host in that dtype, under
autocast), its closed loops only; the report gives its throughput against the float32 mixed server's.
"""

# This module is the command line; the parts are in bench/serving/: workload (instances, draws, phases),
# runs (the cached runs and their data folder), client (the load client), workers (the backbone probe and
# the in-process driver), servers (server processes, a round's measuring), stats, targets and report.

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.measures import parse_dtypes
from bench.serving.report import describe, machine, markdown
from bench.serving.runs import MODELS, ROOT, data_folder, make_run
from bench.serving.servers import SERVE_DTYPES, SERVERS, measure_round
from bench.serving.stats import medians
from bench.serving.targets import checks
from bench.serving.workers import run_worker
from bench.serving.workload import POPULARITIES, add_load_options, make_workload
from bench.worker_result import write_report


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,t5", help="comma-separated: minilm, t5 (default both)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated, off first (default all)")
    parser.add_argument("--popularities", default=",".join(POPULARITIES))
    parser.add_argument("--rounds", type=int, default=3)
    add_load_options(parser, seconds=20.0, requests=4000, warmup_s=2.0)
    parser.add_argument("--open-seconds", type=float, default=60.0, help="length of each open loop")
    parser.add_argument("--lone-seconds", type=float, default=30.0)
    parser.add_argument("--lone-requests", type=int, default=300)
    parser.add_argument("--lone-gap-ms", type=float, default=10.0,
                        help="idle time before each paired lone request")
    parser.add_argument("--load", type=float, default=0.7, help="open-loop rate, times the off capacity")
    parser.add_argument("--overload-s", type=float, default=60.0,
                        help="length of the overload phase (last round, mixed server); 0 skips it")
    parser.add_argument("--overload-factor", type=float, default=10.0,
                        help="overload rate, times the mixed server's closed-loop uniform throughput")
    parser.add_argument("--overload-in-flight", type=int, default=512,
                        help="most overload requests outstanding; arrivals past it are skipped")
    parser.add_argument("--one-task", default=None,
                        help="the one task of that popularity (default: see above)")
    parser.add_argument("--dtype", default="float32",
                        help="comma list: float32 (always), bfloat16, float16; each other dtype adds a mixed "
                             "server in it (hyperpelt serve --dtype), closed loops only")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round of 5 s loops (3 s lone, 1 s warm-up, 5 s overload)")
    parser.add_argument("--cache", default=str(ROOT / "runs" / "bench_serve"), help="runs and logs")
    parser.add_argument("--report", default=str(ROOT / "reports" / "bench_serve.md"))
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    # worker processes
    parser.add_argument("--worker", choices=("client", "backbone", "inprocess"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--phases", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.open_seconds, args.lone_seconds, args.warmup_s = 1, 5.0, 5.0, 3.0, 1.0
        args.overload_s = min(args.overload_s, 5.0)
    args.models, args.servers = args.models.split(","), args.servers.split(",")
    args.popularities = args.popularities.split(",")
    unknown = ({*args.models} - {*MODELS}) | ({*args.servers} - {*SERVERS}) | (
        {*args.popularities} - {*POPULARITIES})
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if args.overload_s < 0 or args.overload_factor <= 0 or args.overload_in_flight < 1:
        parser.error("--overload-s must be >= 0, --overload-factor > 0 and --overload-in-flight >= 1")
    if "uniform" not in args.popularities:
        parser.error("--popularities needs uniform (every ratio but one reads it)")
    try:
        args.dtype = parse_dtypes(args.dtype, SERVE_DTYPES)
    except ValueError as error:
        parser.error(str(error))
    args.cache = Path(args.cache)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    load_at_start = os.getloadavg()[0]
    from hyperpelt.provenance import code_version  # not at the top: the client process needs no torch

    code = code_version()  # what the servers run, named before they start
    args.cache.mkdir(parents=True, exist_ok=True)
    args.data = data_folder(args.cache)
    os.environ["HYPERPELT_DATA_DIR"] = str(args.data)  # the T5 tokenizer is read from the data folder
    runs = {model: make_run(model, args) for model in args.models}
    workloads = {model: make_workload(run, args) for model, run in runs.items()}
    rounds = {model: [] for model in args.models}
    for round_ in range(args.rounds):
        for model in args.models:
            rounds[model].append(measure_round(model, runs[model], workloads[model], args, round_))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = {"machine": machine(load_at_start), "code": code, "settings": settings, "models": {},
               "checks": []}
    for model in args.models:
        found = checks(model, rounds[model], args)
        results["checks"] += [vars(c) for c in found]
        workload = json.loads(workloads[model].read_text())
        workload.pop("instances")
        results["models"][model] = {"rounds": rounds[model], "medians": medians(rounds[model]),
                                    "workload": workload, "describe": describe(model)}
    write_report("bench.serve", argv, results, markdown, args.report, args.json)


if __name__ == "__main__":
    main()
