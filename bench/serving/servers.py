"""The server processes and the measuring of a round: start, load, read the RSS of, and stop each server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.serving.runs import ROOT, child_env, log
from bench.serving.workers import rss_kb
from bench.serving.workload import TASKS, closed_phase, closed_phases, phase, popularity_weights, round_seed
from bench.worker_result import run_worker_process

SERVERS = ("off", "by-task", "mixed", "lora")
SERVE_DTYPES = ("float32", "bfloat16", "float16")
HALF = "mixed-"  # "mixed-bfloat16": the mixed server in that dtype (--dtype)
UNIFORM = popularity_weights("uniform", len(TASKS))  # open loops, lone requests, in-process driver
IDLE_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_worker(args, worker: str, **options) -> dict:
    command = [sys.executable, "-m", "bench.serve", "--worker", worker, "--threads", str(args.threads)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return run_worker_process(command, worker, env=child_env(args), cwd=ROOT)


def server_command(server: str, run_dir: Path, port: int, args) -> list[str]:
    tail = ["--port", str(port), "--max-batch-size", str(args.max_batch_size), "--max-wait-ms",
            str(args.max_wait_ms)]
    if server == "lora":
        return ["-m", "bench.serve_lora", str(run_dir), "--batching", "mixed", *tail]
    if server.startswith(HALF):
        return ["-m", "hyperpelt", "serve", str(run_dir), "--batching", "mixed", *tail, "--dtype",
                server.removeprefix(HALF)]
    return ["-m", "hyperpelt", "serve", str(run_dir), "--batching", server, *tail]


def round_servers(args) -> list[str]:
    """The servers of a round in order: ``--servers``, each other ``--dtype``'s mixed server right after
    the float32 mixed one (so that little drift of the machine lies between them)."""
    half = [HALF + dtype for dtype in args.dtype[1:]]
    at = args.servers.index("mixed") + 1 if "mixed" in args.servers else len(args.servers)
    return [*args.servers[:at], *half, *args.servers[at:]]


def shown_command(server: str, args) -> str:
    """A server's command as the report shows it."""
    words = server_command(server, Path("runs/bench_serve/{model}"), 0, args)
    words = [w for w in words if w not in ("--port", "0")]
    return ("python " if server == "lora" else "") + " ".join(words).replace("-m hyperpelt ", "hyperpelt ")


