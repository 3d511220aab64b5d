"""The overload phase: a server driven well past its capacity, and whether it stays well-behaved.

Requests arrive at Poisson times of ``rate`` per second for ``seconds``; the client keeps at most
``max_in_flight`` of them outstanding and counts the arrivals past that bound as skipped, so that the client
itself stays bounded (in sockets, tasks and memory) whatever the server does. Each sent request ends as its
HTTP status or as "error" (no answer: a connection failure or the client's own timeout, set past the
server's request timeout). Meanwhile /health is asked every ``health_every_s`` on a connection of its own
(a new one each time, as an orchestrator's probe), and its worst latency kept.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.serving.stats import percentile
from bench.serving.workload import poisson_arrivals

REFUSED = (429, 503)  # refused at admission: not accepted
HEALTH_LIMIT_S = 1.0
RSS_GROWTH = 1.3
LATE_GRACE_S = 1.0  # past the server's request timeout, an accepted request's answer counts as late


async def poll_health(session, url: str, every_s: float, stop: asyncio.Event) -> list[tuple[int, float]]:
    """(status, seconds) of a GET /health every ``every_s`` until ``stop``; status 0: no answer."""
    import aiohttp

    polls = []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            async with session.get(url + "/health") as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            status = 0
        polls.append((status, time.perf_counter() - t0))
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, every_s - (time.perf_counter() - t0)))
        except asyncio.TimeoutError:
            pass
    return polls


async def overload_loop(url: str, pick, phase: dict) -> dict:
    """Send ``phase["rate"]`` requests per second for ``phase["seconds"]`` (see the module's docstring)."""
    import aiohttp

    arrivals = poisson_arrivals(phase["rate"], int(phase["rate"] * phase["seconds"] * 2) + 10,
                                phase["seconds"], phase["seed"])
    bound, timeout_s = phase["max_in_flight"], phase["request_timeout_s"] + 10
    records: list[tuple[int | str, float]] = []
    in_flight, skipped = 0, 0
    stop = asyncio.Event()
    load = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=bound),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))
    probe = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, force_close=True),
                                  timeout=aiohttp.ClientTimeout(total=5 * HEALTH_LIMIT_S))
    headers = {"Content-Type": "application/json"}

    async def one(body: bytes):
        nonlocal in_flight
        t0 = time.perf_counter()
        try:
            async with load.post(url + "/v1/predict", data=body, headers=headers) as response:
                await response.read()
                status: int | str = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            status = "error"
        finally:
            in_flight -= 1
        records.append((status, time.perf_counter() - t0))

    async with load, probe:
        health = asyncio.ensure_future(poll_health(probe, url, phase["health_every_s"], stop))
        pending = []
        start = time.perf_counter()
        for offset in arrivals:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))  # yields even when late
            if in_flight >= bound:
                skipped += 1
                continue
            in_flight += 1
            pending.append(asyncio.ensure_future(one(pick())))
        sending_s = time.perf_counter() - start
        if pending:
            await asyncio.wait(pending)  # each ends by the client's timeout
        stop.set()
        polls = await health
    return overload_summary(records, polls, skipped, sending_s, phase)


def overload_summary(records: list[tuple[int | str, float]], polls: list[tuple[int, float]], skipped: int,
                     sending_s: float, phase: dict) -> dict:
    """Counts by outcome, the answered requests' latency, the accepted requests' longest wait, /health."""
    codes: dict[str, int] = {}
    for status, _ in records:
        codes[str(status)] = codes.get(str(status), 0) + 1
    answered = [1000 * s for status, s in records if status == 200]
    accepted = [(status, s) for status, s in records if status not in REFUSED]
    limit_s = phase["request_timeout_s"] + LATE_GRACE_S
    return {"rate": phase["rate"], "seconds": phase["seconds"], "sent": len(records), "skipped": skipped,
            "sending_s": sending_s, "max_in_flight": phase["max_in_flight"],
            "answered": codes.get("200", 0), "429": codes.get("429", 0), "503": codes.get("503", 0),
            "504": codes.get("504", 0),
            "other": {k: n for k, n in codes.items() if k not in ("200", "429", "503", "504")},
            "p50_ms": percentile(answered, 50), "p99_ms": percentile(answered, 99),
            "accepted_longest_s": max((s for _, s in accepted), default=0.0),
            "accepted_unfinished": sum(status not in (200, 504) or s > limit_s for status, s in accepted),
            "request_timeout_s": phase["request_timeout_s"],
            "health_polls": len(polls), "health_not_200": sum(1 for status, _ in polls if status != 200),
            "health_worst_ms": 1000 * max((s for _, s in polls), default=float("nan"))}


@dataclass
class OverloadCheck:
    name: str
    value: str
    holds: bool


def overload_checks(result: dict) -> list[OverloadCheck]:
    """The issue's overload targets, each with the figure it reads."""
    other_5xx = sum(n for code, n in result["other"].items() if code.isdigit() and int(code) >= 500)
    before, after = result["rss_before_kb"], result["rss_after_kb"]
    growth = after / before if before and after else float("nan")
    late = result["accepted_unfinished"]
    return [
        OverloadCheck("no 5xx but 503 and 504", f"{other_5xx} other 5xx", other_5xx == 0),
        OverloadCheck("no crash: the process alive and /health 200 afterwards",
                      "alive" if result["alive_after"] else "**exited**", result["alive_after"]),
        OverloadCheck(f"/health answered 200 within {HEALTH_LIMIT_S:g} s throughout",
                      f"worst {result['health_worst_ms']:.0f} ms, {result['health_not_200']} of "
                      f"{result['health_polls']} not 200",
                      result["health_not_200"] == 0 and result["health_worst_ms"] < 1000 * HEALTH_LIMIT_S),
        OverloadCheck(f"RSS after <= {RSS_GROWTH:g}x before", f"{growth:.2f}x", growth <= RSS_GROWTH),
        OverloadCheck(f"every accepted request answered or 504 within the request timeout "
                      f"({result['request_timeout_s']:g} s, +{LATE_GRACE_S:g} s)",
                      f"{late} not; longest {result['accepted_longest_s']:.1f} s", late == 0),
    ]
