"""Serving load benchmark: ``hyperpelt serve`` under load, its batching modes against each other, against
a peft-LoRA server behind the same batcher, and against the same engine driven without HTTP.

    python -m bench.serve [--models minilm,t5] [--rounds 3] [--threads 1] [--quick]
                          [--report reports/bench_serve.md] [--json PATH]

Takes about 45 minutes on 2 quiet cores (``--quick``: one short round, a few minutes per model).

Setup (once, cached under runs/bench_serve/): a HyperPELT run of 8 tasks (rte, mrpc, stsb, cola, sst2,
qnli, cb, boolq) for each model, made by ``hyperpelt train`` with one training step, since throughput does
not depend on training: MiniLM-L6 (pretrained) with configs/demo.yaml's method, heads and input length,
and T5-small with random weights (none pretrained are available offline), the paper's HyperPELT sizes and
answers of at most 6 tokens (the longest label of the 8 tasks). The data pack has no QNLI training file:
the runs' data folder (runs/bench_serve/data, links to the real files) lends QNLI's dev file as its
training file, which only feeds the one training step. The served requests are the tasks' original
validation (dev) texts, one instance per request.

Servers, each a process of its own (``--threads`` torch threads, 1 by default: the load client needs the
other core of a 2-core machine): ``hyperpelt serve RUN --batching off | by-task | mixed``, and
``python -m bench.serve_lora RUN --batching mixed`` (bench/serve_lora.py: the run's frozen backbone with 8
peft LoRA adapters, r = 8, one per task, a mixed batch in one forward with peft's ``adapter_names``).

The client is a process of its own (aiohttp, 127.0.0.1 only), bounded in requests and seconds:
 * closed loop: 32 concurrent requests, each sent when the last answered; throughput (answers per
   second after a warm-up), p50 and p99 latency, for each task popularity: uniform over the 8 tasks,
   Zipf (s = 1, in the order above), and one task (the task whose inputs' mean length is nearest the
   uniform mix's, so that the comparison is of mixing, not of text length);
 * open loop: Poisson arrivals at 0.7x the ``off`` server's uniform closed-loop throughput of the same
   round, latency from each request's scheduled time (so a late client does not hide queueing);
 * a lone request (concurrency 1): p50 latency.
In-process: the mixed engine in a process of its own, driven directly by hyperpelt's ``Batcher`` (32
requests outstanding, each encoded by ``Engine.prepare`` as the HTTP layer does), no HTTP and no client.
Memory: each server's resident set (VmRSS) after its load, against a process that only loads the run's
frozen backbone (and tokenizer) the same way.

Every round starts every server afresh, in the same order (off first: its throughput sets the open-loop
rate); ``--rounds`` rounds interleave them, every figure is the median over rounds and every ratio the
median of the rounds' ratios (so the machine's drift between rounds does not decide a ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("rte", "mrpc", "stsb", "cola", "sst2", "qnli", "cb", "boolq")
SERVERS = ("off", "by-task", "mixed", "lora")
POPULARITIES = ("uniform", "zipf", "one")
COMMON_RUN = {"data": {"tasks": list(TASKS), "max_train_examples": 16, "max_eval_examples": 8},
              "train": {"steps": 1, "eval_every": 1, "batch_size": 8, "eval_batch_size": 8, "seed": 42}}
MODELS = {
    # configs/demo.yaml's model, method and heads; no probe fit (it would only cost set-up time)
    "minilm": {"model": {"name": "minilm-l6", "max_input_length": 64},
               "method": {"name": "hyperpelt", "prefix_length": 16, "hyper_dim": 32, "task_dim": 128,
                          "projector_hidden": 128, "adapter_dim": 8},
               "heads": {"pair_encoding": "separate", "pair_head": "alignment", "probe_examples": 0}},
    # random weights; the paper's HyperPELT sizes (the method's defaults)
    "t5": {"model": {"name": "t5-small", "pretrained": False, "max_input_length": 128,
                     "max_target_length": 6},
           "method": {"name": "hyperpelt"}},
}
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


# ------------------------------------------------------------------------------------ workload and stats


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
        self.cumulative = [sum(weights[:k + 1]) for k in range(len(weights))]

    def task(self) -> int:
        return min(bisect.bisect_right(self.cumulative, self.rng.random() * self.cumulative[-1]),
                   len(self.cumulative) - 1)

    def __call__(self) -> bytes:
        pool = self.bodies[self.task()]
        return pool[self.rng.randrange(len(pool))]


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


def median_or_nan(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


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


# ------------------------------------------------------------------------------------ load client


async def closed_loop(post, pick, concurrency: int, max_requests: int, seconds: float,
                      warmup_s: float) -> dict:
    """``concurrency`` workers, each sending its next request when its last is answered, until
    ``max_requests`` are sent or ``seconds`` have passed; figures after ``warmup_s``."""
    start = time.perf_counter()
    stop, records, issued = start + seconds, [], 0
    exhausted = [stop]

    async def worker():
        nonlocal issued
        while True:
            now = time.perf_counter()
            if now >= stop:
                return
            if issued >= max_requests:
                exhausted[0] = min(exhausted[0], now)
                return
            issued += 1
            body = pick()
            t0 = time.perf_counter()
            ok = await post(body)
            records.append((t0, time.perf_counter(), ok))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = summary(records, (start + min(warmup_s, seconds / 2), exhausted[0]))
    return {**result, "concurrency": concurrency}


async def open_loop(post, pick, rate: float, max_requests: int, seconds: float, warmup_s: float,
                    seed: int, drain_s: float = 60.0) -> dict:
    """Requests sent at Poisson times of ``rate`` per second whatever the answers; latency counted from
    each request's scheduled time; figures of requests scheduled after ``warmup_s``."""
    arrivals = poisson_arrivals(rate, max_requests, seconds, seed)
    start = time.perf_counter() + 0.05
    records: list = []

    async def one(scheduled: float, body: bytes):
        ok = await post(body)
        records.append((scheduled, time.perf_counter(), ok))

    pending = []
    for offset in arrivals:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.ensure_future(one(start + offset, pick())))
    if pending:
        done, late = await asyncio.wait(pending, timeout=drain_s)
        for task in late:
            task.cancel()
        records += [(0.0, 0.0, False)] * len(late)
    result = summary(records, (start + min(warmup_s, seconds / 2), start + seconds))
    return {**result, "rate": rate}


