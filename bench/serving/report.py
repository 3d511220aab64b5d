"""The markdown report: the targets' table, each model's figures, and the machine they were measured on."""

from __future__ import annotations

import argparse
import math
import os
import time

from bench.serving.overload import overload_checks
from bench.serving.runs import run_recipe
from bench.serving.servers import HALF, SERVERS, shown_command
from bench.serving.stats import figure, median_or_nan, paired
from bench.serving.targets import Check, ratio
from bench.serving.workload import POPULARITIES


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def model_tables(model: str, data: dict, args) -> list[str]:
    m, workload = data["medians"], data["workload"]
    one = workload["one_task"]
    lines = [f"## {model}", "", f"Run: `runs/bench_serve/{model}` ({data['describe']}). One-task popularity: "
             f"{one} (mean input {workload['mean_length'][one]:.1f} tokens; the uniform mix's "
             f"{workload['uniform_mean_length']:.1f}).", ""]
    pops = [p for p in POPULARITIES if f"closed-{p}" in next(iter(m.values()))]
    served = [s for s in SERVERS if s in m]
    lines += [f"Closed loop, concurrency {args.concurrency}: throughput (requests/s), p50 / p99 latency "
              "(ms).",
              "",
              "| server | " + " | ".join(pops) + " |", "|---|" + "---:|" * len(pops)]
    for server in (*served, "inprocess"):
        cells = []
        for p in pops:
            name = "inprocess" if server == "inprocess" else f"closed-{p}"
            if server == "inprocess" and p != "uniform":
                cells.append("")
                continue
            f = m[server][name]
            cells.append(f"{fmt(f['throughput'])} ({fmt(f['p50_ms'])} / {fmt(f['p99_ms'])})")
        label = "in-process (mixed, no HTTP)" if server == "inprocess" else server
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Open loop (Poisson, uniform popularity) at "
              f"{args.load}x the off server's throughput, and a lone request (concurrency 1); latencies "
              "in ms.",
              "", "| server | rate (req/s) | answered (req/s) | p50 | p99 | errors | lone p50 | lone p99 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for server in served:
        o, lone = m[server].get("open", {}), m[server]["lone"]
        lines.append(f"| {server} | {fmt(o.get('rate', math.nan))} | {fmt(o.get('throughput', math.nan))} | "
                     f"{fmt(o.get('p50_ms', math.nan))} | {fmt(o.get('p99_ms', math.nan))} | "
                     f"{fmt(o.get('errors', math.nan), 0)} | {fmt(lone['p50_ms'])} | {fmt(lone['p99_ms'])} |")
    rounds = data["rounds"]
    lines += half_table(m, rounds, pops, args)
    if any("paired" in r for r in rounds):
        lines += ["", "Lone requests, off and mixed alive side by side, the same requests to each in turn, "
                  f"each sent {fmt(args.lone_gap_ms, 0)} ms after the last answer: p50 (ms) in each round.",
                  "",
                  "| round | requests each | off | mixed | mixed - off |", "|---|---:|---:|---:|---:|"]
        for i, r in enumerate(rounds):
            off, mixed = paired(r, "off"), paired(r, "mixed")
            lines.append(f"| {i + 1} | {fmt(paired(r, 'off', 'measured'), 0)} | {fmt(off)} | {fmt(mixed)} | "
                         f"{fmt(mixed - off)} |")
    lines += ["", "Memory (MiB): resident set after the load (once idle: free memory given back), its "
              "private (anonymous) part, and the peak during the load. The rest of the resident set is file "
              "pages, mostly library code, shared with other processes.", "",
              "| process | RSS | private | peak |", "|---|---:|---:|---:|"]
    for server in (*served, "inprocess", "backbone"):
        mem = m[server]["memory"]
        label = {"inprocess": "in-process (mixed)", "backbone": "frozen backbone alone"}.get(server, server)
        private = mem.get("anon_kb", math.nan) / 1024
        lines.append(f"| {label} | {fmt(mem['rss_kb'] / 1024, 0)} | {fmt(private, 0)} | "
                     f"{fmt(mem['hwm_kb'] / 1024, 0)} |")
    if len(rounds) > 1:
        lines += ["", "Closed-loop uniform throughput (requests/s) in each round:", "",
                  "| server | " + " | ".join(f"round {i + 1}" for i in range(len(rounds))) + " |",
                  "|---|" + "---:|" * len(rounds)]
        for server in (*served, "inprocess"):
            name = "inprocess" if server == "inprocess" else "closed-uniform"
            lines.append(f"| {server} | " + " | ".join(fmt(figure(r, server, name, "throughput"))
                                                       for r in rounds) + " |")
    return [*lines, ""]


def half_table(m: dict, rounds: list[dict], pops: list[str], args) -> list[str]:
    """The mixed server in each dtype of ``--dtype``: closed-loop figures, its RSS, and its uniform
    throughput against the float32 mixed server's (the median of the rounds' ratios)."""
    dtypes = getattr(args, "dtype", ["float32"])
    if len(dtypes) < 2 or "mixed" not in m:
        return []
    lines = ["", "The mixed server in other dtypes (`--dtype`: the run's frozen host in it, under autocast), "
             f"closed loop, concurrency {args.concurrency}: throughput (requests/s), p50 / p99 latency (ms), "
             "resident set after the load (MiB), and the uniform throughput against float32's (median of "
             "the rounds' ratios).", "",
             "| dtype | " + " | ".join(pops) + " | RSS | uniform / float32 |",
             "|---|" + "---:|" * (len(pops) + 2)]
    for dtype in dtypes:
        server = "mixed" if dtype == "float32" else HALF + dtype
        if server not in m:
            continue
        cells = [f"{fmt(f['throughput'])} ({fmt(f['p50_ms'])} / {fmt(f['p99_ms'])})"
                 for f in (m[server][f"closed-{p}"] for p in pops)]
        over = median_or_nan(ratio(figure(r, server, "closed-uniform", "throughput"),
                                   figure(r, "mixed", "closed-uniform", "throughput")) for r in rounds)
        rss = fmt(m[server]["memory"]["rss_kb"] / 1024, 0)
        lines.append(f"| {dtype} | " + " | ".join(cells) + f" | {rss} | {fmt(over, 3)} |")
    return lines


