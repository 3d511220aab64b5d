"""Adapters over a mixed-task batch: the library's row gather (one batched matmul with each row's weights)
against per-task segments (the batch sorted by task, one plain matmul pair per task).

    python -m bench.adapter_paths [--threads 1] [--repeats 200] [--rounds 5]

The serving batcher sorts each batch by task, so both paths are open to it. For each shape (MiniLM-L6
and T5-small widths, the demo's and the paper's adapter sizes, 48 tokens, 16 examples over 1, 4, 8 and
16 tasks) it times the adapter of one site through the library's ``adapter_delta`` (row gather), and the
same weights applied segment by segment, checking first that both give the same output. The timings are
interleaved over ``--rounds`` rounds; the table gives each path's median microseconds and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hyperpelt.inject import ConditioningState
from hyperpelt.inject.adapters import adapter_delta
from hyperpelt.inject.state import AdapterWeights

SHAPES = [("minilm-l6, demo adapters", 384, 8), ("minilm-l6, paper adapters", 384, 32),
          ("t5-small, paper adapters", 512, 32)]
BATCH, TOKENS, TASK_COUNTS = 16, 48, (1, 4, 8, 16)


def segments_delta(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, task_ids: torch.Tensor):
    """The adapter applied one task's contiguous rows at a time (``task_ids`` sorted)."""
    tasks, counts = torch.unique_consecutive(task_ids, return_counts=True)
    outs, start = [], 0
    for task, count in zip(tasks.tolist(), counts.tolist()):
        part = x[start:start + count]
        outs.append(F.linear(F.relu(F.linear(part, down[task])), up[task]))
        start += count
    return torch.cat(outs)


def timed(fn, repeats: int) -> float:
    """Median microseconds of one call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def measure(d_model: int, bottleneck: int, tasks: int, repeats: int, rounds: int) -> tuple[float, float]:
    torch.manual_seed(0)
    down = torch.randn(tasks, 1, bottleneck, d_model) / 20
    up = torch.randn(tasks, 1, d_model, bottleneck) / 20
    task_ids = torch.arange(BATCH) * tasks // BATCH  # sorted, as the batcher leaves them
    x = torch.randn(BATCH, TOKENS, d_model)
    state = ConditioningState(task_ids=task_ids, rows=task_ids)
    state.adapters["ffn"] = AdapterWeights(down=down, up=up)
    gather = lambda: adapter_delta(x, state, "ffn", 0)  # noqa: E731
    segments = lambda: segments_delta(x, down[:, 0], up[:, 0], task_ids)  # noqa: E731
    torch.testing.assert_close(gather(), segments(), rtol=1e-4, atol=1e-5)
    results: dict[str, list[float]] = {"gather": [], "segments": []}
    with torch.no_grad():
        for _ in range(rounds):
            results["gather"].append(timed(gather, repeats))
            results["segments"].append(timed(segments, repeats))
    return statistics.median(results["gather"]), statistics.median(results["segments"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per round (default: 200)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{BATCH} examples of {TOKENS} tokens; torch {torch.__version__}, {args.threads} thread(s); "
          f"median of {args.rounds} rounds of {args.repeats} calls")
    print("| shape | tasks in the batch | row gather (µs) | segments (µs) | segments / gather |")
    print("|---|---:|---:|---:|---:|")
    for name, d_model, bottleneck in SHAPES:
        for tasks in TASK_COUNTS:
            gather, segments = measure(d_model, bottleneck, tasks, args.repeats, args.rounds)
            print(f"| {name} (d = {d_model}, m = {bottleneck}) | {tasks} | {gather:.0f} | {segments:.0f} | "
                  f"{segments / gather:.2f} |")


if __name__ == "__main__":
    main()