async def run_phases(url: str, bodies: list[list[bytes]], phases: list[dict]) -> list[dict]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1024)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Content-Type": "application/json"}
    out = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def post(body: bytes) -> bool:
            try:
                async with session.post(url + "/v1/predict", data=body, headers=headers) as response:
                    await response.read()
                    return response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        for phase in phases:
            pick = Picker(bodies, phase["weights"], phase["seed"])
            if phase["mode"] == "closed":
                result = await closed_loop(post, pick, phase["concurrency"], phase["requests"],
                                           phase["seconds"], phase["warmup_s"])
            else:
                result = await open_loop(post, pick, phase["rate"], phase["requests"], phase["seconds"],
                                         phase["warmup_s"], phase["seed"])
            out.append({"name": phase["name"], **result})
    return out


def worker_client(args) -> dict:
    if not args.url.startswith("http://127.0.0.1:"):
        raise SystemExit("the load client only talks to 127.0.0.1")
    workload = json.loads(Path(args.workload).read_text())
    bodies = [[json.dumps({"instances": [i]}).encode() for i in workload["instances"][t]]
              for t in workload["tasks"]]
    return {"phases": asyncio.run(run_phases(args.url, bodies, json.loads(args.phases)))}


# ------------------------------------------------------------------------------------ other workers


