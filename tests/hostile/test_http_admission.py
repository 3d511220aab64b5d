"""Hostile HTTP cases of admission, deadlines and liveness (issue 32): work is refused before it is done,
every request ends by its timeout wherever it waits, a dead inference worker is said at once, float
options must be finite, and the event loop stays free while instances are prepared.

The cases share a real in-process server over a tiny one-task MiniLM run with a 1 s request timeout and
a queue of 4; the ones that break or retune the server get their own.
"""

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import ROOT, train_run  # noqa: E402
from helpers.serving import call, in_process_server  # noqa: E402

RUN = ["model.name=minilm-l6", "model.max_input_length=16", "method.prefix_length=2", "method.hyper_dim=8",
       "method.task_dim=8", "method.projector_hidden=16", "method.adapter_dim=4", "data.tasks=[sst2]",
       "data.max_train_examples=8", "data.max_eval_examples=4", "train.steps=1", "train.eval_every=1",
       "train.batch_size=4", "train.eval_batch_size=4"]
GOOD = {"task": "sst2", "sentence": "a fine film"}
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("admission"), RUN)


@pytest.fixture(scope="module")
def server(run_dir):
    with in_process_server(run_dir, max_queue=4, max_batch_size=2, max_wait_ms=1,
                           request_timeout_s=TIMEOUT_S) as served:
        yield served


def predict(base: str, items: list):
    return call(base + "/v1/predict", {"instances": items})


def wait_until(condition, limit_s: float = 10.0) -> None:
    end = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < end, "the server never got there"
        time.sleep(0.01)


@contextmanager
def held_inference(service):
    """The inference thread holds the batch it takes until the block ends."""
    gate, run = threading.Event(), service.batcher.run
    service.batcher.run = lambda items: (gate.wait(30), run(items))[1]
    try:
        yield
    finally:
        gate.set()


@contextmanager
def held_preparation(service, monkeypatch):
    """Every instance's preparation waits until the block ends; yields the list of prepared instances."""
    gate, calls, prepare = threading.Event(), [], service.engine.prepare

    def held(*args):
        calls.append(args)
        gate.wait(30)
        return prepare(*args)

    monkeypatch.setattr(service.engine, "prepare", held)
    try:
        yield calls
    finally:
        gate.set()


def counted_preparation(service, monkeypatch) -> list:
    """The (instance, index) of every call of Engine.prepare from now on."""
    calls, prepare = [], service.engine.prepare
    monkeypatch.setattr(service.engine, "prepare", lambda *a: (calls.append(a), prepare(*a))[1])
    return calls


# ------------------------------------------------------------------------------------------ cases
# each returns (reply, seconds it took, the prepare calls it caused or None)


def too_many_instances(service, base, monkeypatch):
    calls = counted_preparation(service, monkeypatch)
    return timed(predict, base, [GOOD] * 33), calls


def queue_full(service, base, monkeypatch):
    with ThreadPoolExecutor(2) as pool, held_inference(service):
        pool.submit(predict, base, [GOOD] * 2)  # taken by the held thread
        wait_until(lambda: service.batcher.pending == 2)
        pool.submit(predict, base, [GOOD] * 4)  # fills the queue
        wait_until(lambda: service.batcher.queued == 4)
        calls = counted_preparation(service, monkeypatch)
        return timed(predict, base, [GOOD]), calls


def queue_full_of_instances_being_prepared(service, base, monkeypatch):
    with ThreadPoolExecutor(1) as pool, held_preparation(service, monkeypatch) as calls:
        pool.submit(predict, base, [GOOD] * 4)  # admitted: its 4 instances count against the queue of 4
        wait_until(lambda: len(calls) == 1)
        return timed(predict, base, [GOOD]), calls[1:]


def stuck_preparing(service, base, monkeypatch):
    with held_preparation(service, monkeypatch):
        return timed(predict, base, [GOOD, GOOD]), None


def stuck_computing(service, base, monkeypatch):
    with held_inference(service):
        return timed(predict, base, [GOOD]), None


def stuck_queued(service, base, monkeypatch):
    with ThreadPoolExecutor(1) as pool, held_inference(service):
        pool.submit(predict, base, [GOOD] * 2)  # taken by the held thread
        wait_until(lambda: service.batcher.pending == 2)
        reply = timed(predict, base, [GOOD])
        assert service.batcher.queued == 0  # its item left the queue with it, before any batch took it
        return reply, None


def timed(function, *args):
    start = time.monotonic()
    return function(*args), time.monotonic() - start


CASES = [
    pytest.param(too_many_instances, 413, "too_many_instances", id="33-instances-refused-before-prepare"),
    pytest.param(queue_full, 429, "queue_full", id="queue-full-refused-before-prepare"),
    pytest.param(queue_full_of_instances_being_prepared, 429, "queue_full",
                 id="instances-being-prepared-count-against-the-queue"),
    pytest.param(stuck_preparing, 504, "timeout", id="stuck-in-preparation-504"),
    pytest.param(stuck_computing, 504, "timeout", id="stuck-in-its-batch-504"),
    pytest.param(stuck_queued, 504, "timeout", id="stuck-in-the-queue-504-and-dropped"),
]