class Server:
    """A server process on a free loopback port (``extra``: more options of its command); ``ready()``
    waits until /ready answers 200."""

    def __init__(self, server: str, run_dir: Path, args, log_file: Path, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_file.open("w")
        command = [sys.executable, *server_command(server, run_dir, self.port, args), *extra]
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


PAIRED = ("off", "mixed")  # kept alive side by side for the paired lone phase


def measure_server(served: Server, server: str, workload_path: Path, args, round_: int,
                   off_capacity: float | None) -> dict:
    """A ready server's closed loops, open loop and lone phase (a server in another dtype: its closed loops
    only), then its resident set once idle."""
    workload = json.loads(workload_path.read_text())
    seed = round_seed(args, round_)
    client = dict(url=served.url, workload=workload_path)
    phases = spawn_worker(args, "client", phases=json.dumps(closed_phases(args, workload, seed)),
                          **client)["phases"]
    if server.startswith(HALF):
        time.sleep(IDLE_S)
        return {"phases": {p["name"]: p for p in phases}, **rss_kb(served.process.pid)}
    capacity = off_capacity
    if server == "off":
        capacity = next(p["throughput"] for p in phases if p["name"] == "closed-uniform")
    later = [phase("lone", "closed", UNIFORM, args, seed + 10, concurrency=1, requests=args.lone_requests,
                   seconds=args.lone_seconds)]
    if capacity:
        rate = args.load * capacity
        later.insert(0, phase("open", "open", UNIFORM, args, seed + 11, rate=rate,
                              requests=int(rate * args.open_seconds * 2) + 10, seconds=args.open_seconds))
    phases += spawn_worker(args, "client", phases=json.dumps(later), **client)["phases"]
    time.sleep(IDLE_S)  # the batcher gives free memory back after a second idle
    return {"phases": {p["name"]: p for p in phases}, **rss_kb(served.process.pid)}


def measure_paired(kept: dict, workload_path: Path, args, round_: int) -> dict:
    """The lone request on the off and mixed servers, both alive, the same requests to each in turn."""
    paired = phase("lone-paired", "paired", UNIFORM, args, round_seed(args, round_) + 12,
                   urls={name: kept[name].url for name in PAIRED}, requests=args.lone_requests,
                   seconds=args.lone_seconds, gap_s=args.lone_gap_ms / 1000)
    done = spawn_worker(args, "client", url=kept["off"].url, workload=workload_path,
                        phases=json.dumps([paired]))
    return done["phases"][0]["servers"]


def health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def measure_overload(url: str, process: subprocess.Popen, workload_path: Path, args, seed: int,
                     capacity: float) -> dict:
    """The overload phase (bench/serving/overload.py) at ``--overload-factor`` times ``capacity``, with the
    server's resident set once idle before and after, and whether it is alive and healthy afterwards."""
    from hyperpelt.serving.settings import ServeOptions  # the servers run with its request timeout

    time.sleep(IDLE_S)
    before = rss_kb(process.pid)
    rate = args.overload_factor * capacity
    overload = phase("overload", "overload", UNIFORM, args, seed, rate=rate, seconds=args.overload_s,
                     max_in_flight=args.overload_in_flight,
                     request_timeout_s=ServeOptions().request_timeout_s, health_every_s=0.5)
    (result,) = spawn_worker(args, "client", url=url, workload=workload_path,
                             phases=json.dumps([overload]))["phases"]
    alive = process.poll() is None and health_ok(url)
    time.sleep(IDLE_S)  # the batcher gives free memory back after a second idle
    after = rss_kb(process.pid) if process.poll() is None else {}
    return {**result, "capacity": capacity, "alive_after": alive, "rss_before_kb": before["rss_kb"],
            "rss_after_kb": after.get("rss_kb"), "hwm_kb": after.get("hwm_kb")}


def measure_round(model: str, run_dir: Path, workload_path: Path, args, round_: int) -> dict:
    """Every server of ``--servers`` in turn, each started afresh; off stays alive (idle) until mixed is
    measured, for the paired lone phase; then the in-process driver and the frozen backbone."""
    out, off_capacity, kept = {"servers": {}}, None, {}
    try:
        for server in round_servers(args):
            log(f"  round {round_ + 1}, {model}: {server} server ...")
            log_file = args.cache / "logs" / f"{model}-{server}-round{round_ + 1}.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            served = Server(server, run_dir, args, log_file)
            kept[server] = served
            served.ready()
            measured = measure_server(served, server, workload_path, args, round_, off_capacity)
            out["servers"][server] = measured
            if server == "off":
                off_capacity = measured["phases"]["closed-uniform"]["throughput"]
            if all(name in kept for name in PAIRED):
                log(f"  round {round_ + 1}, {model}: off and mixed, paired lone requests ...")
                out["paired"] = measure_paired(kept, workload_path, args, round_)
            overload = server == "mixed" and args.overload_s > 0 and round_ == args.rounds - 1
            for name in [name for name in kept if name not in PAIRED or "paired" in out]:
                if not (overload and name == server):
                    kept.pop(name).stop()
            if overload:  # the mixed server alone, after all its other phases, in the last round only
                capacity = measured["phases"]["closed-uniform"]["throughput"]
                log(f"  round {round_ + 1}, {model}: mixed at {args.overload_factor:g}x its capacity ...")
                out["overload"] = measure_overload(served.url, served.process, workload_path, args,
                                                   round_seed(args, round_) + 13, capacity)
                kept.pop(server).stop()
    finally:
        for served in kept.values():
            served.stop()
    log(f"  round {round_ + 1}, {model}: in-process and frozen backbone ...")
    inproc = [closed_phase("inprocess", UNIFORM, args, round_seed(args, round_))]
    out["inprocess"] = spawn_worker(args, "inprocess", run=run_dir, workload=workload_path,
                                    phases=json.dumps(inproc), max_batch_size=args.max_batch_size,
                                    max_wait_ms=args.max_wait_ms)
    out["backbone"] = spawn_worker(args, "backbone", run=run_dir, workload=workload_path,
                                   max_batch_size=args.max_batch_size)
    return out
