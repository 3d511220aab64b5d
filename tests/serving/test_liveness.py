"""The batcher's liveness and how the serve command ends, over fake engines (no model): a dead thread
answers every waiting item 503 at once, a given-up item leaves the queue at once, ``serve`` exits 3 after
answering the waiting request 503, and a client that never finishes its body does not hold a stop past
the shutdown timeout."""

import os
import signal
import socket
import threading
import time

import pytest

from conftest import free_port
from hyperpelt.serving.batcher import Batcher
from hyperpelt.serving.engine import Prepared, RequestError


class Killed(BaseException):
    """Not an Exception: it passes the batcher's item-by-item retry and ends the inference thread."""


def item(task_id: int = 0) -> Prepared:
    return Prepared(task_id, {}, 1)


def test_a_dead_inference_thread_answers_every_waiting_item_503_at_once_and_refuses_more():
    gate, died = threading.Event(), []

    def run(batch):
        gate.wait(10)
        raise Killed("the model exploded")

    batcher = Batcher(run, max_batch_size=1, max_wait_s=0, on_death=died.append).start()
    try:
        computing = batcher.submit([item()], timeout_s=60)
        while batcher.queued:  # the thread holds it
            time.sleep(0.01)
        queued = batcher.submit([item(), item()], timeout_s=60)
        gate.set()
        for future in computing + queued:
            with pytest.raises(RequestError) as refused:
                future.result(5)  # not after the 60 s timeout
            assert refused.value.status == 503 and refused.value.error_type == "worker_died"
        assert died == ["the model exploded"] and batcher.pending == 0
        with pytest.raises(RequestError) as refused:
            batcher.submit([item()], timeout_s=60)
        assert refused.value.status == 503 and "the model exploded" in str(refused.value)
    finally:
        batcher.stop(5)


def test_a_cancelled_item_leaves_the_queue_at_once_and_is_never_run():
    gate, ran = threading.Event(), []
    batcher = Batcher(lambda batch: (gate.wait(10), ran.extend(batch), [1] * len(batch))[2],
                      max_batch_size=1, max_wait_s=0, max_queue=2).start()
    try:
        held = batcher.submit([item(0)], timeout_s=60)[0]
        while batcher.queued:
            time.sleep(0.01)
        given_up = batcher.submit([item(1), item(2)], timeout_s=60)
        assert [f.cancel() for f in given_up] == [True, True]
        assert batcher.queued == 0  # their room is free again
        later = batcher.submit([item(3), item(4)], timeout_s=60)
        assert not held.cancel()  # running: its result comes, and whoever gave up ignores it
        gate.set()
        assert [f.result(5) for f in [held, *later]] == [1, 1, 1]
        assert [p.task_id for p in ran] == [0, 3, 4]
    finally:
        batcher.stop(5)


class DyingEngine:
    """Its first batch kills the inference thread."""

    task_names = ["t"]

    def serves(self, name):
        return name in self.task_names

    def warm_up_items(self):
        return []

    def prepare(self, instance, index):
        return item()

    def run(self, batch):
        raise Killed("out of memory, say")

    def describe(self):
        return {"model": "none", "method": "none"}


class Engine(DyingEngine):
    def run(self, batch):
        return [{"label": "x"}] * len(batch)


def serve_in_this_process(monkeypatch, engine, client, **options) -> tuple[int, float]:
    """(exit code, seconds) of ``serve`` over ``engine`` on a free port, ``client(base URL)`` running on a
    thread once the server is ready."""
    pytest.importorskip("uvicorn")
    from helpers.serving import call
    from hyperpelt.serving import server as server_module
    from hyperpelt.serving.settings import ServeOptions

    monkeypatch.setattr(server_module.gc, "freeze", lambda: None)
    base = f"http://127.0.0.1:{free_port()}"

    def when_ready():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if call(base + "/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        client(base)

    asking = threading.Thread(target=when_ready, daemon=True)
    asking.start()
    start = time.monotonic()
    options = ServeOptions(port=int(base.rsplit(":", 1)[1]), **options)
    code = server_module.serve("nowhere", options, make_engine=lambda *_: engine)
    seconds = time.monotonic() - start
    asking.join(10)
    return code, seconds


def test_serve_exits_3_once_the_inference_worker_died(monkeypatch):
    from helpers.serving import call

    replies = []

    def client(base):
        replies.append(call(base + "/v1/predict", {"instances": [{"task": "t", "text": "x"}]}))

    code, seconds = serve_in_this_process(monkeypatch, DyingEngine(), client, request_timeout_s=60,
                                          shutdown_timeout_s=2)
    assert code == 3 and seconds < 20
    (status, body, _), = replies
    assert status == 503 and body["error_type"] == "worker_died"


def test_a_client_that_never_finishes_its_body_does_not_hold_a_stop(monkeypatch):
    held = []

    def client(base):  # sends the head of a request and one byte of its body, then a stop signal
        host, port = base.removeprefix("http://").split(":")
        connection = socket.create_connection((host, int(port)))
        connection.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 1000\r\n\r\n{")
        held.append(connection)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's handler, in the main thread, starts the stop

    code, seconds = serve_in_this_process(monkeypatch, Engine(), client, shutdown_timeout_s=1)
    held[0].close()
    assert code == 0 and seconds < 10  # the drain waited 1 s for the request, then stopped
