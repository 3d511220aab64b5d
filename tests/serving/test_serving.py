"""`hyperpelt serve`: a real server on a free loopback port, asked by a real HTTP client (urllib).

Most tests share one in-process server (uvicorn on a thread) over a tiny MiniLM-L6 run of three tasks: a
pair task encoded as two texts, a one-text task and a regression task, so a mixed batch exercises every
head path. The stop test runs the command in its own process and signals it.
"""

import base64
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import ROOT, examples, train_run  # noqa: E402
from helpers.serving import RUN, TASKS, call, in_process_server, started_server  # noqa: E402
from helpers.vl import VL_METHOD, train_vl  # noqa: E402 - registers the image extractor of `drawn`
from hyperpelt.inference import load_run  # noqa: E402
from hyperpelt.serving.engine import Prepared, RequestError  # noqa: E402
from hyperpelt.serving.service import Service  # noqa: E402
from hyperpelt.serving.settings import ServeOptions  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("served"), RUN)


def instances(n_per_task: int, offset: int = 0) -> list[dict]:
    """Validation examples of every task as served instances, the tasks interleaved."""
    rows = {t: examples(t, n_per_task, "validation", offset) for t in TASKS}
    out = []
    for i in range(n_per_task):
        for task in TASKS:
            row = rows[task][i]
            fields = ("sentence", "sentence1", "sentence2")
            out.append({"task": task, **{k: row[k] for k in fields if k in row}})
    return out


def predict(base: str, items: list[dict]):
    return call(base + "/v1/predict", {"instances": items})


@pytest.fixture(scope="module")
def server(run_dir):
    with in_process_server(run_dir, max_wait_ms=20, max_batch_size=16) as served:
        yield served


def metric(base: str, name: str) -> float:
    _, text, _ = call(base + "/metrics")
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


# ------------------------------------------------------------------------------------------ answers


def test_served_answers_equal_predict_for_every_task_in_mixed_batches(server, run_dir):
    service, base = server
    asked = instances(8)
    batches_before = metric(base, "hyperpelt_batch_size_count")
    with ThreadPoolExecutor(12) as pool:  # 12 concurrent requests of two instances of different tasks
        replies = list(pool.map(lambda i: predict(base, asked[i:i + 2]), range(0, len(asked), 2)))
    assert all(status == 200 for status, _, _ in replies), replies[0]
    served = [p for _, body, _ in replies for p in body["predictions"]]
    model = load_run(run_dir)
    for task in TASKS:
        rows = [{k: v for k, v in i.items() if k != "task"} for i in asked if i["task"] == task]
        expected = model.predict(task, rows)
        got = [p for p in served if p["task"] == task]
        assert len(got) == len(expected) == 8
        if task == "stsb":
            assert [p["label"] for p in got] == pytest.approx(expected, abs=1e-3)
        else:
            assert [p["label"] for p in got] == expected
            assert [model.tasks[model.task_id(task)].label_names[p["value"]] for p in got] == expected
    batches = metric(base, "hyperpelt_batch_size_count") - batches_before
    assert batches < len(replies)  # requests shared forwards...
    # ...of several tasks
    assert metric(base, "hyperpelt_batch_tasks_sum") > metric(base, "hyperpelt_batch_tasks_count")


def test_the_hypernetwork_runs_only_at_start_up(server):
    service, base = server
    method = service.engine.model.method
    calls = []
    original = method.condition
    method.condition = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    try:
        asked = instances(4)
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda i: predict(base, [asked[i % len(asked)]])[0], range(1000)))
    finally:
        del method.condition
    assert statuses == [200] * 1000
    assert calls == []
    assert call(base + "/info")[1]["weight_table_builds"] == 1


def test_tasks_health_info_and_playground(server):
    _, base = server
    status, body, _ = call(base + "/v1/tasks")
    assert status == 200
    tasks = {t["name"]: t for t in body["tasks"]}
    assert list(tasks) == TASKS
    assert tasks["rte"]["fields"] == ["sentence1", "sentence2"] and tasks["rte"]["labels"] == [
        "entailment", "not_entailment"]
    assert tasks["stsb"]["kind"] == "regression" and tasks["stsb"]["labels"] is None
    assert call(base + "/health")[:2] == (200, {"status": "alive"})
    assert call(base + "/ready")[:2] == (200, {"status": "ready"})
    info = call(base + "/info")[1]
    assert info["model"] == "minilm-l6" and info["method"] == "hyperpelt" and info["tasks"] == TASKS
    assert info["batching"]["batching"] == "mixed" and info["commit"]
    status, page, _ = call(base + "/")
    script = call(base + "/playground.js")[1]
    assert status == 200 and "/playground.js" in page and "/v1/predict" in script and "/v1/tasks" in script


