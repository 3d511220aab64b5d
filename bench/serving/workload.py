"""The served workload: the tasks' instances, their popularity draws, Poisson times and load phases."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import os
import random
import statistics
from pathlib import Path

TASKS = ("rte", "mrpc", "stsb", "cola", "sst2", "qnli", "cb", "boolq")
POPULARITIES = ("uniform", "zipf", "one")


def popularity_weights(kind: str, n: int, one: int = 0, s: float = 1.0) -> list[float]:
    """Each task's probability: "uniform", "zipf" (p_k ∝ 1/k^s for the task of rank k) or "one" (all on
    task ``one``)."""
    if kind == "uniform":
        raw = [1.0] * n
    elif kind == "zipf":
        raw = [1.0 / (k + 1) ** s for k in range(n)]
    elif kind == "one":
        raw = [1.0 if k == one else 0.0 for k in range(n)]
    else:
        raise ValueError(f"popularity must be one of {', '.join(POPULARITIES)}, got {kind!r}")
    total = sum(raw)
    return [w / total for w in raw]


class Picker:
    """Request bodies drawn by task popularity, seeded: a task by its weight, then one of its instances."""

    def __init__(self, bodies: list[list[bytes]], weights: list[float], seed: int):
        self.bodies, self.rng = bodies, random.Random(seed)
        self.cumulative = list(itertools.accumulate(weights))

    def task(self) -> int:
        return min(bisect.bisect_right(self.cumulative, self.rng.random() * self.cumulative[-1]),
                   len(self.cumulative) - 1)

    def __call__(self) -> bytes:
        pool = self.bodies[self.task()]
        return pool[self.rng.randrange(len(pool))]


def derived_tasks(tasks: list, n: int) -> list[tuple[object, int]]:
    """``n`` tasks, each with its source's index in ``tasks``: ``tasks`` themselves, then copies of them in
    turn (task i made from ``tasks[i % len(tasks)]``), each declared as its source under the name
    "SOURCE-i"."""
    out = []
    for i in range(n):
        source = tasks[i % len(tasks)]
        out.append((source if i < len(tasks) else dataclasses.replace(source, name=f"{source.name}-{i}"),
                    i % len(tasks)))
    return out


def poisson_arrivals(rate: float, max_requests: int, seconds: float, seed: int) -> list[float]:
    """Send times (s from the start) of a Poisson process of ``rate`` per second, at most ``max_requests``
    of them, all before ``seconds``."""
    rng, times, now = random.Random(seed), [], 0.0
    while len(times) < max_requests:
        now += rng.expovariate(rate)
        if now >= seconds:
            break
        times.append(now)
    return times


def make_workload(run_dir: Path, args) -> Path:
    """The served instances: up to ``--per-task`` of each task's validation (dev) texts, drawn seeded,
    with their lengths in the run's tokens (as the batcher counts them)."""
    from hyperpelt.backbones import get_backbone
    from hyperpelt.inference import run_config
    from hyperpelt.tasks import get_task
    from hyperpelt.tasks.sources import read_local

    config = run_config(run_dir)
    backbone = get_backbone(config.model.name)
    tokenizer = backbone.load_tokenizer(config.model)
    instances, lengths = {}, {}
    for name in TASKS:
        task = get_task(name)
        rows = list(read_local(name, task.local, "dev", args.data))
        rows = random.Random(args.seed).sample(rows, min(args.per_task, len(rows)))
        keys = [key for _, key in task.input_fields]
        fields = [{k: str(row[k]) for k in keys} for row in rows]
        instances[name] = [{"task": name, **f} for f in fields]
        parsed = [task.parse_input(f, "workload") for f in fields]
        features = backbone.encode(tokenizer, task, parsed, task_prefix=True,
                                   max_input_length=config.model.max_input_length,
                                   max_target_length=config.model.max_target_length,
                                   separate_pairs=config.heads.pair_encoding == "separate")
        lengths[name] = [len(f["input_ids"]) + len(f.get("input_ids_b", ())) for f in features]
    means = {t: statistics.mean(v) for t, v in lengths.items()}
    mix = statistics.mean(means.values())
    one = args.one_task or min(TASKS, key=lambda t: abs(means[t] - mix))
    path = args.cache / f"workload_{run_dir.name}.json"
    path.write_text(json.dumps({"tasks": list(TASKS), "instances": instances, "mean_length": means,
                                "uniform_mean_length": mix, "one_task": one}))
    return path


def add_load_options(parser, seconds: float, requests: int, warmup_s: float) -> None:
    """The options every serving benchmark's closed loops and servers take, with these defaults."""
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads per process (default: one per core)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=seconds, help="length of each closed loop")
    parser.add_argument("--requests", type=int, default=requests, help="most requests of each closed loop")
    parser.add_argument("--warmup-s", type=float, default=warmup_s, help="left out of every figure")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--per-task", type=int, default=256, help="validation instances per task")
    parser.add_argument("--seed", type=int, default=0)


def read_instances(path: str | Path) -> list[list[dict]]:
    """A workload file's instances, one list per task in the workload's order of tasks."""
    workload = json.loads(Path(path).read_text())
    return [workload["instances"][t] for t in workload["tasks"]]


class RenamedBodies:
    """Request bodies of another task's instances, each naming the task ``name``: made as they are drawn,
    so that ten thousand tasks' bodies need not all be held."""

    def __init__(self, instances: list[dict], name: str):
        self.instances, self.name = instances, name

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int) -> bytes:
        return json.dumps({"instances": [{**self.instances[index], "task": self.name}]}).encode()


def request_bodies(path: str | Path) -> list:
    """Each task's request bodies (one instance each), in the workload's order of tasks; a workload with
    "sources" (tasks made from others: bench/many_tasks.py) draws each task's from its source's
    instances."""
    workload = json.loads(Path(path).read_text())
    if "sources" not in workload:
        return [[json.dumps({"instances": [i]}).encode() for i in pool] for pool in read_instances(path)]
    return [RenamedBodies(workload["instances"][source], name)
            for name, source in zip(workload["tasks"], workload["sources"])]


def phase_weights(weights, n: int) -> list[float]:
    """A phase's task weights: a list, or {"kind": ..., "s": ...} drawn over the workload's ``n`` tasks
    (ten thousand weights are too long for a worker's command line)."""
    return weights if isinstance(weights, list) else popularity_weights(weights["kind"], n, s=weights["s"])


def phase(name: str, mode: str, weights: list[float], args, seed: int, **extra) -> dict:
    return {"name": name, "mode": mode, "weights": weights, "seed": seed, "warmup_s": args.warmup_s, **extra}


def closed_phase(name: str, weights: list[float], args, seed: int) -> dict:
    """A closed loop of ``--concurrency``, ``--requests`` and ``--seconds``."""
    return phase(name, "closed", weights, args, seed, concurrency=args.concurrency, requests=args.requests,
                 seconds=args.seconds)


def closed_phases(args, workload: dict, seed: int) -> list[dict]:
    one = workload["tasks"].index(workload["one_task"])
    return [closed_phase(f"closed-{p}", popularity_weights(p, len(TASKS), one), args, seed + i)
            for i, p in enumerate(args.popularities)]


def round_seed(args, round_: int) -> int:
    return args.seed + 1000 * round_
