"""The task store (SQLite) and the weight cache a server reads it through: rows round-trip, a run's tasks
are its first rows, a file that is no store is one clear error, and answers are the same whether a task's
weights were cached, generated on a miss, or read from the run's fixed tasks."""

import dataclasses
import sqlite3

import pytest
import torch

from conftest import examples, train_run
from helpers.serving import RUN, TASKS
from hyperpelt.errors import UserError
from hyperpelt.inference import load_run
from hyperpelt.serving.engine import Engine, RequestError
from hyperpelt.serving.metrics import ServerMetrics
from hyperpelt.serving.served_tasks import open_run_store
from hyperpelt.serving.task_store import TaskEntry, TaskStore
from hyperpelt.tasks.registry import get_task


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("stored"), RUN)


def entry(name: str, seed: int, **fields) -> TaskEntry:
    gen = torch.Generator().manual_seed(seed)
    task = dataclasses.replace(get_task("rte"), name=name)
    head = {"weight": torch.randn(2, 3, generator=gen), "bias": torch.randn(2, generator=gen)}
    return TaskEntry(task, torch.randn(4, 16, generator=gen), head, "classification", **fields)


def test_rows_round_trip_through_a_reopened_store(tmp_path):
    path = tmp_path / "tasks.sqlite"
    first = entry("reviews", 0, status="ready")
    store = TaskStore.open(path, "run", "abc", lambda: [first])
    added = store.add(entry("later", 1, examples_hash="f00d", k=64))
    assert added.status == "training" and store.find("later") is None  # not ready: not found for serving
    store.update("later", "ready", score=0.75)
    store.close()

    again = TaskStore.open(path, "run", "abc", lambda: pytest.fail("a store's first rows are written once"))
    rows = again.rows()
    assert [r.name for r in rows] == ["reviews", "later"] and rows[0].of_the_run and not rows[1].of_the_run
    later = rows[1]
    assert (later.status, later.score, later.k, later.examples_hash, later.run) == ("ready", 0.75, 64, "f00d",
                                                                                   "run")
    rte = get_task("rte")
    task = later.task()
    assert (task.input_fields, task.label_names, task.kind, task.prefix) == (
        rte.input_fields, rte.label_names, rte.kind, rte.prefix)
    assert [m.__name__ for m in task.metrics] == [m.__name__ for m in rte.metrics]
    embeddings = again.embeddings([later.id, rows[0].id])
    assert torch.equal(embeddings[0], entry("later", 1).embedding)
    assert torch.equal(embeddings[1], first.embedding)
    head = again.head(later.id)
    expected = entry("later", 1).head
    assert head.keys() == expected.keys() and all(torch.equal(head[k], expected[k]) for k in head)
    assert again.remove("later") and again.find("later") is None and not again.remove("later")
    with pytest.raises(UserError, match="already"):
        again.add(entry("reviews", 2))


def test_a_file_that_is_no_task_store_is_one_clear_error_naming_it(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is no database\n" * 100)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE tasks (name TEXT)")
    for path, says in ((garbage, "not an SQLite file"), (other, "not a task store of schema")):
        for check, args in ((TaskStore.check_file, (path,)), (TaskStore.open, (path, "run", "abc", list))):
            with pytest.raises(UserError) as refused:
                check(*args)
            message = str(refused.value)
            assert message.startswith(f"{path}: ") and says in message and "\n" not in message
    TaskStore.open(tmp_path / "mine.sqlite", "run", "abc", list)
    with pytest.raises(UserError, match="the task store of run 'run'"):
        TaskStore.open(tmp_path / "mine.sqlite", "run", "another checkpoint", list)


def test_the_runs_tasks_become_its_first_rows(run_dir, tmp_path):
    model = load_run(run_dir)
    store = open_run_store(tmp_path / "s.sqlite", run_dir, model)
    rows = store.rows()
    assert [r.name for r in rows] == TASKS and all(r.of_the_run and r.run == run_dir.name for r in rows)
    assert torch.equal(store.embeddings([r.id for r in rows]), model.method.task_embedding.detach())
    for index, row in enumerate(rows):
        head = model.heads.heads[index].state_dict()
        stored = store.head(row.id)
        assert row.head_kind == ("regression" if TASKS[index] == "stsb" else "classification")
        assert stored.keys() == head.keys() and all(torch.equal(stored[k], head[k]) for k in head)
    assert open_run_store(tmp_path / "s.sqlite", run_dir, model).rows() == rows  # not written twice


