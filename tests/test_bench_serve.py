"""The serving benchmark's parts, cheaply: its draws, statistics and targets, its load client against a
stub server, the report, and the peft-LoRA engine's mixed batches."""

import asyncio
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.serve import parse_args  # noqa: E402
from bench.serving.client import run_phases  # noqa: E402
from bench.serving.report import markdown  # noqa: E402
from bench.serving.stats import closed_summary, medians, percentile, summary  # noqa: E402
from bench.serving.targets import checks  # noqa: E402
from bench.serving.workload import Picker, poisson_arrivals, popularity_weights  # noqa: E402


def test_popularity_weights():
    assert popularity_weights("uniform", 8) == [0.125] * 8
    zipf = popularity_weights("zipf", 8)
    harmonic = sum(1 / k for k in range(1, 9))
    assert zipf[0] == pytest.approx(1 / harmonic) and zipf[0] / zipf[1] == pytest.approx(2)
    assert zipf[0] / zipf[7] == pytest.approx(8) and sum(zipf) == pytest.approx(1)
    assert popularity_weights("one", 8, one=5) == [0, 0, 0, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError):
        popularity_weights("pareto", 8)


def test_picker_draws_tasks_by_popularity_and_is_seeded():
    bodies = [[f"{t}-{i}".encode() for i in range(3)] for t in range(8)]
    weights = popularity_weights("zipf", 8)
    picker = Picker(bodies, weights, seed=1)
    drawn = [picker() for _ in range(40000)]
    for task in range(8):
        share = sum(body.startswith(f"{task}-".encode()) for body in drawn) / len(drawn)
        assert share == pytest.approx(weights[task], abs=0.01)
    again = Picker(bodies, weights, seed=1)
    assert [again() for _ in range(100)] == drawn[:100]
    one = Picker(bodies, popularity_weights("one", 8, one=3), seed=2)
    assert {one()[:2] for _ in range(1000)} == {b"3-"}


def test_poisson_arrivals_have_the_rate_and_the_bounds():
    times = poisson_arrivals(100.0, 10**6, 50.0, seed=0)
    assert times == sorted(times) and times[-1] < 50.0
    assert len(times) == pytest.approx(5000, rel=0.05)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sum(gaps) / len(gaps) == pytest.approx(0.01, rel=0.05)
    assert sum(g > 0.03 for g in gaps) / len(gaps) == pytest.approx(math.exp(-3), abs=0.01)  # exponential
    assert len(poisson_arrivals(100.0, 30, 50.0, seed=0)) == 30
    assert poisson_arrivals(100.0, 30, 50.0, seed=0) == times[:30]