def rss_kb(pid: int | str = "self") -> dict:
    """The process's resident set now and at its peak (kB), from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return {"rss_kb": fields.get("VmRSS"), "hwm_kb": fields.get("VmHWM")}


def worker_backbone(args) -> dict:
    """Load only the run's frozen backbone and tokenizer, as the server builds them (the run's seed first,
    so a random T5 is drawn the same way)."""
    import torch

    from hyperpelt.backbones import get_backbone
    from hyperpelt.quiet import quiet_libraries
    from hyperpelt.training.run_dir import run_config

    quiet_libraries()
    config = run_config(args.run)
    torch.manual_seed(config.train.seed)
    backbone = get_backbone(config.model.name, config.model.trust_remote_code)
    host = backbone.load_host(config.model).eval()
    backbone.load_tokenizer(config.model)
    host.requires_grad_(False)
    return rss_kb()


def worker_inprocess(args) -> dict:
    """The mixed server's engine driven by hyperpelt's Batcher directly: ``concurrency`` requests
    outstanding, each encoded by ``Engine.prepare`` on this thread as the HTTP layer does."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from hyperpelt.serving.batcher import Batcher
    from hyperpelt.serving.service import ServeOptions, load_engine

    engine = load_engine(Path(args.run), ServeOptions())
    for batch in engine.warm_up_items():
        engine.run(batch)
    batcher = Batcher(engine.run, args.max_batch_size, 4096, args.max_wait_ms / 1000, "mixed").start()
    workload = json.loads(Path(args.workload).read_text())
    instances = [workload["instances"][t] for t in workload["tasks"]]
    spec = json.loads(args.phases)[0]
    pick = Picker(instances, spec["weights"], spec["seed"])
    start = time.perf_counter()
    stop, records, sent, pending = start + spec["seconds"], [], 0, {}
    exhausted = stop

    def send():
        nonlocal sent
        sent += 1
        t0 = time.perf_counter()
        future = batcher.submit([engine.prepare(pick(), 0)], 120.0)[0]
        pending[future] = t0

    for _ in range(spec["concurrency"]):
        send()
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        now = time.perf_counter()
        for future in done:
            records.append((pending.pop(future), now, future.exception() is None))
            if now < stop and sent < spec["requests"]:
                send()
            elif sent >= spec["requests"]:
                exhausted = min(exhausted, now)
    batcher.stop(5)
    result = summary(records, (start + min(spec["warmup_s"], spec["seconds"] / 2), exhausted))
    return {"phases": [{"name": spec["name"], **result, "concurrency": spec["concurrency"]}], **rss_kb()}


def run_worker(args) -> None:
    if args.worker != "client":  # the client needs no torch
        import torch

        torch.set_num_threads(args.threads)
    result = {"client": worker_client, "backbone": worker_backbone, "inprocess": worker_inprocess}[
        args.worker](args)
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ set-up


def child_env(args) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "HYPERPELT_DATA_DIR": str(args.data)}


def data_folder(cache: Path) -> Path:
    """The runs' data folder: links to every real file, and QNLI's dev file also as its training file
    (the pack has none; it only feeds the runs' one training step)."""
    from hyperpelt.tasks.sources import default_data_dir

    real, folder = default_data_dir().resolve(), cache / "data"
    if not (real / "glue").is_dir():
        raise SystemExit(f"no data at {real}: set HYPERPELT_DATA_DIR to the data folder")
    for source in sorted(real.rglob("*")):
        if source.is_file():
            link = folder / source.relative_to(real)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source)
    qnli = folder / "glue" / "QNLI" / "train.tsv"
    if not qnli.exists():
        qnli.symlink_to(real / "glue" / "QNLI" / "dev.tsv")
    return folder


def run_recipe(model: str) -> dict:
    recipe = json.loads(json.dumps(COMMON_RUN))
    for section, values in MODELS[model].items():
        recipe.setdefault(section, {}).update(values)
    return recipe