def asked() -> list[dict]:
    """Validation examples of every task as served instances, the tasks interleaved."""
    rows = {t: examples(t, 4, "validation") for t in TASKS}
    fields = ("sentence", "sentence1", "sentence2")
    return [{"task": t, **{k: rows[t][i][k] for k in fields if k in rows[t][i]}}
            for i in range(4) for t in TASKS]


def answers(engine: Engine, instances: list[dict]) -> list:
    return engine.run([engine.prepare(instance, i) for i, instance in enumerate(instances)])


def engine_of(run_dir, store_path, cache_bytes=None) -> Engine:
    model = load_run(run_dir)
    return Engine(model, store=open_run_store(store_path, run_dir, model), weight_cache_bytes=cache_bytes)


def test_answers_are_equal_cached_generated_on_a_miss_or_from_the_runs_fixed_tasks(run_dir, tmp_path):
    fixed = Engine(load_run(run_dir))  # no store: the method's own rows, every task generated once
    expected = answers(fixed, asked())
    one_task_bytes = fixed.model.weight_cache_stats.bytes // len(TASKS)
    for budget in (None, one_task_bytes // 2, one_task_bytes):  # everything, nothing, or one task kept
        engine = engine_of(run_dir, tmp_path / "s.sqlite", budget)
        for _ in range(2):  # generated, then cached where it fits
            assert answers(engine, asked()) == expected, budget
        stats = engine.cache_stats()
        kept = {None: 3, one_task_bytes // 2: 0, one_task_bytes: 1}[budget]
        assert stats.tasks == kept and stats.misses == 3 + 3 - kept and stats.hits == kept
        assert stats.generations == 2 - (kept == 3) and stats.evictions == 0


def test_a_ready_row_is_served_and_one_in_training_is_an_unknown_task(run_dir, tmp_path):
    engine = engine_of(run_dir, tmp_path / "s.sqlite", cache_bytes=2**30)
    store = engine.served.store
    rte = store.find("rte")
    copy = TaskEntry(dataclasses.replace(engine.model.tasks[0], name="rte-copy"),
                     store.embeddings([rte.id])[0], store.head(rte.id), rte.head_kind, k=4, examples_hash="x")
    store.add(copy)
    instances = [i for i in asked() if i["task"] == "rte"]
    copies = [{**i, "task": "rte-copy"} for i in instances]
    with pytest.raises(RequestError) as refused:
        engine.prepare(copies[0], 2)
    err = refused.value
    assert (err.status, err.error_type, err.instance) == (422, "unknown_task", 2)
    assert "rte-copy" not in engine.task_names
    store.update("rte-copy", "ready", score=1.0)
    assert engine.task_names == [*TASKS, "rte-copy"]
    served = answers(engine, instances + copies)  # one mixed batch: the copy is generated on its miss
    assert [a["value"] for a in served[4:]] == [a["value"] for a in served[:4]]
    assert [a["task"] for a in served] == ["rte"] * 4 + ["rte-copy"] * 4
    store.update("rte-copy", "failed")
    with pytest.raises(RequestError, match="not served here"):
        engine.prepare(copies[0], 0)


def test_metrics_show_the_cache_counts(run_dir, tmp_path):
    engine = engine_of(run_dir, tmp_path / "s.sqlite")
    metrics = ServerMetrics()
    metrics.watch_weight_cache(engine.cache_stats)
    answers(engine, asked()[:2])
    answers(engine, asked())
    text = metrics.exposition().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("hyperpelt_weight")}
    cache = "hyperpelt_weight_cache_"
    assert values[cache + "misses_total"] == 3 and values[cache + "hits_total"] == 2
    assert values[cache + "evictions_total"] == 0 and values[cache + "tasks"] == 3
    assert values["hyperpelt_weight_cache_bytes"] == engine.cache_stats().bytes > 0
    assert values["hyperpelt_weight_generation_seconds_count"] == 2
    assert values["hyperpelt_weight_generation_seconds_sum"] > 0
