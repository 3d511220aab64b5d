"""Statistics of the measured requests: percentiles, per-loop summaries and medians over rounds."""

from __future__ import annotations

import math
import statistics


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks; nan when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(records: list[tuple[float, float, bool]], window: tuple[float, float]) -> dict:
    """Throughput (answers per second in ``window``) and latency percentiles (ms) of requests sent in it;
    ``records`` are (sent, answered, ok)."""
    begin, end = window
    answered = [r for r in records if r[2] and begin <= r[1] <= end]
    latencies = [1000 * (t1 - t0) for t0, t1, ok in records if ok and t0 >= begin]
    throughput = len(answered) / (end - begin) if end > begin else math.nan  # nan: no window after warm-up
    return {"throughput": throughput, "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "requests": len(records),
            "errors": sum(1 for r in records if not r[2]), "measured": len(latencies)}


def closed_summary(records: list[tuple[float, float, bool]], sends: list[list[float]],
                   window: tuple[float, float]) -> dict:
    """A closed loop's summary: its throughput from each sender's own pace rather than from a count of
    answers in the window (kept as ``answered_per_s``). A batch's answers land together, so that count
    moves in steps of a whole batch (16 answers in 18 s: 3.5% of T5's rate). Each sender (one request
    outstanding at a time, ``sends`` its send times) makes n requests from its first send in the window to
    its last: n - 1 in that time, whole cycles, no step. A sender whose cycle outlasts the window (a short
    loop of a slow server) is timed from its sends just before and after it. The rate is the senders' sum,
    times the share answered."""
    begin, end = window
    out = summary(records, window)
    rate, timed = 0.0, []
    for times in sends:
        inside = [t for t in times if begin <= t < end]
        if len(inside) < 2:
            inside = [t for t in times if t < begin][-1:] + inside + [t for t in times if t >= end][:1]
        if len(inside) > 1:
            rate += (len(inside) - 1) / (inside[-1] - inside[0])
            timed += inside
    first, last = (min(timed), max(timed)) if timed else (math.inf, -math.inf)
    sent = [ok for t0, _, ok in records if first <= t0 <= last]
    share = sum(sent) / len(sent) if sent else math.nan
    return {**out, "answered_per_s": out["throughput"], "throughput": rate * share if rate else math.nan}


def warmed_up(start: float, warmup_s: float, seconds: float) -> float:
    """When a loop of ``seconds`` begun at ``start`` is measured from: after its warm-up, at most half."""
    return start + min(warmup_s, seconds / 2)


MEMORY = ("rss_kb", "hwm_kb", "anon_kb")  # resident set, its peak, its private part


def median_or_nan(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def figure(round_: dict, server: str, phase_name: str, key: str) -> float:
    if server == "inprocess":
        phases = {p["name"]: p for p in round_["inprocess"]["phases"]}
    else:
        phases = round_["servers"].get(server, {}).get("phases", {})
    return phases.get(phase_name, {}).get(key, math.nan)


def paired(round_: dict, server: str, key: str = "p50_ms") -> float:
    """A figure of the round's paired lone phase (off and mixed alive side by side); nan without one."""
    return round_.get("paired", {}).get(server, {}).get(key, math.nan)


def medians(rounds: list[dict]) -> dict:
    """Every figure's median over rounds: {server: {phase: {key: value}}, "rss_kb": ...}."""
    out = {}
    first = rounds[0]
    for server in [*first["servers"], "inprocess"]:
        names = first["servers"][server]["phases"] if server != "inprocess" else ["inprocess"]
        out[server] = {name: {key: median_or_nan(figure(r, server, name, key) for r in rounds)
                              for key in ("throughput", "p50_ms", "p99_ms", "errors", "rate")}
                       for name in names}
        sources = [r["inprocess"] if server == "inprocess" else r["servers"][server] for r in rounds]
        out[server]["memory"] = {k: median_or_nan(s.get(k) for s in sources) for k in MEMORY}
    out["backbone"] = {"memory": {k: median_or_nan(r["backbone"].get(k) for r in rounds) for k in MEMORY}}
    return out