def test_percentile_and_summary():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50.5 and percentile(values, 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0 and math.isnan(percentile([], 50))
    # (sent, answered, ok): two before the window, one failed, three answered in the window of 2 s
    records = [(0.0, 0.5, True), (0.2, 0.9, True), (1.0, 1.5, True), (1.2, 1.4, False), (1.5, 2.0, True),
               (2.5, 2.9, True)]
    out = summary(records, (1.0, 3.0))
    assert out["throughput"] == 1.5 and out["errors"] == 1 and out["measured"] == 3
    assert out["p50_ms"] == pytest.approx(500) and out["requests"] == 6


def test_closed_loop_throughput_has_no_step_of_a_batch():
    # 4 senders in step, each request answered 1 s after it was sent, all answers of a "batch" together
    sends = [[float(t) for t in range(12)] for _ in range(4)]
    records = [(t, t + 1.0, True) for times in sends for t in times]
    out = closed_summary(records, sends, (0.5, 10.2))
    assert out["answered_per_s"] == pytest.approx(40 / 9.7)  # 10 batches of answers counted in 9.7 s
    assert out["throughput"] == pytest.approx(4.0)  # each sender: one request a second
    failing = [(t0, t1, k >= 12) for k, (t0, t1, _) in enumerate(records)]  # the first sender's all fail
    assert closed_summary(failing, sends, (0.5, 10.2))["throughput"] == pytest.approx(3.0)
    assert math.isnan(closed_summary(records, sends, (20.0, 30.0))["throughput"])
    # a window shorter than a cycle (one request each 3 s): each sender timed from its sends around it
    slow = [[0.0, 3.0, 6.0] for _ in range(4)]
    out = closed_summary([(t, t + 3.0, True) for times in slow for t in times], slow, (1.0, 2.5))
    assert out["throughput"] == pytest.approx(4 / 3)


def stub_app(delay_s: float, seen: list, name: str | None = None):
    """A server answering after ``delay_s``; it notes each request's task in ``seen`` (with ``name``:
    (name, task) on arrival and (name, None) on answering)."""
    from aiohttp import web

    async def predict(request):
        body = await request.json()
        task = body["instances"][0]["task"]
        seen.append(task if name is None else (name, task))
        await asyncio.sleep(delay_s)
        if name is not None:
            seen.append((name, None))
        return web.json_response({"predictions": [{}]})

    app = web.Application()
    app.router.add_post("/v1/predict", predict)
    return app


async def serve_stubs(apps: list, run) -> list:
    """``run(urls)`` with each aiohttp app of ``apps`` on a free loopback port."""
    from aiohttp import web

    runners, urls = [], []
    try:
        for app in apps:
            runner = web.AppRunner(app)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
        return await run(urls)
    finally:
        for runner in runners:
            await runner.cleanup()


def test_client_closed_and_open_loops_against_a_stub_server():
    pytest.importorskip("aiohttp")
    seen: list = []
    bodies = [[json.dumps({"instances": [{"task": t}]}).encode()] for t in ("a", "b")]

    async def run(urls):
        uniform = popularity_weights("uniform", 2)
        phases = [
            {"name": "closed", "mode": "closed", "weights": uniform, "seed": 0, "warmup_s": 0.2,
             "concurrency": 4, "requests": 10**6, "seconds": 1.2},
            {"name": "one", "mode": "closed", "weights": popularity_weights("one", 2, one=1), "seed": 0,
             "warmup_s": 0.0, "concurrency": 2, "requests": 20, "seconds": 30},
            {"name": "open", "mode": "open", "weights": uniform, "seed": 0, "warmup_s": 0.2, "rate": 50.0,
             "requests": 10**6, "seconds": 1.2},
        ]
        return await run_phases(urls[0], bodies, phases)

    closed, one, open_ = asyncio.run(serve_stubs([stub_app(0.02, seen)], run))
    # 4 requests in flight, each held 20 ms: at most 200 answers per second, each taking 20 ms or more
    assert 40 < closed["throughput"] <= 205 and closed["errors"] == 0
    assert 20 <= closed["p50_ms"] <= closed["p99_ms"] and closed["concurrency"] == 4
    first = seen[:closed["requests"]]
    assert 0.3 < first.count("a") / len(first) < 0.7
    # the request bound, and the one task
    assert one["requests"] == 20 and seen[len(first):len(first) + 20] == ["b"] * 20
    assert open_["rate"] == 50.0 and 20 <= open_["p50_ms"] and open_["errors"] == 0
    assert 25 < open_["throughput"] < 75  # answers at about the arrival rate, not as fast as it can
    assert len(seen) == len(first) + 20 + open_["requests"]


def test_paired_lone_requests_go_to_both_servers_one_at_a_time_alternating_which_first():
    pytest.importorskip("aiohttp")
    seen: list = []
    bodies = [[json.dumps({"instances": [{"task": f"{t}{i}"}]}).encode() for i in range(50)] for t in "ab"]
    phase = {"name": "lone-paired", "mode": "paired", "weights": popularity_weights("uniform", 2), "seed": 3,
             "warmup_s": 0.0, "requests": 20, "seconds": 30, "gap_s": 0.01}

    async def run(urls):
        urls_by_name = {"off": urls[0], "mixed": urls[1]}
        return await run_phases(urls[0], bodies, [{**phase, "urls": urls_by_name}])

    apps = [stub_app(0.02, seen, "off"), stub_app(0.03, seen, "mixed")]
    start = time.perf_counter()
    (result,) = asyncio.run(serve_stubs(apps, run))
    assert time.perf_counter() - start >= 20 * (0.02 + 0.03 + 2 * 0.01)  # the answers and the gaps
    off, mixed = result["servers"]["off"], result["servers"]["mixed"]
    assert result["name"] == "lone-paired" and off["measured"] == mixed["measured"] == 20
    assert 20 <= off["p50_ms"] and mixed["p50_ms"] - off["p50_ms"] == pytest.approx(10, abs=5)
    # one request at a time: each arrival is answered before the next arrives
    arrivals, answers = seen[0::2], seen[1::2]
    assert len(arrivals) == 40 and all(a[0] == b[0] and b[1] is None for a, b in zip(arrivals, answers))
    # the same text to both servers, the first of the two alternating
    assert all(a[1] == b[1] for a, b in zip(arrivals[0::2], arrivals[1::2]))
    assert [a[0] for a in arrivals[:8]] == ["off", "mixed", "mixed", "off"] * 2
    assert len({a[1] for a in arrivals}) > 5


def rounds(mixed_throughput: list[float]) -> list[dict]:
    """Rounds of made-up figures: off 10 req/s, by-task 16, LoRA 20, one-task mixed 1.05x mixed."""
    out = []
    for mixed in mixed_throughput:
        def server(throughput, one, open_p99, lone_p50, rss=None):
            phases = {"closed-uniform": {"throughput": throughput, "p50_ms": 100.0, "p99_ms": 200.0},
                      "closed-one": {"throughput": one, "p50_ms": 90.0, "p99_ms": 150.0},
                      "open": {"throughput": 7.0, "p50_ms": 50.0, "p99_ms": open_p99, "rate": 7.0,
                               "errors": 0},
                      "lone": {"throughput": 20.0, "p50_ms": lone_p50, "p99_ms": lone_p50 + 5}}
            return {"phases": phases, "rss_kb": rss or 600 * 1024, "hwm_kb": 650 * 1024,
                    "anon_kb": 400 * 1024}

        out.append({"servers": {"off": server(10.0, 10.0, 400.0, 40.0),
                                "by-task": server(16.0, 16.0, 300.0, 45.0),
                                "mixed": server(mixed, 1.05 * mixed, 80.0, 46.0, rss=575 * 1024),
                                "lora": server(20.0, 20.0, 100.0, 48.0)},
                    "inprocess": {"phases": [{"name": "inprocess", "throughput": mixed / 0.9, "p50_ms": 1.0,
                                              "p99_ms": 2.0}], "rss_kb": 550 * 1024, "hwm_kb": 560 * 1024},
                    "backbone": {"rss_kb": 500 * 1024, "hwm_kb": 510 * 1024, "anon_kb": 380 * 1024},
                    "paired": {"off": {"p50_ms": 20.0, "measured": 200},
                               "mixed": {"p50_ms": 20.0 + mixed / 4, "measured": 200}}})
    return out


def results_of(args, data: list[dict], machine: str = "2 CPUs") -> dict:
    """A benchmark's results as bench/serve.py gathers them, for the minilm rounds ``data``."""
    return {"machine": machine, "code": "git 1b9657f",
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "checks": [vars(c) for c in checks("minilm", data, args)],
            "models": {"minilm": {"rounds": data, "medians": medians(data), "describe": "MiniLM",
                                  "workload": {"one_task": "qnli", "mean_length": {"qnli": 49.7},
                                               "uniform_mean_length": 45.9}}}}


def test_checks_take_the_median_of_the_rounds_ratios():
    args = parse_args(["--rounds", "3"])
    found = {c.name: c for c in checks("minilm", rounds([30.0, 24.0, 26.0]), args)}
    assert found["mixed / off throughput"].value == pytest.approx(2.6)
    assert found["mixed / off throughput"].holds and found["mixed / off throughput"].meets(2.5)
    assert found["mixed / by-task throughput (uniform)"].value == pytest.approx(26 / 16)
    assert found["mixed uniform / mixed one-task throughput"].value == pytest.approx(1 / 1.05)
    assert found["HyperPELT mixed / peft-LoRA mixed throughput"].value == pytest.approx(1.3)
    assert found["served / in-process throughput"].value == pytest.approx(0.9)
    p99 = found["mixed p99 / off p99 at 0.7x off capacity"]
    assert p99.value == pytest.approx(0.2) and p99.lower_is_better and p99.holds
    lone = found["lone request p50, mixed - off (ms)"]  # the paired phase's, not the lone phases'
    assert lone.value == pytest.approx(6.5) and lone.threshold == 7.0 and lone.holds
    assert {c.name: c for c in checks("minilm", rounds([30.0, 30.0, 26.0]), args)}[
        "lone request p50, mixed - off (ms)"].holds is False
    memory = found["server RSS (8 tasks) / frozen backbone RSS"]
    assert memory.value == pytest.approx(1.15) and memory.holds
    t5 = {c.name: c for c in checks("t5", rounds([26.0]), args)}
    assert t5["mixed / off throughput"].threshold == 3.0 and t5["mixed / off throughput"].holds is False


def test_report_shows_each_ratio_with_its_command_and_whether_it_holds():
    args = parse_args(["--models", "minilm"])
    data = rounds([26.0, 30.0, 24.0])
    results = results_of(args, data)
    report = markdown(results, "python -m bench.serve --models minilm")
    assert "Command: `python -m bench.serve --models minilm`" in report
    assert "Code: git 1b9657f." in report
    assert ("| minilm | mixed / off throughput | 2.60 | ≥ 1.6 | ≥ 2.5 | yes | `hyperpelt serve "
            "runs/bench_serve/minilm --batching mixed --max-batch-size 16 --max-wait-ms 5.0` / "
            "`hyperpelt serve runs/bench_serve/minilm --batching off") in report
    assert "`python -m bench.serve_lora runs/bench_serve/minilm --batching mixed" in report
    assert "| minilm | mixed uniform / mixed one-task throughput | 0.95 | ≥ 0.9 | ≥ 0.97 | yes |" in report
    assert "Targets met: all." in report
    assert "| mixed | 26.0 | 30.0 | 24.0 |" in report  # every round's figure behind the median
    assert "| 2 | 200 | 20.0 | 27.5 | 7.5 |" in report  # each round's paired lone requests
    assert "| mixed | 575 | 400 | 650 |" in report and "| frozen backbone alone | 500 | 380 | 510 |" in report
    results["checks"][0]["value"] = 1.2
    assert "Targets not met: minilm: mixed / off throughput." in markdown(results, "x")


def test_lora_engine_answers_a_mixed_batch_as_each_adapter_alone():
    pytest.importorskip("peft")
    import torch

    from bench.serve_lora import LoraEngine, LoraModel
    from conftest import minilm_config
    from hyperpelt.heads import HeadsConfig
    from hyperpelt.tasks import get_task

    heads = HeadsConfig(pair_encoding="separate", pair_head="alignment")
    torch.manual_seed(0)
    model = LoraModel(minilm_config(), [get_task(t) for t in ("rte", "sst2", "stsb")], heads, rank=8)
    engine = LoraEngine(model)
    assert engine.describe() == {"model": "minilm-l6", "method": "peft-lora-r8"} and engine.table_builds == 0
    pair = {"sentence1": "A man plays a guitar.", "sentence2": "Someone makes music."}
    asked = [{"task": "stsb", **pair}, {"task": "sst2", "sentence": "a fine film"}, {"task": "rte", **pair},
             {"task": "stsb", "sentence1": "A cat sleeps.", "sentence2": "Markets fell."}]
    items = [engine.prepare(instance, i) for i, instance in enumerate(asked)]
    mixed = engine.run(items)
    alone = [engine.run([item])[0] for item in items]
    assert [a["task"] for a in mixed] == ["stsb", "sst2", "rte", "stsb"]
    assert [a["value"] for a in mixed] == pytest.approx([a["value"] for a in alone], abs=1e-4)
    # the adapters differ: the same pair read through rte's adapter gives another encoding than stsb's
    with torch.no_grad():
        batch = {k: torch.tensor([v]) for k, v in items[0].feature.items() if k.startswith("input_ids")}
        hidden = [model.peft(input_ids=batch["input_ids"], adapter_names=[name]).last_hidden_state
                  for name in ("stsb", "rte")]
    assert not torch.allclose(*hidden)


def test_dtype_adds_a_mixed_server_in_each_other_dtype_right_after_the_float32_one():
    from bench.serving.servers import round_servers, shown_command

    assert parse_args([]).dtype == ["float32"] and round_servers(parse_args([])) == list(
        ("off", "by-task", "mixed", "lora"))
    args = parse_args(["--dtype", "bfloat16,float16"])
    assert args.dtype == ["float32", "bfloat16", "float16"]
    assert round_servers(args) == ["off", "by-task", "mixed", "mixed-bfloat16", "mixed-float16", "lora"]
    assert round_servers(parse_args(["--servers", "off", "--dtype", "bfloat16"])) == ["off", "mixed-bfloat16"]
    assert shown_command("mixed-bfloat16", args) == (
        "hyperpelt serve runs/bench_serve/{model} --batching mixed --max-batch-size 16 --max-wait-ms 5.0 "
        "--dtype bfloat16")
    with pytest.raises(SystemExit):
        parse_args(["--dtype", "int8"])


def test_report_gives_each_dtype_mixed_throughput_against_float32():
    args = parse_args(["--models", "minilm", "--dtype", "bfloat16"])
    data = rounds([26.0, 30.0, 24.0])
    for r, bf16 in zip(data, (39.0, 36.0, 30.0)):  # ratios 1.5, 1.2, 1.25: median 1.25
        r["servers"]["mixed-bfloat16"] = {
            "phases": {name: {**phase, "throughput": bf16} for name, phase in
                       r["servers"]["mixed"]["phases"].items() if name.startswith("closed")},
            "rss_kb": 450 * 1024, "hwm_kb": 500 * 1024, "anon_kb": 300 * 1024}
    results = results_of(args, data, "2 CPUs (Xeon, AMX-BF16)")
    report = markdown(results, "python -m bench.serve --models minilm --dtype bfloat16")
    assert "| dtype | uniform | one | RSS | uniform / float32 |" in report  # the rounds' popularities
    assert "| float32 | 26.0 (100.0 / 200.0) | 27.3 (90.0 / 150.0) | 575 | 1.000 |" in report
    assert "| bfloat16 | 36.0 (100.0 / 200.0) | 36.0 (90.0 / 150.0) | 450 | 1.250 |" in report
    assert "| mixed-bfloat16 |" not in report  # not among the float32 servers' tables
    del results["models"]["minilm"]["rounds"][0]["servers"]["mixed-bfloat16"]
    results["settings"]["dtype"] = ["float32"]
    assert "uniform / float32" not in markdown(results, "x")


def counting_stub(seen: list):
    """A server whose n-th predict request answers by n % 10: 429, 503, 504, 500 once in ten each, else 200
    after 20 ms; /health answers 200."""
    from aiohttp import web

    refusals = {1: 429, 3: 503, 5: 504, 7: 500}

    async def predict(request):
        await request.read()
        seen.append(None)
        status = refusals.get(len(seen) % 10, 200)
        if status == 200:
            await asyncio.sleep(0.02)
        return web.json_response({"predictions": [{}]} if status == 200 else {"error": "x"}, status=status)

    async def health(request):
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/v1/predict", predict)
    app.router.add_get("/health", health)
    return app


@contextmanager
def stub_in_thread(app):
    """``app`` served on a free loopback port by an event loop on a thread of its own; yields its URL."""
    import threading

    from aiohttp import web

    loop, ready = asyncio.new_event_loop(), threading.Event()
    runner, urls = web.AppRunner(app), []

    async def start():
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()),
                              daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield urls[0]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_overload_phase_counts_every_request_and_reports_the_targets(tmp_path, monkeypatch):
    pytest.importorskip("aiohttp")
    import os
    from types import SimpleNamespace

    from bench.serving import servers

    monkeypatch.setattr(servers, "IDLE_S", 0.0)
    args = parse_args(["--models", "minilm", "--overload-s", "1.5", "--overload-factor", "10",
                       "--overload-in-flight", "3", "--threads", "1"])
    args.data = tmp_path
    workload = tmp_path / "workload.json"
    tasks = [f"t{k}" for k in range(8)]  # the bench's phases draw from its 8 tasks
    workload.write_text(json.dumps({"tasks": tasks, "instances": {t: [{"task": t}] for t in tasks}}))
    seen: list = []
    this_process = SimpleNamespace(pid=os.getpid(), poll=lambda: None)
    with stub_in_thread(counting_stub(seen)) as url:
        o = servers.measure_overload(url, this_process, workload, args, seed=5, capacity=20.0)
    arrivals = poisson_arrivals(200.0, 10**6, 1.5, seed=5)
    # every arrival sent or skipped at the client's bound of 3 outstanding; every sent one counted once
    assert o["rate"] == 200.0 and o["sent"] + o["skipped"] == len(arrivals) and o["skipped"] > 0
    assert o["sent"] == len(seen) == o["answered"] + o["429"] + o["503"] + o["504"] + sum(o["other"].values())
    assert set(o["other"]) == {"500"} and all(o[k] > 0 for k in ("answered", "429", "503", "504"))
    assert o["answered"] == pytest.approx(0.6 * o["sent"], abs=2) and o["p99_ms"] >= o["p50_ms"] >= 20
    assert o["accepted_unfinished"] == o["other"]["500"]  # a 500 is neither an answer nor a 504
    assert o["health_polls"] >= 3 and o["health_not_200"] == 0 and o["health_worst_ms"] < 5000
    assert o["alive_after"] and o["rss_before_kb"] > 0 and o["rss_after_kb"] > 0
    # the report's own section, its targets from these figures
    data = rounds([26.0])
    data[0]["overload"] = o
    results = results_of(args, data)
    section = markdown(results, "x").split("## Overload")[1]
    assert "at 10x its closed-loop uniform throughput" in section and "at most 3 outstanding" in section
    assert (f"| minilm | 20.0 | 200.0 | {o['sent']} | {o['skipped']} | {o['answered']} | {o['429']} | "
            f"{o['503']} | {o['504']} | {o['other']['500']} × 500 |") in section
    assert f"| minilm | no 5xx but 503 and 504 | {o['other']['500']} other 5xx | **no** |" in section
    assert "| minilm | no crash: the process alive and /health 200 afterwards | alive | yes |" in section
    assert "Overload targets not met: minilm: no 5xx but 503 and 504; minilm: every accepted" in section
    o.update(other={}, accepted_unfinished=0, rss_before_kb=1000, rss_after_kb=1400)
    section = markdown(results, "x").split("## Overload")[1]
    assert "| minilm | RSS after <= 1.3x before | 1.40x | **no** |" in section
    o["rss_after_kb"] = 1300
    assert "Overload targets met: all." in markdown(results, "x")
    assert "## Overload" not in markdown({**results, "models": {"minilm": {
        **results["models"]["minilm"], "rounds": rounds([26.0])}}}, "x")
