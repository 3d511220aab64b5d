"""The measuring processes without HTTP: the frozen backbone's memory, the engine driven in-process."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.serving.client import worker_client
from bench.serving.stats import closed_summary, warmed_up
from bench.serving.workload import Picker, read_instances
from bench.worker_result import print_result


def rss_kb(pid: int | str = "self") -> dict:
    """The process's resident set now, at its peak, and its private (anonymous) part now (kB), from /proc
    (Linux). The rest of the resident set is pages of files: mostly the code of the libraries it ran."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon"):
            fields[key] = int(value.split()[0])
    return {"rss_kb": fields.get("VmRSS"), "hwm_kb": fields.get("VmHWM"), "anon_kb": fields.get("RssAnon")}


def worker_backbone(args) -> dict:
    """Load only the run's frozen backbone and tokenizer, as the server builds them (the run's seed first,
    so a random T5 is drawn the same way), and run it on the workload's texts in padded batches of
    ``--max-batch-size`` (their fields joined into one text; T5 generates), so that it has run the
    library code and held the activations a serving process does; then free memory goes back, as the
    server's batcher gives it back when idle."""
    import random

    import torch

    from hyperpelt.backbones import get_backbone
    from hyperpelt.inference import run_config
    from hyperpelt.quiet import quiet_libraries
    from hyperpelt.serving.batcher import release_free_memory

    quiet_libraries()
    config = run_config(args.run)
    torch.manual_seed(config.train.seed)
    backbone = get_backbone(config.model.name, config.model.trust_remote_code)
    host = backbone.load_host(config.model).eval()
    tokenizer = backbone.load_tokenizer(config.model)
    host.requires_grad_(False)
    texts = [" ".join(v for k, v in instance.items() if k != "task")
             for instances in read_instances(args.workload) for instance in instances]
    random.Random(0).shuffle(texts)
    size = args.max_batch_size
    with torch.no_grad():
        for start in range(0, min(len(texts), 40 * size), size):
            batch = tokenizer(texts[start:start + size], padding=True, truncation=True, return_tensors="pt",
                              max_length=config.model.max_input_length)
            if backbone.generative:
                host.generate(**batch, max_new_tokens=config.model.max_target_length, do_sample=False)
            else:
                host(**batch)
    release_free_memory()
    return rss_kb()


def worker_inprocess(args) -> dict:
    """The mixed server's engine driven by hyperpelt's Batcher directly (see ``drive``)."""
    from hyperpelt.serving.batcher import release_free_memory
    from hyperpelt.serving.settings import ServeOptions, load_engine

    engine = load_engine(Path(args.run), ServeOptions())
    spec = json.loads(args.phases)[0]
    result = drive(engine, read_instances(args.workload), spec, args.max_batch_size, args.max_wait_ms)
    release_free_memory()  # as the server's batcher does once idle
    return {"phases": [result], **rss_kb()}


def drive(engine, instances: list[list[dict]], spec: dict, max_batch_size: int, max_wait_ms: float,
          batching: str = "mixed") -> dict:
    """A closed loop of ``spec`` (a phase: concurrency, requests, seconds, task weights, seed, warm-up) on
    ``engine`` through hyperpelt's ``Batcher`` in ``batching`` mode, no HTTP: ``concurrency`` requests
    outstanding, each drawn from ``instances`` (one list per task) and encoded by ``Engine.prepare`` on
    this thread as the HTTP layer does. The engine is warmed up first, as the server does."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from hyperpelt.serving.batcher import Batcher

    for batch in engine.warm_up_items():
        engine.run(batch)
    batcher = Batcher(engine.run, max_batch_size, 4096, max_wait_ms / 1000, batching).start()
    pick = Picker(instances, spec["weights"], spec["seed"])
    start = time.perf_counter()
    stop, records, sent, pending = start + spec["seconds"], [], 0, {}
    exhausted, sends = stop, [[] for _ in range(spec["concurrency"])]

    def send(sender: int):
        nonlocal sent
        sent += 1
        t0 = time.perf_counter()
        sends[sender].append(t0)
        future = batcher.submit([engine.prepare(pick(), 0)], 120.0)[0]
        pending[future] = (t0, sender)

    for sender in range(spec["concurrency"]):
        send(sender)
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        now = time.perf_counter()
        for future in done:
            t0, sender = pending.pop(future)
            records.append((t0, now, future.exception() is None))
            if now < stop and sent < spec["requests"]:
                send(sender)
            elif sent >= spec["requests"]:
                exhausted = min(exhausted, now)
    batcher.stop(5)
    result = closed_summary(records, sends, (warmed_up(start, spec["warmup_s"], spec["seconds"]), exhausted))
    return {"name": spec["name"], **result, "concurrency": spec["concurrency"]}


def run_worker(args) -> None:
    """Run ``--worker``'s measurement and print its result on a line ``RESULT {json}``."""
    if args.worker != "client":  # the client needs no torch
        import torch

        torch.set_num_threads(args.threads)
    result = {"client": worker_client, "backbone": worker_backbone, "inprocess": worker_inprocess}[
        args.worker](args)
    print_result(result)
