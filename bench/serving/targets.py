"""The issue's targets: each ratio of the report, its median over rounds, against its threshold and aim."""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.serving.servers import SERVERS, shown_command
from bench.serving.stats import figure, median_or_nan, paired

# the targets: (threshold, aim); higher is better unless the name says "p99" or "p50" or "RSS"
TARGETS = {
    "minilm": {"mixed / off throughput": (1.6, 2.5)},
    "t5": {"mixed / off throughput": (3.0, 5.0)},
    "any": {"mixed / by-task throughput (uniform)": (1.1, 1.3),
            "mixed uniform / mixed one-task throughput": (0.90, 0.97),
            "HyperPELT mixed / peft-LoRA mixed throughput": (1.0, None),
            "served / in-process throughput": (0.85, 0.93),
            "mixed p99 / off p99 at 0.7x off capacity": (0.5, 0.25),
            "lone request p50, mixed - off (ms)": (None, None),  # threshold: max-wait + 2 ms
            "server RSS (8 tasks) / frozen backbone RSS": (1.15, None)},
}
LOWER_IS_BETTER = ("p99", "p50", "RSS")


@dataclass
class Check:
    """One ratio of the report against its target."""

    model: str
    name: str
    value: float
    threshold: float
    aim: float | None
    how: str

    @property
    def lower_is_better(self) -> bool:
        return any(word in self.name for word in LOWER_IS_BETTER)

    def meets(self, target: float | None) -> bool | None:
        if target is None or math.isnan(self.value):
            return None
        return self.value <= target if self.lower_is_better else self.value >= target

    @property
    def holds(self) -> bool | None:
        return self.meets(self.threshold)


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def checks(model: str, rounds: list[dict], args) -> list[Check]:
    """Every target of the issue, each the median over rounds of the round's ratio."""
    def median(fn) -> float:
        return median_or_nan(fn(r) for r in rounds)

    def thr(server, phase_name="closed-uniform"):
        return lambda r: figure(r, server, phase_name, "throughput")

    def over(a, b):
        return lambda r: ratio(a(r), b(r))

    targets = {**TARGETS["any"], **TARGETS[model]}
    c = args.concurrency
    cmd = {s: shown_command(s, args).format(model=model) for s in SERVERS}
    closed = f"closed loop, concurrency {c}"
    rows = [
        ("mixed / off throughput", median(over(thr("mixed"), thr("off"))),
         f"`{cmd['mixed']}` / `{cmd['off']}`; {closed}, uniform popularity"),
        ("mixed / by-task throughput (uniform)", median(over(thr("mixed"), thr("by-task"))),
         f"`{cmd['mixed']}` / `{cmd['by-task']}`; {closed}, uniform popularity"),
        ("mixed uniform / mixed one-task throughput",
         median(over(thr("mixed"), thr("mixed", "closed-one"))),
         f"`{cmd['mixed']}`; {closed}, uniform / one task"),
        ("HyperPELT mixed / peft-LoRA mixed throughput", median(over(thr("mixed"), thr("lora"))),
         f"`{cmd['mixed']}` / `{cmd['lora']}`; {closed}, uniform popularity"),
        ("served / in-process throughput", median(over(thr("mixed"), thr("inprocess", "inprocess"))),
         f"`{cmd['mixed']}` / `python -m bench.serve --worker inprocess --run runs/bench_serve/{model}`; "
         f"{closed}, uniform popularity"),
        ("mixed p99 / off p99 at 0.7x off capacity",
         median(over(lambda r: figure(r, "mixed", "open", "p99_ms"),
                     lambda r: figure(r, "off", "open", "p99_ms"))),
         f"`{cmd['mixed']}` / `{cmd['off']}`; open loop, Poisson at {args.load}x the off server's "
         "closed-loop uniform throughput"),
        ("lone request p50, mixed - off (ms)",
         median(lambda r: paired(r, "mixed") - paired(r, "off")),
         f"`{cmd['mixed']}` - `{cmd['off']}`, both alive; the same lone requests to each in turn, "
         "uniform popularity"),
        ("server RSS (8 tasks) / frozen backbone RSS",
         median(lambda r: ratio(r["servers"].get("mixed", {}).get("rss_kb", math.nan),
                                r["backbone"]["rss_kb"])),
         f"VmRSS of `{cmd['mixed']}` after its load / of `python -m bench.serve --worker backbone "
         f"--run runs/bench_serve/{model}`"),
    ]
    out = []
    for name, value, how in rows:
        threshold, aim = targets[name]
        if name.startswith("lone"):
            threshold = args.max_wait_ms + 2
        out.append(Check(model, name, value, threshold, aim, how))
    return out
