"""Tasks added and removed while serving: POST /v1/tasks trains a task from examples in the background and
serves it once ready; GET shows its status; DELETE removes an added task; the write routes need the key; a
row left in training by a killed server is failed on reopening; `hyperpelt tasks add` does it offline."""

import json
import signal
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")

from conftest import examples, train_run  # noqa: E402
from helpers.serving import RUN, in_process_server, started_server  # noqa: E402
from hyperpelt.cli import main  # noqa: E402
from hyperpelt.inference import load_run  # noqa: E402
from hyperpelt.serving.engine import RequestError  # noqa: E402
from hyperpelt.serving.served_tasks import checkpoint_hash, open_run_store  # noqa: E402
from hyperpelt.serving.settings import ServeOptions, load_engine  # noqa: E402
from hyperpelt.serving.task_store import TaskEntry, TaskStore  # noqa: E402

KEY = "test-key-123"
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("added"), RUN)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    (folder / "key").write_text(KEY)
    with in_process_server(run_dir, api_key_file=str(folder / "key"), task_store=str(folder / "tasks.sqlite"),
                           task_training_steps=2, max_wait_ms=5) as served:
        yield served


def send(base: str, method: str, path: str, body=None, key: str | None = KEY):
    """(status, parsed JSON body) of one request, with the API key unless ``key`` is None."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def reviews(name: str = "reviews", n: int = 12, **fields) -> dict:
    rows = examples("sst2", n)
    return {"name": name, "inputs": ["sentence"], "labels": LABELS, "metrics": ["accuracy"],
            "examples": [{"sentence": r["sentence"], "label": LABELS[r["label"]]} for r in rows], "seed": 0,
            **fields}


def until_done(base: str, name: str, limit_s: float = 90.0) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        status, body = send(base, "GET", f"/v1/tasks/{name}")
        assert status == 200, body
        if body["status"] != "training":
            return body
        assert time.monotonic() < deadline, f"task '{name}' still training after {limit_s} s"
        time.sleep(0.1)


def predict(base: str, instances: list[dict]):
    return send(base, "POST", "/v1/predict", {"instances": instances})


def test_an_added_task_trains_in_the_background_and_is_served_once_ready(server):
    _, base = server
    status, body = send(base, "POST", "/v1/tasks", reviews())
    assert (status, body) == (202, {"task": "reviews", "status": "training", "url": "/v1/tasks/reviews"})
    done = until_done(base, "reviews")
    assert done["status"] == "ready", done
    assert 0 <= done["score"] <= 100 and done["k"] == 12 and not done["of_the_run"]
    assert "held out" in done["detail"] and done["labels"] == LABELS
    status, body = predict(base, [{"task": "reviews", "sentence": "a fine film"},
                                  {"task": "rte", "sentence1": "A man runs.", "sentence2": "A man moves."}])
    assert status == 200, body
    first, second = body["predictions"]
    assert first["task"] == "reviews" and first["label"] in LABELS and second["task"] == "rte"
    assert "reviews" in [t["name"] for t in send(base, "GET", "/v1/tasks")[1]["tasks"]]


def test_write_routes_need_the_api_key(server):
    _, base = server
    for key in (None, "wrong-key"):
        status, body = send(base, "POST", "/v1/tasks", reviews("keyless"), key=key)
        assert (status, body["error_type"]) == (401, "unauthorized")
        assert set(body) == {"error", "error_type", "instance"}
        status, body = send(base, "DELETE", "/v1/tasks/rte", key=key)
        assert (status, body["error_type"]) == (401, "unauthorized")
    assert send(base, "GET", "/v1/tasks/keyless")[0] == 404  # nothing was added
    assert send(base, "GET", "/v1/tasks/rte")[1]["status"] == "ready"  # nothing was deleted


def test_a_name_the_store_holds_is_409(server):
    _, base = server
    status, body = send(base, "POST", "/v1/tasks", reviews("rte"))
    assert (status, body["error_type"]) == (409, "duplicate_task") and "'rte'" in body["error"]


@pytest.mark.parametrize("change, status, error_type, named", [
    ({"labels": None}, 422, "invalid_declaration", "labels"),
    ({"metrics": ["bleu"]}, 422, "invalid_declaration", "metrics"),
    ({"name": "9lives"}, 422, "invalid_declaration", "name"),
    ({"inputs": "sentence"}, 422, "invalid_field", "inputs"),
    ({"colour": "red"}, 422, "invalid_field", "'colour'"),
    ({"seed": True}, 422, "invalid_field", "seed"),
    ({"examples": [{"sentence": "fine", "label": "positive"}] * 3}, 422, "invalid_field", "examples"),
    ({"examples": [{"sentence": "fine", "label": "positive"}] * 1001}, 413, "too_many_examples", "examples"),
    ({"examples": [{"sentence": "ok", "label": "positive"}] * 4 + [{"sentence": "ok", "label": "meh"}]},
     422, "invalid_field", "examples[4].label"),
    ({"examples": [{"sentence": "ok", "label": "positive"}] * 2 + [{"label": "positive"}] * 2},
     422, "invalid_field", "examples[2].sentence"),
    ({"examples": [{"sentence": "ok", "label": "positive"}] * 5 + [{"sentence": 3, "label": "positive"}]},
     422, "invalid_field", "examples[5].sentence"),
])
def test_bad_bodies_are_refused_naming_the_field(server, change, status, error_type, named):
    _, base = server
    body = {k: v for k, v in {**reviews("refused"), **change}.items() if v is not None}
    got, answer = send(base, "POST", "/v1/tasks", body)
    assert (got, answer["error_type"]) == (status, error_type), answer
    assert named in answer["error"] and set(answer) == {"error", "error_type", "instance"}
    assert send(base, "GET", "/v1/tasks/refused")[0] == 404


def test_a_body_that_is_no_object_is_400(server):
    _, base = server
    assert send(base, "POST", "/v1/tasks", [reviews()])[0] == 400


def test_a_deleted_task_is_refused_and_the_others_still_answer(server):
    service, base = server
    assert send(base, "POST", "/v1/tasks", reviews("gone"))[0] == 202
    assert until_done(base, "gone")["status"] == "ready"
    assert predict(base, [{"task": "gone", "sentence": "so so"}])[0] == 200  # its weights are cached
    status, body = send(base, "DELETE", "/v1/tasks/gone")
    assert (status, body) == (200, {"task": "gone", "deleted": True})
    status, body = predict(base, [{"task": "gone", "sentence": "so so"}])
    assert (status, body["error_type"]) == (422, "unknown_task")
    status, body = predict(base, [{"task": "sst2", "sentence": "so so"}, {"task": "stsb", "sentence1": "a",
                                                                        "sentence2": "b"}])
    assert status == 200 and [p["task"] for p in body["predictions"]] == ["sst2", "stsb"]
    assert send(base, "GET", "/v1/tasks/gone")[0] == 404
    assert send(base, "DELETE", "/v1/tasks/gone")[0] == 404
    assert (send(base, "DELETE", "/v1/tasks/sst2")[0], send(base, "GET", "/v1/tasks/sst2")[0]) == (409, 200)
    # the same name again is a new task, trained afresh
    assert send(base, "POST", "/v1/tasks", reviews("gone"))[0] == 202
    assert until_done(base, "gone")["status"] == "ready"
    assert predict(base, [{"task": "gone", "sentence": "so so"}])[0] == 200


def test_a_task_whose_training_fails_is_marked_failed(server, monkeypatch):
    _, base = server

    def broken(*args, **kwargs):
        raise RuntimeError("the trainer broke")

    monkeypatch.setattr("hyperpelt.experiments.learn_task.learn_task", broken)
    assert send(base, "POST", "/v1/tasks", reviews("broken"))[0] == 202
    done = until_done(base, "broken")
    assert done["status"] == "failed" and "the trainer broke" in done["detail"] and done["score"] is None
    status, body = predict(base, [{"task": "broken", "sentence": "x"}])
    assert (status, body["error_type"]) == (422, "unknown_task")


def test_a_row_left_training_is_failed_on_reopening_and_never_served(run_dir, tmp_path):
    path = tmp_path / "tasks.sqlite"
    store = open_run_store(path, run_dir, load_run(run_dir))
    rte = store.find("rte")
    store.add(TaskEntry(rte.task().__class__(**{**rte.task().__dict__, "name": "half"}), k=8))
    store.close()
    engine = load_engine(run_dir, ServeOptions(task_store=str(path)))
    row = engine.served.store.find("half", ready_only=False)
    assert row.status == "failed" and "interrupted" in row.detail
    with pytest.raises(RequestError) as refused:
        engine.prepare({"task": "half", "sentence1": "a", "sentence2": "b"}, 0)
    assert refused.value.status == 422


def test_tasks_add_learns_a_task_offline(run_dir, tmp_path, capsys):
    rows = [{"sentence": r["sentence"], "label": LABELS[r["label"]]} for r in examples("sst2", 10)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.yaml").write_text("name: offline\ninputs: [sentence]\nlabels: [negative, positive]\n"
                                        "files: {train: train.jsonl, dev: train.jsonl}\n")
    store = tmp_path / "tasks.sqlite"
    assert main(["tasks", "add", str(run_dir), "--task-file", str(tmp_path / "task.yaml"), "--examples",
                 str(tmp_path / "train.jsonl"), "--task-store", str(store), "--steps", "2"]) == 0
    assert "task 'offline' ready in" in capsys.readouterr().out
    row = TaskStore(store, run_dir.name).find("offline")
    assert row.status == "ready" and row.k == 10 and row.score is not None and row.head_kind is not None
    engine = load_engine(run_dir, ServeOptions(task_store=str(store)))
    item = engine.prepare({"task": "offline", "sentence": "a fine film"}, 0)
    assert engine.run([item])[0]["label"] in LABELS
    assert main(["tasks", "add", str(run_dir), "--task-file", str(tmp_path / "task.yaml"), "--examples",
                 str(tmp_path / "train.jsonl"), "--task-store", str(store), "--steps", "2"]) == 2
    assert "is in the task store already" in capsys.readouterr().err


def test_a_kill_during_training_loses_no_task_and_fails_the_half_trained_one(run_dir, tmp_path):
    path = tmp_path / "tasks.sqlite"
    process, base = started_server(run_dir, "--task-store", str(path), "--task-training-steps", "100000")
    try:
        assert send(base, "POST", "/v1/tasks", reviews("halfway"))[0] == 202
        time.sleep(1.0)  # into its training
        assert send(base, "GET", "/v1/tasks/halfway")[1]["status"] == "training"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    store = TaskStore.open(path, run_dir.name, checkpoint_hash(run_dir),
                           lambda: pytest.fail("the store's first rows are there"))
    assert [(r.name, r.status) for r in store.rows(None)] == [
        ("rte", "ready"), ("sst2", "ready"), ("stsb", "ready"), ("halfway", "training")]
    store.close()
    engine = load_engine(run_dir, ServeOptions(task_store=str(path)))  # as the next server starts
    assert engine.served.store.find("halfway", ready_only=False).status == "failed"
    assert engine.task_names == ["rte", "sst2", "stsb"]