def make_run(model: str, args) -> Path:
    """The model's 8-task run, trained (one step) unless runs/bench_serve holds it from the same recipe."""
    import shutil

    import yaml

    recipe = run_recipe(model)
    recipe["train"].update(output_dir=str(args.cache), run_name=model)
    recipe_file, run_dir = args.cache / f"{model}.yaml", args.cache / model
    text = yaml.safe_dump(recipe, sort_keys=False)
    if recipe_file.exists() and recipe_file.read_text() == text and (run_dir / "best").exists():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    recipe_file.write_text(text)
    command = [sys.executable, "-m", "hyperpelt", "train", str(recipe_file), "--quiet"]
    log(f"making the {model} run: {' '.join(command)}")
    done = subprocess.run(command, env=child_env(args), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        recipe_file.unlink(missing_ok=True)
        raise RuntimeError(f"training the {model} run failed:\n{done.stderr[-3000:]}")
    return run_dir


def make_workload(run_dir: Path, args) -> Path:
    """The served instances: up to ``--per-task`` of each task's validation (dev) texts, drawn seeded,
    with their lengths in the run's tokens (as the batcher counts them)."""
    from hyperpelt.backbones import get_backbone
    from hyperpelt.tasks import get_task
    from hyperpelt.tasks.sources import read_local
    from hyperpelt.training.run_dir import run_config

    config = run_config(run_dir)
    backbone = get_backbone(config.model.name)
    tokenizer = backbone.load_tokenizer(config.model)
    instances, lengths = {}, {}
    for name in TASKS:
        task = get_task(name)
        rows = list(read_local(name, task.local, "dev", args.data))
        rows = random.Random(args.seed).sample(rows, min(args.per_task, len(rows)))
        keys = [key for _, key in task.input_fields]
        instances[name] = [{"task": name, **{k: str(row[k]) for k in keys}} for row in rows]
        parsed = [task.parse_input({k: str(row[k]) for k in keys}, "workload") for row in rows]
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


# ------------------------------------------------------------------------------------ processes


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_worker(args, worker: str, **options) -> dict:
    command = [sys.executable, "-m", "bench.serve", "--worker", worker, "--threads", str(args.threads)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(args), cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def server_command(server: str, run_dir: Path, port: int, args) -> list[str]:
    tail = ["--port", str(port), "--max-batch-size", str(args.max_batch_size), "--max-wait-ms",
            str(args.max_wait_ms)]
    if server == "lora":
        return ["-m", "bench.serve_lora", str(run_dir), "--batching", "mixed", *tail]
    return ["-m", "hyperpelt", "serve", str(run_dir), "--batching", server, *tail]


def shown_command(server: str, args) -> str:
    """A server's command as the report shows it."""
    words = server_command(server, Path("runs/bench_serve/{model}"), 0, args)
    words = [w for w in words if w not in ("--port", "0")]
    return ("python " if server == "lora" else "") + " ".join(words).replace("-m hyperpelt ", "hyperpelt ")


class Server:
    """A server process on a free loopback port; ``ready()`` waits until /ready answers 200."""

    def __init__(self, server: str, run_dir: Path, args, log_file: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_file.open("w")
        command = [sys.executable, *server_command(server, run_dir, self.port, args)]
        self.process = subprocess.Popen(command, env=child_env(args), cwd=ROOT, stdout=self.log,
                                        stderr=subprocess.STDOUT)

    def ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}); see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in {timeout_s} s; see {self.log.name}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def phase(name: str, mode: str, weights: list[float], args, seed: int, **extra) -> dict:
    return {"name": name, "mode": mode, "weights": weights, "seed": seed, "warmup_s": args.warmup_s, **extra}


def closed_phases(args, workload: dict, seed: int) -> list[dict]:
    one = workload["tasks"].index(workload["one_task"])
    return [phase(f"closed-{p}", "closed", popularity_weights(p, len(TASKS), one), args, seed + i,
                  concurrency=args.concurrency, requests=args.requests, seconds=args.seconds)
            for i, p in enumerate(args.popularities)]


def measure_server(server: str, model: str, run_dir: Path, workload_path: Path, args, round_: int,
                   off_capacity: float | None) -> dict:
    workload = json.loads(workload_path.read_text())
    uniform = popularity_weights("uniform", len(TASKS))
    seed = args.seed + 1000 * round_
    log_file = args.cache / "logs" / f"{model}-{server}-round{round_ + 1}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    served = Server(server, run_dir, args, log_file)
    try:
        served.ready()
        client = dict(url=served.url, workload=workload_path)
        phases = spawn_worker(args, "client", phases=json.dumps(closed_phases(args, workload, seed)),
                              **client)["phases"]
        capacity = off_capacity
        if server == "off":
            capacity = next(p["throughput"] for p in phases if p["name"] == "closed-uniform")
        later = [phase("lone", "closed", uniform, args, seed + 10, concurrency=1, requests=args.lone_requests,
                       seconds=args.lone_seconds)]
        if capacity:
            rate = args.load * capacity
            later.insert(0, phase("open", "open", uniform, args, seed + 11, rate=rate,
                                  requests=int(rate * args.open_seconds * 2) + 10, seconds=args.open_seconds))
        phases += spawn_worker(args, "client", phases=json.dumps(later), **client)["phases"]
        memory = rss_kb(served.process.pid)
    finally:
        served.stop()
    return {"phases": {p["name"]: p for p in phases}, **memory}


def measure_round(model: str, run_dir: Path, workload_path: Path, args, round_: int) -> dict:
    out, off_capacity = {"servers": {}}, None
    for server in args.servers:
        log(f"  round {round_ + 1}, {model}: {server} server ...")
        measured = measure_server(server, model, run_dir, workload_path, args, round_, off_capacity)
        out["servers"][server] = measured
        if server == "off":
            off_capacity = measured["phases"]["closed-uniform"]["throughput"]
    log(f"  round {round_ + 1}, {model}: in-process and frozen backbone ...")
    uniform = popularity_weights("uniform", len(TASKS))
    inproc = [phase("inprocess", "closed", uniform, args, args.seed + 1000 * round_,
                    concurrency=args.concurrency, requests=args.requests, seconds=args.seconds)]
    out["inprocess"] = spawn_worker(args, "inprocess", run=run_dir, workload=workload_path,
                                    phases=json.dumps(inproc), max_batch_size=args.max_batch_size,
                                    max_wait_ms=args.max_wait_ms)
    out["backbone"] = spawn_worker(args, "backbone", run=run_dir)
    return out


# ------------------------------------------------------------------------------------ results


def figure(round_: dict, server: str, phase_name: str, key: str) -> float:
    if server == "inprocess":
        phases = {p["name"]: p for p in round_["inprocess"]["phases"]}
    else:
        phases = round_["servers"].get(server, {}).get("phases", {})
    return phases.get(phase_name, {}).get(key, math.nan)


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
         median(lambda r: figure(r, "mixed", "lone", "p50_ms") - figure(r, "off", "lone", "p50_ms")),
         f"`{cmd['mixed']}` - `{cmd['off']}`; concurrency 1, uniform popularity"),
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
        out[server]["memory"] = {k: median_or_nan(s.get(k) for s in sources) for k in ("rss_kb", "hwm_kb")}
    out["backbone"] = {"memory": {k: median_or_nan(r["backbone"][k] for r in rounds)
                                  for k in ("rss_kb", "hwm_kb")}}
    return out


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def model_tables(model: str, data: dict, args) -> list[str]:
    m, workload = data["medians"], data["workload"]
    one = workload["one_task"]
    lines = [f"## {model}", "", f"Run: `runs/bench_serve/{model}` ({data['describe']}). One-task popularity: "
             f"{one} (mean input {workload['mean_length'][one]:.1f} tokens; the uniform mix's "
             f"{workload['uniform_mean_length']:.1f}).", ""]
    pops = [p for p in POPULARITIES if f"closed-{p}" in next(iter(m.values()))]
    lines += [f"Closed loop, concurrency {args.concurrency}: throughput (requests/s), p50 / p99 latency "
              "(ms).",
              "",
              "| server | " + " | ".join(pops) + " |", "|---|" + "---:|" * len(pops)]
    for server in (*[s for s in SERVERS if s in m], "inprocess"):
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
    for server in [s for s in SERVERS if s in m]:
        o, lone = m[server].get("open", {}), m[server]["lone"]
        lines.append(f"| {server} | {fmt(o.get('rate', math.nan))} | {fmt(o.get('throughput', math.nan))} | "
                     f"{fmt(o.get('p50_ms', math.nan))} | {fmt(o.get('p99_ms', math.nan))} | "
                     f"{fmt(o.get('errors', math.nan), 0)} | {fmt(lone['p50_ms'])} | {fmt(lone['p99_ms'])} |")
    lines += ["", "Memory (MiB): resident set after the load, and its peak.", "",
              "| process | RSS | peak |", "|---|---:|---:|"]
    for server in (*[s for s in SERVERS if s in m], "inprocess", "backbone"):
        mem = m[server]["memory"]
        label = {"inprocess": "in-process (mixed)", "backbone": "frozen backbone alone"}.get(server, server)
        lines.append(f"| {label} | {fmt(mem['rss_kb'] / 1024, 0)} | {fmt(mem['hwm_kb'] / 1024, 0)} |")
    rounds = data["rounds"]
    if len(rounds) > 1:
        lines += ["", "Closed-loop uniform throughput (requests/s) in each round:", "",
                  "| server | " + " | ".join(f"round {i + 1}" for i in range(len(rounds))) + " |",
                  "|---|" + "---:|" * len(rounds)]
        for server in (*[s for s in SERVERS if s in m], "inprocess"):
            name = "inprocess" if server == "inprocess" else "closed-uniform"
            lines.append(f"| {server} | " + " | ".join(fmt(figure(r, server, name, "throughput"))
                                                       for r in rounds) + " |")
    return [*lines, ""]


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


