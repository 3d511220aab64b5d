"""An answered request looks its tasks up in the task store one name at a time: nothing lists the store,
whose ready rows may be thousands (listing them per request cut bench/many_tasks.py's throughput at
10,000 tasks to a sixth of that at 8)."""

import dataclasses

import pytest

from conftest import examples, train_run
from helpers.serving import RUN, call, in_process_server
from hyperpelt.inference import load_run
from hyperpelt.serving.served_tasks import ServedTasks, open_run_store
from hyperpelt.serving.task_store import TaskEntry, TaskStore


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("lookups"), RUN)


def test_predict_counts_each_instance_by_task_without_listing_the_store(run_dir, tmp_path, monkeypatch):
    path = tmp_path / "tasks.sqlite"
    store = open_run_store(path, run_dir, load_run(run_dir))
    rte = store.find("rte")
    copy = dataclasses.replace(rte.task(), name="rte-copy")
    store.add(TaskEntry(copy, store.embeddings([rte.id])[0], store.head(rte.id), rte.head_kind,
                        status="ready", examples_hash="x", k=1))
    store.close()
    example = examples("rte", 1, "validation")[0]
    pair = {"sentence1": example["sentence1"], "sentence2": example["sentence2"]}
    with in_process_server(run_dir, task_store=str(path)) as (service, url):
        listed = []
        monkeypatch.setattr(ServedTasks, "tasks", lambda self: listed.append(1) or pytest.fail("listed"))
        monkeypatch.setattr(TaskStore, "rows", lambda self, status="ready": pytest.fail("listed the store"))
        status, body, _ = call(url + "/v1/predict", {"instances": [{"task": "rte", **pair},
                                                                   {"task": "rte-copy", **pair}]})
        assert status == 200 and [p["task"] for p in body["predictions"]] == ["rte", "rte-copy"]
        monkeypatch.undo()  # a refused unknown task's message lists the served tasks (or counts them)
        status, body, _ = call(url + "/v1/predict", {"instances": [{"task": "nope", **pair}]})
        assert status == 422 and body["error_type"] == "unknown_task"
        status, body, _ = call(url + "/v1/predict", {"instances": [{"task": 7, **pair}]})
        assert status == 400 and body["error_type"] == "invalid_type"
        metrics = service.metrics.exposition().decode()
    assert not listed
    assert 'hyperpelt_requests_total{code="200",task="rte-copy"} 1.0' in metrics
    assert 'hyperpelt_requests_total{code="422",task="unknown"} 1.0' in metrics
    assert 'hyperpelt_requests_total{code="400",task="unknown"} 1.0' in metrics
