"""The many-task benchmark's targets, markdown report and figure (bench/many_tasks.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.serving.report import check_table, fmt
from bench.serving.stats import median_or_nan
from bench.serving.targets import Check, ratio

MIB = 2**20
FIGURES = ("throughput", "p50_ms", "p99_ms", "errors", "rss_idle_kb", "rss_after_kb", "hwm_kb")
THROUGHPUT_KEPT, RSS_GROWTH_MB = 0.8, 100.0  # the targets


def medians(results: dict, server: str) -> dict[int, dict]:
    """Each count's figures (and cache counts) of ``server`` ("hyperpelt" or "lora"), medians over rounds."""
    counts = sorted({int(n) for r in results["rounds"] for n in r[server]})
    out = {}
    for n in counts:
        measured = [r[server][str(n)] for r in results["rounds"] if str(n) in r[server]]
        out[n] = {key: median_or_nan(m.get(key) for m in measured) for key in FIGURES}
        out[n]["cache"] = {key: median_or_nan(m["cache"].get(key) for m in measured)
                           for key in measured[0]["cache"]}
    return out


def checks(results: dict) -> list[Check]:
    """The issue's targets between the fewest and the most tasks measured, each the median of the rounds'
    values: throughput kept, and the growth of the resident set (MB, 10^6 bytes), read two ways: its peak
    during the load, and once idle after it."""
    counts = sorted({int(n) for r in results["rounds"] for n in r["hyperpelt"]})
    if len(counts) < 2:
        return []
    low, high = str(counts[0]), str(counts[-1])
    kept = median_or_nan(ratio(r["hyperpelt"][high]["throughput"], r["hyperpelt"][low]["throughput"])
                         for r in results["rounds"])

    def growth(key: str) -> float:
        return median_or_nan((r["hyperpelt"][high][key] - r["hyperpelt"][low][key]) * 1024 / 1e6
                             for r in results["rounds"])

    cache = results["settings"]["weight_cache_mb"]
    how = f"`hyperpelt serve --batching mixed --weight-cache-mb {cache:g}`, Zipf s = " \
          f"{results['settings']['zipf_s']:g}, closed loop of {results['settings']['concurrency']}"
    return [Check("minilm", f"throughput at {high} tasks / at {low}", kept, THROUGHPUT_KEPT, None, how),
            Check("minilm", f"peak RSS at {high} tasks - at {low} (MB)", growth("hwm_kb"), RSS_GROWTH_MB,
                  None, how + "; VmHWM"),
            Check("minilm", f"RSS idle after the load at {high} tasks - at {low} (MB)",
                  growth("rss_after_kb"), RSS_GROWTH_MB, None,
                  how + "; VmRSS 2 s after the load, free memory given back")]


def cache_cells(c: dict) -> list[str]:
    mib = c["hyperpelt_weight_cache_bytes"] / MIB
    looked = c["hyperpelt_weight_cache_hits_total"] + c["hyperpelt_weight_cache_misses_total"]
    calls = c["hyperpelt_weight_generation_seconds_count"]
    return [f"{fmt(c['hyperpelt_weight_cache_hits_total'], 0)} / "
            f"{fmt(c['hyperpelt_weight_cache_misses_total'], 0)} / "
            f"{fmt(c['hyperpelt_weight_cache_evictions_total'], 0)}",
            fmt(100 * ratio(c["hyperpelt_weight_cache_hits_total"], looked), 1),
            f"{fmt(c['hyperpelt_weight_cache_tasks'], 0)} / {fmt(mib, 1)}",
            f"{fmt(calls, 0)} / {fmt(1000 * ratio(c['hyperpelt_weight_generation_seconds_sum'], calls), 1)}"]


def memory_cells(m: dict) -> list[str]:
    return [fmt(m[key] / 1024, 0) for key in ("rss_idle_kb", "rss_after_kb", "hwm_kb")]


def tables(results: dict) -> list[str]:
    lengths = results["mean_length"]
    lines = ["| tasks | throughput (req/s) | p50 / p99 (ms) | errors | mean input (tokens) | tasks per batch "
             "| cache hits / misses / evictions | hit % | cached tasks / MiB | generations / ms each "
             "| RSS idle after warm-up | RSS idle after load | peak RSS |",
             "|---:|" + "---:|" * 12]
    for n, m in medians(results, "hyperpelt").items():
        c = m["cache"]
        per_batch = ratio(c["hyperpelt_batch_tasks_sum"], c["hyperpelt_batch_tasks_count"])
        lines.append(f"| {n:,} | {fmt(m['throughput'])} | {fmt(m['p50_ms'], 0)} / {fmt(m['p99_ms'], 0)} | "
                     f"{fmt(m['errors'], 0)} | {fmt(lengths[str(n)])} | {fmt(per_batch)} | "
                     + " | ".join([*cache_cells(c), *memory_cells(m)]) + " |")
    lora = results["lora"]
    lines += ["", f"peft LoRA (bench/serve_lora.py, r = 8 on query and value): one adapter takes "
              f"{lora['adapter_bytes'] / 1024:.0f} KiB of float32 weights, so the "
              f"{results['settings']['weight_cache_mb']:g} MiB weight cache's budget holds {lora['fit']} "
              "adapters (floor of the budget over one adapter's bytes: the memory the HyperPELT server gives "
              "generated weights, given to adapters). Its heads, as HyperPELT's, lie outside the budget.", "",
              "| adapters | throughput (req/s) | p50 / p99 (ms) | errors | mean input (tokens) "
              "| RSS idle after warm-up | RSS idle after load | peak RSS |",
              "|---:|" + "---:|" * 7]
    for n, m in medians(results, "lora").items():
        lines.append(f"| {n:,} | {fmt(m['throughput'])} | {fmt(m['p50_ms'], 0)} / {fmt(m['p99_ms'], 0)} | "
                     f"{fmt(m['errors'], 0)} | {fmt(lengths[str(n)])} | "
                     + " | ".join(memory_cells(m)) + " |")
    return lines