def check_table(all_checks: list[Check]) -> list[str]:
    lines = ["| model | ratio | value | target | aim | holds | measured by |",
             "|---|---|---:|---:|---:|---|---|"]
    for c in all_checks:
        sign = "≤" if c.lower_is_better else "≥"
        holds = {True: "yes", False: "**no**", None: "n/a"}[c.holds]
        aim = "" if c.aim is None else f"{sign} {c.aim}"
        lines.append(f"| {c.model} | {c.name} | {fmt(c.value, 2 if 'ms' not in c.name else 1)} | "
                     f"{sign} {c.threshold:g} | {aim} | {holds} | {c.how} |")
    return lines


def overload_section(results: dict, args) -> list[str]:
    """Each model's overload phase (its last round's): the outcomes' counts and the issue's targets."""
    measured = {model: r["overload"] for model, data in results["models"].items() for r in data["rounds"]
                if "overload" in r}
    if not measured:
        return []
    first = next(iter(measured.values()))
    lines = ["## Overload", "",
             f"`{shown_command('mixed', args)}` at {args.overload_factor:g}x its "
             f"closed-loop uniform throughput (the capacity, req/s) for {args.overload_s:g} s in the last "
             f"round, Poisson arrivals, at most {first['max_in_flight']} outstanding (arrivals past that "
             "skipped); every sent request's outcome, the answered (200) requests' latency from their send, "
             "/health asked every 0.5 s on a new connection, the server's resident set once idle before and "
             f"after. The server's request timeout: {first['request_timeout_s']:g} s.", "",
             "| model | capacity | rate | sent | skipped | 200 | 429 | 503 | 504 | other "
             "| 200s p50 / p99 (ms) | /health worst (ms) | RSS before / after / peak (MiB) |",
             "|---|" + "---:|" * 12]
    for model, o in measured.items():
        other = ", ".join(f"{n} × {code}" for code, n in sorted(o["other"].items())) or "0"
        rss = " / ".join(fmt((o[k] or math.nan) / 1024, 0) for k in ("rss_before_kb", "rss_after_kb",
                                                                       "hwm_kb"))
        lines.append(f"| {model} | {fmt(o['capacity'])} | {fmt(o['rate'])} | {o['sent']} | {o['skipped']} | "
                     f"{o['answered']} | {o['429']} | {o['503']} | {o['504']} | {other} | "
                     f"{fmt(o['p50_ms'])} / {fmt(o['p99_ms'])} | {fmt(o['health_worst_ms'], 0)} | {rss} |")
    lines += ["", "| model | target | measured | holds |", "|---|---|---|---|"]
    missed = []
    for model, o in measured.items():
        for c in overload_checks(o):
            lines.append(f"| {model} | {c.name} | {c.value} | {'yes' if c.holds else '**no**'} |")
            if not c.holds:
                missed.append(f"{model}: {c.name}")
    lines += ["", "Overload targets met: all." if not missed else
              f"Overload targets not met: {'; '.join(missed)}.", ""]
    return lines


def machine(load_at_start: float) -> str:
    """CPUs, versions, date, and the 1-minute load average before and after the run (a busy machine shows
    there)."""
    import platform

    import torch

    from hyperpelt.provenance import bf16_units, cpu_model, describe_bf16

    return (f"{os.cpu_count()} CPUs ({cpu_model()}, {describe_bf16(bf16_units())}), "
            f"Python {platform.python_version()}, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; load average {load_at_start:.2f} "
            f"before the run, {os.getloadavg()[0]:.2f} after")


def describe(model: str) -> str:
    config = run_recipe(model)["model"]
    weights = "pretrained" if config.get("pretrained", True) else "random weights"
    return (f"{config['name']}, {weights}, HyperPELT, 8 tasks, inputs cut to {config['max_input_length']} "
            "tokens")


def markdown(results: dict, command: str) -> str:
    args = argparse.Namespace(**results["settings"])
    all_checks = [Check(**c) for c in results["checks"]]
    missed = [f"{c.model}: {c.name}" for c in all_checks if c.holds is False]
    lines = [
        "# Serving load benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Code: {results.get('code', 'not recorded')}.",
        "",
        f"Machine: {results['machine']}. Each server runs with {args.threads} torch thread(s) "
        f"(OMP_NUM_THREADS), --max-batch-size {args.max_batch_size}, --max-wait-ms {args.max_wait_ms}; "
        f"the load client is one aiohttp process on 127.0.0.1, one instance per request. Closed loops run "
        f"{args.seconds} s or {args.requests} requests, open loops {args.open_seconds} s, the lone request "
        f"(alone, and paired: off and mixed alive side by side) {args.lone_seconds} s or "
        f"{args.lone_requests} requests, each after a {args.warmup_s} s warm-up; "
        f"{args.rounds} interleaved round(s), medians (ratios: the median of the rounds' ratios). "
        "bench/serve.py's docstring describes the runs, the workload and the LoRA server.",
        "",
        "## Targets",
        "",
        *check_table(all_checks),
        "",
        "Targets met: all." if not missed else f"Targets not met: {'; '.join(missed)}.",
        "",
    ]
    for model, data in results["models"].items():
        lines += model_tables(model, data, args)
    lines += overload_section(results, args)
    return "\n".join(lines)