@pytest.mark.parametrize("case, status, error_type", CASES)
def test_a_request_is_refused_before_work_or_ends_by_its_timeout(case, status, error_type, server,
                                                                   monkeypatch):
    service, base = server
    ((got, body, headers), seconds), prepared = case(service, base, monkeypatch)
    monkeypatch.undo()
    assert got == status, body
    assert set(body) == {"error", "error_type", "instance"} and body["error_type"] == error_type
    if prepared is not None:
        assert prepared == []  # Engine.prepare never ran for the refused request
    if status == 429:
        assert headers["Retry-After"] == "1"
    if status == 504:
        assert TIMEOUT_S - 0.05 <= seconds < TIMEOUT_S + 1.0
    wait_until(lambda: service.batcher.pending == 0 and service.preparing == 0)
    status, body, _ = predict(base, [GOOD])
    assert status == 200 and body["predictions"][0]["label"] in ("negative", "positive")


def test_the_event_loop_answers_health_while_requests_are_prepared(server, monkeypatch):
    service, base = server
    service.options.request_timeout_s = 30.0
    service.options.max_queue = service.batcher.max_queue = 8
    try:
        with ThreadPoolExecutor(8) as pool:
            with held_preparation(service, monkeypatch) as calls:
                replies = [pool.submit(predict, base, [GOOD]) for _ in range(8)]
                wait_until(lambda: len(calls) == service.options.prepare_workers)  # every prepare thread held
                start = time.monotonic()
                assert call(base + "/health")[:2] == (200, {"status": "alive"})
                assert time.monotonic() - start < 1.0
            assert [r.result()[0] for r in replies] == [200] * 8
    finally:
        service.options.request_timeout_s = TIMEOUT_S
        service.options.max_queue = service.batcher.max_queue = 4


class Killed(BaseException):
    """Not an Exception: it passes the batcher's retry and kills the inference thread."""


def test_a_dead_inference_worker_answers_503_at_once_and_health_says_so(run_dir):
    with in_process_server(run_dir, request_timeout_s=30.0) as (service, base):
        died, gate = [], threading.Event()
        service.on_death = died.append

        def dying(items):
            gate.wait(30)
            raise Killed("out of luck")

        service.batcher.run = dying
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(timed, predict, base, [GOOD])
            wait_until(lambda: service.batcher.pending == 1)  # in the batch being computed
            gate.set()
            (status, body, _), seconds = waiting.result()
        assert status == 503 and body["error_type"] == "worker_died" and "out of luck" in body["error"]
        assert seconds < 5  # at once, not after the 30 s timeout
        assert died == ["the inference worker died: out of luck"]
        for route in ("/health", "/ready"):
            status, body, _ = call(base + route)
            assert status == 503 and body["error_type"] == "failed", route
        status, body, _ = predict(base, [GOOD])
        assert status == 503 and body["error_type"] == "failed"


@pytest.fixture(scope="module")
def tight(run_dir):
    with in_process_server(run_dir, limit_concurrency=3, keep_alive_timeout_s=0.5) as served:
        yield served


def test_past_limit_concurrency_predict_is_503_and_the_probes_still_answer(tight, monkeypatch):
    service, base = tight
    monkeypatch.setattr(service.engine, "prepare", lambda *a, **k: pytest.fail("prepared"))
    monkeypatch.setattr(service, "in_flight", 3)  # three predict requests being answered: the limit
    status, body, headers = predict(base, [GOOD])
    assert (status, body["error_type"], headers["Retry-After"]) == (503, "overloaded", "1")
    assert [call(base + route)[0] for route in ("/health", "/ready")] == [200, 200]


def test_past_eight_times_the_limit_in_connections_uvicorn_answers_503(tight):
    _, base = tight
    host, port = base.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(8 * 3 - 1)]  # connections held open
    try:
        wait_until(lambda: call(base + "/health")[0] == 503)
        assert call(base + "/health")[1] == "Service Unavailable"  # uvicorn's own plain-text body
    finally:
        for connection in idle:
            connection.close()
    wait_until(lambda: call(base + "/health")[0] == 200)


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(tight):
    _, base = tight
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=3) as connection:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert connection.recv(4096) == b""  # closed by the server; the default of 5 s would time out here
        assert time.monotonic() - start < 3


@pytest.mark.parametrize("option, value, says", [
    ("--max-wait-ms", "inf", "finite"), ("--max-wait-ms", "nan", "finite"), ("--max-wait-ms", "-1", ">= 0"),
    ("--request-timeout-s", "0", "> 0"), ("--request-timeout-s", "inf", "finite"),
    ("--shutdown-timeout-s", "nan", "finite"), ("--keep-alive-timeout-s", "inf", "finite"),
    ("--limit-concurrency", "0", ">= 1"), ("--prepare-workers", "0", ">= 1"),
], ids=lambda v: str(v))
def test_a_float_or_count_option_out_of_range_is_one_line_and_exit_2(option, value, says, tmp_path):
    result = subprocess.run([sys.executable, "-m", "hyperpelt", "serve", str(tmp_path), option, value],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0] and says in lines[0]
