"""The load client, a process of its own: aiohttp closed, open and overload loops against a server on
127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import json
import time

from bench.serving.overload import overload_loop
from bench.serving.stats import closed_summary, summary, warmed_up
from bench.serving.workload import Picker, phase_weights, poisson_arrivals, request_bodies


async def closed_loop(post, pick, concurrency: int, max_requests: int, seconds: float,
                      warmup_s: float) -> dict:
    """``concurrency`` workers, each sending its next request when its last is answered, until
    ``max_requests`` are sent or ``seconds`` have passed; figures after ``warmup_s``."""
    start = time.perf_counter()
    stop, records, issued = start + seconds, [], 0
    exhausted, sends = [stop], [[] for _ in range(concurrency)]

    async def worker(sent: list):
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
            sent.append(t0)
            ok = await post(body)
            records.append((t0, time.perf_counter(), ok))

    await asyncio.gather(*(worker(sent) for sent in sends))
    result = closed_summary(records, sends, (warmed_up(start, warmup_s, seconds), exhausted[0]))
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
    result = summary(records, (warmed_up(start, warmup_s, seconds), start + seconds))
    return {**result, "rate": rate}


async def paired_loop(posts: dict, pick, max_pairs: int, seconds: float, warmup_s: float,
                      gap_s: float = 0.0) -> dict:
    """Lone requests to two servers kept alive side by side: each body goes to one, then to the other, one
    request at a time, the first of the two alternating; so both answer the same requests at nearly the
    same moments, and neither a drift of the machine's speed nor the draw of texts tells them apart. Each
    request is sent ``gap_s`` after the last answer, so it finds the machine idle: no thread of the other
    server still spinning after its forward. Figures of the requests sent after ``warmup_s``, by server."""
    start = time.perf_counter()
    stop, records = start + seconds, {name: [] for name in posts}
    names = list(posts)
    for i in range(max_pairs):
        if time.perf_counter() >= stop:
            break
        body = pick()
        for name in names if i % 2 == 0 else reversed(names):
            await asyncio.sleep(gap_s)
            t0 = time.perf_counter()
            ok = await posts[name](body)
            records[name].append((t0, time.perf_counter(), ok))
    window = (warmed_up(start, warmup_s, seconds), time.perf_counter())
    return {"servers": {name: summary(r, window) for name, r in records.items()}}


async def run_phases(url: str, bodies: list[list[bytes]], phases: list[dict]) -> list[dict]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1024)
    timeout = aiohttp.ClientTimeout(total=120)
    headers = {"Content-Type": "application/json"}
    out = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def post(body: bytes, to: str = url) -> bool:
            try:
                async with session.post(to + "/v1/predict", data=body, headers=headers) as response:
                    await response.read()
                    return response.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        for phase in phases:
            pick = Picker(bodies, phase_weights(phase["weights"], len(bodies)), phase["seed"])
            if phase["mode"] == "closed":
                result = await closed_loop(post, pick, phase["concurrency"], phase["requests"],
                                           phase["seconds"], phase["warmup_s"])
            elif phase["mode"] == "overload":
                result = await overload_loop(url, pick, phase)
            elif phase["mode"] == "paired":
                posts = {name: functools.partial(post, to=to) for name, to in phase["urls"].items()}
                result = await paired_loop(posts, pick, phase["requests"], phase["seconds"],
                                           phase["warmup_s"], phase["gap_s"])
            else:
                result = await open_loop(post, pick, phase["rate"], phase["requests"], phase["seconds"],
                                         phase["warmup_s"], phase["seed"])
            out.append({"name": phase["name"], **result})
    return out


def worker_client(args) -> dict:
    urls = [args.url, *(u for p in json.loads(args.phases) for u in p.get("urls", {}).values())]
    if not all(u.startswith("http://127.0.0.1:") for u in urls):
        raise SystemExit("the load client only talks to 127.0.0.1")
    bodies = request_bodies(args.workload)
    return {"phases": asyncio.run(run_phases(args.url, bodies, json.loads(args.phases)))}
