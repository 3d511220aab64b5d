"""The load client, a process of its own: aiohttp closed and open loops against a server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time

from bench.serving.stats import summary, warmed_up
from bench.serving.workload import Picker, poisson_arrivals, read_instances


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
    result = summary(records, (warmed_up(start, warmup_s, seconds), exhausted[0]))
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
    bodies = [[json.dumps({"instances": [i]}).encode() for i in pool]
              for pool in read_instances(args.workload)]
    return {"phases": asyncio.run(run_phases(args.url, bodies, json.loads(args.phases)))}