def machine(load_at_start: float) -> str:
    """CPUs, versions, date, and the 1-minute load average before and after the run (a busy machine shows
    there)."""
    import platform

    import torch

    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return (f"{os.cpu_count()} CPUs ({cpu or platform.machine()}), Python {platform.python_version()}, "
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
        f"Machine: {results['machine']}. Each server runs with {args.threads} torch thread(s) "
        f"(OMP_NUM_THREADS), --max-batch-size {args.max_batch_size}, --max-wait-ms {args.max_wait_ms}; "
        f"the load client is one aiohttp process on 127.0.0.1, one instance per request. Closed loops run "
        f"{args.seconds} s or {args.requests} requests, open loops {args.open_seconds} s, the lone request "
        f"{args.lone_seconds} s or {args.lone_requests} requests, each after a {args.warmup_s} s warm-up; "
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
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,t5", help="comma-separated: minilm, t5 (default both)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated, off first (default all)")
    parser.add_argument("--popularities", default=",".join(POPULARITIES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each closed loop")
    parser.add_argument("--requests", type=int, default=4000, help="most requests of each closed loop")
    parser.add_argument("--open-seconds", type=float, default=20.0, help="length of each open loop")
    parser.add_argument("--lone-seconds", type=float, default=8.0)
    parser.add_argument("--lone-requests", type=int, default=300)
    parser.add_argument("--warmup-s", type=float, default=2.0, help="left out of every figure")
    parser.add_argument("--load", type=float, default=0.7, help="open-loop rate, times the off capacity")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--per-task", type=int, default=256, help="validation instances per task")
    parser.add_argument("--one-task", default=None,
                        help="the one task of that popularity (default: see above)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round of 5 s loops (3 s lone, 1 s warm-up)")
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
    args.models, args.servers = args.models.split(","), args.servers.split(",")
    args.popularities = args.popularities.split(",")
    unknown = ({*args.models} - {*MODELS}) | ({*args.servers} - {*SERVERS}) | (
        {*args.popularities} - {*POPULARITIES})
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    if "uniform" not in args.popularities:
        parser.error("--popularities needs uniform (every ratio but one reads it)")
    args.cache = Path(args.cache)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    load_at_start = os.getloadavg()[0]
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
    results = {"machine": machine(load_at_start), "settings": settings, "models": {}, "checks": []}
    for model in args.models:
        found = checks(model, rounds[model], args)
        results["checks"] += [vars(c) for c in found]
        workload = json.loads(workloads[model].read_text())
        workload.pop("instances")
        results["models"][model] = {"rounds": rounds[model], "medians": medians(rounds[model]),
                                    "workload": workload, "describe": describe(model)}
    command = "python -m bench.serve " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(results, command.strip())
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(report)


if __name__ == "__main__":
    main()