def markdown(results: dict, command: str) -> str:
    args = argparse.Namespace(**results["settings"])
    found = checks(results)
    missed = [c.name for c in found if c.holds is False]
    png = os.path.relpath(args.png, Path(args.report).parent)
    lines = [
        "# Many-task serving benchmark", "",
        f"Command: `{command}`", "",
        f"Code: {results.get('code', 'not recorded')}.", "",
        f"Machine: {results['machine']}. Each server runs with {args.threads} torch thread(s), "
        f"--max-batch-size {args.max_batch_size}, --max-wait-ms {args.max_wait_ms}; the load client is "
        f"one aiohttp process on 127.0.0.1: a closed loop of {args.concurrency} senders, one instance per "
        f"request, Zipf popularity s = {args.zipf_s:g} over the served tasks, {args.seconds:g} s or "
        f"{args.requests} requests after a {args.warmup_s:g} s warm-up; {args.rounds} interleaved "
        "round(s), medians (ratios: the median of the rounds' ratios). The copies' embeddings: their "
        f"source's plus Gaussian noise of {args.noise:g}x its root mean square. bench/many_tasks.py's "
        "docstring describes the stores, the workload and the LoRA server. Memory in MiB.", "",
        "## Targets", "",
        *check_table(found), "",
        "Targets met: all." if not missed else f"Targets not met: {'; '.join(missed)}.", "",
        "## Figures", "",
        f"HyperPELT (`hyperpelt serve RUN --batching mixed --task-store STORE --weight-cache-mb "
        f"{args.weight_cache_mb:g}`); the cache's counts from /metrics at the end of the load (warm-up "
        "included).", "",
        *tables(results), "",
        f"![throughput and resident set against the number of tasks]({png})", ""]
    return "\n".join(lines)


def plot(results: dict, path: str | Path) -> Path:
    """Throughput and resident set against the number of tasks (log x): HyperPELT's lines, LoRA's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, lora = medians(results, "hyperpelt"), medians(results, "lora")
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(13, 4.2), dpi=120)
    counts = sorted({*ours, *lora})
    for ax in (speed, memory):
        ax.set_xscale("log")
        ax.set_xticks(counts, [f"{n:,}" for n in counts])
        ax.minorticks_off()
        ax.set_xlabel("tasks served")
        ax.grid(True, alpha=0.3)
    cache = results["settings"]["weight_cache_mb"]
    speed.plot(list(ours), [m["throughput"] for m in ours.values()], "o-",
               label=f"HyperPELT, {cache:g} MiB weight cache")
    speed.plot(list(lora), [m["throughput"] for m in lora.values()], "s", markersize=8, label="peft LoRA r=8")
    if ours:
        speed.axhline(THROUGHPUT_KEPT * ours[min(ours)]["throughput"], color="0.4", linestyle=":",
                      label=f"{THROUGHPUT_KEPT:g}x at {min(ours):,} tasks (target)")
    speed.set_ylabel("throughput (requests/s)")
    speed.set_ylim(bottom=0)
    for key, label in (("hwm_kb", "peak"), ("rss_after_kb", "idle after load"),
                       ("rss_idle_kb", "idle after warm-up")):
        memory.plot(list(ours), [m[key] / 1024 for m in ours.values()], "o-", label=f"HyperPELT, {label}")
        memory.plot(list(lora), [m[key] / 1024 for m in lora.values()], "s", markersize=8,
                    label=f"peft LoRA, {label}")
    if ours:
        memory.axhline(ours[min(ours)]["hwm_kb"] / 1024 + RSS_GROWTH_MB * 1e6 / MIB, color="0.4",
                       linestyle=":", label=f"peak at {min(ours):,} + 100 MB (target)")
    memory.set_ylabel("resident set (MiB)")
    speed.legend(fontsize=8)
    memory.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside: the lines fill the axes
    speed.set_title(f"Throughput, Zipf s = {results['settings']['zipf_s']:g}, closed loop")
    memory.set_title("Server memory")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