def test_text_with_tab_separated_fields_is_the_same_instance(server):
    _, base = server
    pair = {"task": "rte", "sentence1": "A man sleeps.", "sentence2": "A person rests."}
    by_text = {"task": "rte", "text": "A man sleeps.\tA person rests."}
    assert predict(base, [pair])[1]["predictions"] == predict(base, [by_text])[1]["predictions"]


# ------------------------------------------------------------------------------------------ errors


def assert_error(reply, status: int, error_type: str, instance=None, says: str = ""):
    got, body, _ = reply
    assert got == status, body
    assert set(body) == {"error", "error_type", "instance"}
    assert body["error_type"] == error_type and body["instance"] == instance and says in body["error"]


def declared_size(base: str, size: int):
    """The reply to a request that declares a body of ``size`` bytes and sends none of it."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/v1/predict")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()
    response = connection.getresponse()
    reply = response.status, json.loads(response.read()), response.headers
    connection.close()
    return reply


def still_answers(base: str):
    status, body, _ = predict(base, [{"task": "sst2", "sentence": "a fine film"}])
    assert status == 200 and body["predictions"][0]["label"] in ("negative", "positive")


def test_bad_requests_get_their_codes_and_the_server_keeps_answering(server):
    _, base = server
    url = base + "/v1/predict"
    good = {"task": "sst2", "sentence": "fine"}
    cases = [
        (call(url, raw=b'{"instances": [}'), 400, "invalid_json", None, "not JSON"),
        (call(url, {"instances": "rte"}), 400, "invalid_type", None, "instances"),
        (predict(base, [good, "text"]), 400, "invalid_type", 1, "JSON object"),
        (predict(base, [{"task": "rte", "sentence1": 3, "sentence2": "b"}]), 400, "invalid_type", 0,
         "sentence1"),
        (predict(base, [good] * 33), 413, "too_many_instances", None, "at most 32"),
        (declared_size(base, 17 * 2**20), 413, "body_too_large", None, "bytes"),
        (predict(base, [good, {"task": "mnli", "text": "x"}]), 422, "unknown_task", 1, "rte, sst2, stsb"),
        (predict(base, [{"task": "rte", "sentence1": "a"}]), 422, "missing_field", 0, "sentence2"),
        (predict(base, [{"task": "rte", "sentence1": "a", "sentence2": "  "}]), 422, "empty_field", 0,
         "sentence2"),
        (predict(base, []), 422, "no_instances", None, "empty"),
    ]
    for reply, *expected in cases:
        assert_error(reply, *expected)
        still_answers(base)
    assert metric(base, 'hyperpelt_requests_total{code="422",task="unknown"}') >= 1


@contextmanager
def gated(service):
    """Hold the inference thread until the gate opens (the batch it holds then runs)."""
    gate, run = threading.Event(), service.batcher.run
    service.batcher.run = lambda items: (gate.wait(30), run(items))[1]
    try:
        yield gate
    finally:
        gate.set()
        service.batcher.run = run


def test_full_queue_429_timeout_504_and_failing_instances_500(run_dir):
    with in_process_server(run_dir, max_queue=4, max_batch_size=2, max_wait_ms=1,
                           request_timeout_s=1.0) as (service, base):
        good = {"task": "sst2", "sentence": "fine"}
        with ThreadPoolExecutor(4) as pool, gated(service):
            first = pool.submit(predict, base, [good] * 2)  # taken by the held thread
            while service.batcher.pending < 2:
                time.sleep(0.01)
            queued = pool.submit(predict, base, [good] * 4)  # fills the queue
            while service.batcher.pending < 6:
                time.sleep(0.01)
            full = predict(base, [good])
            time.sleep(1.2)  # the queued request passes its timeout while it waits
        assert_error(full, 429, "queue_full", None, "retry")
        assert full[2]["Retry-After"] == "1"
        assert_error(first.result(), 504, "timeout", None, "timeout")  # held in its batch past the timeout
        assert_error(queued.result(), 504, "timeout", None, "timeout")
        still_answers(base)

        service.options.request_timeout_s = 30.0
        run = service.batcher.run
        service.batcher.run = lambda items: run(items) if all(i.length != 99 for i in items) else 1 / 0
        original = service.engine.prepare

        def mark(instance, index):  # a poisoned instance: the model fails on any batch that holds it
            prepared = original(instance, index)
            prepared.length = 99 if instance.get("sentence") == "poison" else prepared.length
            return prepared

        service.engine.prepare = mark
        with ThreadPoolExecutor(3) as pool, gated(service):
            blocker = pool.submit(predict, base, [good])
            while service.batcher.pending < 1:
                time.sleep(0.01)
            poison = {"task": "sst2", "sentence": "poison"}
            together = [pool.submit(predict, base, [i]) for i in (good, poison)]
            while service.batcher.pending < 3:  # both wait for the next batch
                time.sleep(0.01)
        assert blocker.result()[0] == 200 and together[0].result()[0] == 200
        assert_error(together[1].result(), 500, "inference_failed", 0, "division by zero")
        service.engine.prepare, service.batcher.run = original, run
        still_answers(base)


def test_not_ready_is_503(run_dir):
    service = Service(run_dir, ServeOptions())
    with pytest.raises(RequestError) as refused:
        service.check_ready()
    assert refused.value.status == 503 and refused.value.error_type == "loading"


# ------------------------------------------------------------------------------------------ stopping


def test_sigterm_answers_every_accepted_request_refuses_later_ones_and_exits_0(run_dir):
    process, base = started_server(run_dir, "--max-wait-ms", "3000", "--max-batch-size", "64",
                                   "--shutdown-timeout-s", "20", timeout_s=240)
    try:
        asked = (instances(4) * 5)[:50]
        pool = ThreadPoolExecutor(50)
        accepted = [pool.submit(predict, base, [i]) for i in asked]
        while call(base + "/info")[1]["in_flight"] < 50:  # all 50 wait for the batch to close
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        def later_request():
            """(seconds after the signal it was sent, its reply); no reply once the server stopped
            listening."""
            sent = time.monotonic() - stopped_at
            try:
                return sent, predict(base, [asked[0]])
            except (urllib.error.URLError, ConnectionError):
                return sent, None

        # a request every 10 ms until the server exits: the drain (answering the 50) may take only a
        # moment, and a request sent after it meets a closed port
        later, probes = [], ThreadPoolExecutor(16)
        while process.poll() is None and time.monotonic() - stopped_at < 25:
            later.append(probes.submit(later_request))
            time.sleep(0.01)
        later = [f.result() for f in later]
        assert [f.result()[0] for f in accepted] == [200] * 50
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - stopped_at < 20
        replied = [(sent, reply) for sent, reply in later if reply is not None]
        assert any(reply[0] == 503 for _, reply in replied), later
        # sent before the server saw the signal (it looks every 0.1 s), a request may still be accepted
        for sent, reply in replied:
            assert (reply[0] == 503 and reply[1]["error_type"] == "draining") or (
                reply[0] == 200 and sent < 0.3), (sent, reply)
        pool.shutdown()
        probes.shutdown()
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_freezes_what_loading_made_once_warmed_up_and_before_ready(run_dir, monkeypatch):
    from hyperpelt.serving import server as server_module

    made, seen = [], []

    class Recorded(Service):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    def run(self):  # in place of uvicorn: wait for the load thread, then stop
        deadline = time.monotonic() + 120
        while self.service.status in ("loading", "warming") and time.monotonic() < deadline:
            time.sleep(0.05)

    monkeypatch.setattr(server_module, "Service", Recorded)
    monkeypatch.setattr(server_module.gc, "freeze", lambda: seen.append((made[0].status,
                                                                          made[0].engine.table_builds)))
    monkeypatch.setattr(server_module.DrainingServer, "run", run)
    assert server_module.serve(str(run_dir), ServeOptions(port=0)) == 0
    assert made[0].status == "ready"
    assert seen == [("warming", 1)]  # after the warm-up built the weight table, before /ready says 200


def test_serve_refuses_a_folder_that_is_no_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hyperpelt", "serve", str(tmp_path / "nothing")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: run folder not found: {tmp_path / 'nothing'}"]
    assert not Path(tmp_path / "nothing").exists()


# ------------------------------------------------------------------------------------------ Ray


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Serve's own pydantic v1-style fields
def test_a_ray_deployment_gives_the_same_answers(run_dir, server, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    # Ray lowers its workers to niceness 15: on a busy CI machine the controller and the replica then
    # take minutes to start instead of seconds
    monkeypatch.setenv("RAY_worker_niceness", "0")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - e.g. no shared memory in a container
        pytest.skip(f"Ray cannot start here: {' '.join(str(err).split())[:200]}")
    _, local = server
    asked = instances(4)
    try:
        with in_process_server(run_dir, engine="ray", max_wait_ms=20, shutdown_timeout_s=2) as (_, base):
            with ThreadPoolExecutor(6) as pool:  # concurrent calls, so the replica batches several tasks
                replies = list(pool.map(lambda i: predict(base, asked[i:i + 2]), range(0, len(asked), 2)))
            assert_error(predict(base, [{"task": "mnli", "text": "x"}]), 422, "unknown_task", 0, "rte")
            assert call(base + "/info")[1]["engine"] == "ray"
        assert not ray.is_initialized()  # the batcher's stop shut Ray down
    finally:
        ray.shutdown()  # also when the deployment failed, so no Ray processes outlive the test
    served = [p for _, body, _ in replies for p in body["predictions"]]
    expected = predict(local, asked)[1]["predictions"]
    assert [p["task"] for p in served] == [p["task"] for p in expected]
    for got, want in zip(served, expected):
        if got["task"] == "stsb":
            assert got["value"] == pytest.approx(want["value"], abs=1e-4)
        else:
            assert got == want


# ------------------------------------------------------------------------------------------ images


def test_a_vl_run_answers_base64_images_and_paths_under_its_folder_only(tmp_path, drawn):
    paths, cache = drawn
    overrides = ["data.tasks=[easy_vqa]", f"data.feature_cache={cache}", "data.max_train_examples=8",
                 "data.max_eval_examples=4", *VL_METHOD]
    _, vl_run = train_vl(tmp_path, "vl", overrides)
    question = "what color is the shape?"
    expected = load_run(vl_run).predict("easy_vqa", [{"question": question, "image": str(paths[c])}
                                                     for c in ("red", "blue")])
    encoded = {c: base64.b64encode(paths[c].read_bytes()).decode() for c in ("red", "blue")}
    with in_process_server(vl_run, image_dir=str(tmp_path)) as (service, base):
        asked = {"task": "easy_vqa", "question": question}
        status, body, _ = predict(base, [{**asked, "image": encoded["red"]},
                                         {**asked, "image_path": "blue.png"}])
        assert status == 200, body
        assert [p["label"] for p in body["predictions"]] == expected
        outside = {"task": "easy_vqa", "question": question, "image_path": "../" + tmp_path.name + "/red.png"}
        assert predict(base, [outside])[0] == 200  # the same folder, named the long way round
        for bad, status, says in [({"image_path": "/etc/passwd"}, 422, "under the server's image folder"),
                                  ({"image_path": "../x.png"}, 422, "under the server's image folder"),
                                  ({"image": "not base64!"}, 400, "base64"), ({}, 422, "reads images")]:
            assert_error(predict(base, [{"task": "easy_vqa", "question": question, **bad}]), status,
                         "missing_field" if not bad else "invalid_image", 0, says)
        assert predict(base, [{"task": "easy_vqa", "question": question, "image": encoded["blue"]}])[0] == 200


def test_the_batcher_gives_free_memory_back_once_idle_after_batches(monkeypatch):
    from hyperpelt.serving import batcher as batching

    released = []
    monkeypatch.setattr(batching, "release_free_memory", lambda: released.append(time.monotonic()))
    answered = batching.Batcher(lambda items: [len(items)] * len(items), idle_release_s=0.1).start()
    try:
        time.sleep(0.3)
        assert released == []  # nothing run yet: nothing to give back
        futures = answered.submit([Prepared(0, {}, 3), Prepared(1, {}, 4)], timeout_s=5)
        assert [f.result(5) for f in futures] == [2, 2]
        done = time.monotonic()
        time.sleep(0.5)
        assert len(released) == 1 and released[0] - done >= 0.09  # once, after the idle pause, not again
    finally:
        answered.stop(5)
