"""The many-task benchmark's parts on a tiny run: its task store of perturbed copies, its workload and load
client against a served store with a tiny weight cache, the LoRA server's copies and count, and the
report's targets."""

import asyncio
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.many_tasks import cache_figures, lora_fit, parse_args  # noqa: E402
from bench.serving.client import run_phases  # noqa: E402
from bench.serving.copies import build_store, many_workload, mean_length  # noqa: E402
from bench.serving.many_report import checks, markdown, plot  # noqa: E402
from bench.serving.workload import popularity_weights, request_bodies  # noqa: E402
from conftest import examples, train_run  # noqa: E402
from helpers.serving import RUN, TASKS, in_process_server  # noqa: E402
from hyperpelt.inference import load_run  # noqa: E402
from hyperpelt.serving.task_store import TaskStore  # noqa: E402

COPIES = ["rte", "sst2", "stsb", "rte-3", "sst2-4", "stsb-5", "rte-6", "sst2-7", "stsb-8", "rte-9", "sst2-10"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("many"), RUN)


@pytest.fixture(scope="module")
def store(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "tasks-11.sqlite"
    return build_store(path, run_dir, load_run(run_dir), 11, noise=0.05, seed=0)


def test_the_store_holds_the_runs_tasks_then_perturbed_copies_declared_as_their_sources(run_dir, store):
    opened = TaskStore(store, run_dir.name)
    rows = opened.rows()
    assert [r.name for r in rows] == COPIES and all(r.status == "ready" for r in rows)
    assert [r.of_the_run for r in rows] == [True] * 3 + [False] * 8
    embeddings = opened.embeddings([r.id for r in rows])
    for i, row in enumerate(rows[3:], 3):
        source = rows[i % 3]
        assert (row.inputs, row.labels, row.kind, row.metrics, row.head_kind) == (
            source.inputs, source.labels, source.kind, source.metrics, source.head_kind)
        head, expected = opened.head(row.id), opened.head(source.id)
        assert head.keys() == expected.keys() and all(torch.equal(head[k], expected[k]) for k in head)
        change = (embeddings[i] - embeddings[i % 3]).norm() / embeddings[i % 3].norm()
        assert 0.03 < change < 0.08  # noise of 0.05x the root mean square
    assert len({tuple(e.flatten().tolist()) for e in embeddings}) == 11
    opened.close()
    build_store(store, run_dir, load_run(run_dir), 5, noise=0.05, seed=0)  # rebuilt, not added to
    assert [r.name for r in TaskStore(store, run_dir.name).rows()] == COPIES[:5]
    build_store(store, run_dir, load_run(run_dir), 11, noise=0.05, seed=0)


def base_workload(folder: Path) -> Path:
    rows = {t: examples(t, 3, "validation") for t in TASKS}
    keys = ("sentence", "sentence1", "sentence2")
    instances = {t: [{"task": t, **{k: r[k] for k in keys if k in r}} for r in rows[t]] for t in TASKS}
    path = folder / "workload.json"
    path.write_text(json.dumps({"tasks": TASKS, "instances": instances,
                                "mean_length": {"rte": 30.0, "sst2": 10.0, "stsb": 20.0}}))
    return path


def test_the_workload_asks_each_copy_by_name_with_its_sources_texts(tmp_path):
    path = many_workload(base_workload(tmp_path), 11, tmp_path / "w11.json")
    workload = json.loads(path.read_text())
    assert workload["tasks"] == COPIES and workload["sources"] == (TASKS * 4)[:11]
    bodies = request_bodies(path)
    assert len(bodies) == 11 and len(bodies[9]) == 3
    first = json.loads(bodies[9][1])["instances"][0]
    assert first == {**workload["instances"]["rte"][1], "task": "rte-9"}
    weights = popularity_weights("zipf", 11, s=1.1)
    assert weights[0] / weights[1] == pytest.approx(2 ** 1.1)
    lengths = {"rte": 30.0, "sst2": 10.0, "stsb": 20.0}
    expected = sum(w * lengths[s] for w, s in zip(weights, workload["sources"]))
    assert mean_length(workload, 1.1) == pytest.approx(expected)
    assert mean_length({**workload, "sources": ["sst2"] * 11}, 1.1) == pytest.approx(10.0)


def test_a_served_store_of_copies_answers_the_zipf_loop_through_a_tiny_cache(run_dir, store, tmp_path):
    pytest.importorskip("aiohttp")
    workload = many_workload(base_workload(tmp_path), 11, tmp_path / "w11.json")
    args = parse_args(["--quick", "--concurrency", "4"])
    assert (args.counts, args.lora_counts, args.rounds) == ([8, 100], ["fit"], 1)
    spec = {"name": "zipf", "mode": "closed", "weights": {"kind": "zipf", "s": args.zipf_s}, "seed": 0,
            "warmup_s": 0.0, "concurrency": args.concurrency, "requests": 24, "seconds": 30}
    with in_process_server(run_dir, task_store=str(store), weight_cache_mb=0.5) as (service, url):
        (result,) = asyncio.run(run_phases(url, request_bodies(workload), [spec]))
        cache = cache_figures(url)
        one_task = service.engine.model.weight_table.task_bytes
    assert result["requests"] == 24 and result["errors"] == 0 and result["throughput"] > 0
    looked = cache["hyperpelt_weight_cache_hits_total"] + cache["hyperpelt_weight_cache_misses_total"]
    assert looked >= 24 / 4 and cache["hyperpelt_weight_cache_misses_total"] > 3  # copies generated
    kept = 0.5 * 2**20 // one_task
    assert 1 <= kept < 11 and cache["hyperpelt_weight_cache_tasks"] == kept
    assert cache["hyperpelt_weight_cache_evictions_total"] > 0  # 0.5 MiB holds fewer than 11 tasks
    assert cache["hyperpelt_batch_tasks_count"] > 0


def test_the_lora_server_serves_copies_and_the_budget_sets_its_count(run_dir):
    pytest.importorskip("peft")
    from bench.serve_lora import LoraEngine, LoraModel

    model = LoraModel.from_run(run_dir, adapters=7)
    assert model.task_names == COPIES[:7]
    warm = LoraEngine(model, warm_tasks=3).warm_up_items()  # the run's own tasks, as hyperpelt serve's
    assert [[item.task_id for item in batch] for batch in warm] == [[0], [1], [2], [0, 1, 2]]
    assert model.tasks[3].input_fields == model.tasks[0].input_fields
    heads = model.heads.heads
    assert all(torch.equal(heads[4].state_dict()[k], heads[1].state_dict()[k]) for k in heads[1].state_dict())
    one = 6 * 2 * (8 * 384 + 384 * 8) * 4  # MiniLM-L6: 6 layers, query and value, r = 8, float32
    assert model.adapter_bytes() == one
    assert lora_fit(run_dir, 64.0) == (64 * 2**20 // one, one) == (227, one)


def figures(throughput: float, hwm_mb: float) -> dict:
    cache = {"hyperpelt_weight_cache_hits_total": 300.0, "hyperpelt_weight_cache_misses_total": 100.0,
             "hyperpelt_weight_cache_evictions_total": 40.0, "hyperpelt_weight_cache_tasks": 60.0,
             "hyperpelt_weight_cache_bytes": 24 * 2**20, "hyperpelt_weight_generation_seconds_count": 50.0,
             "hyperpelt_weight_generation_seconds_sum": 0.5, "hyperpelt_batch_tasks_sum": 300.0,
             "hyperpelt_batch_tasks_count": 100.0}
    return {"throughput": throughput, "p50_ms": 400.0, "p99_ms": 900.0, "errors": 0, "cache": cache,
            "rss_idle_kb": 500 * 1024, "rss_after_kb": 520 * 1024, "hwm_kb": hwm_mb * 1e6 / 1024}


def results_of(rounds: list[tuple[float, float]], tmp_path: Path) -> dict:
    """Rounds of made-up figures: 8 tasks at 60 req/s and 600 MB peak; 10,000 at the given pair."""
    args = parse_args(["--counts", "8,10000", "--rounds", str(len(rounds)), "--report",
                       str(tmp_path / "r.md"), "--png", str(tmp_path / "r.png")])
    return {"machine": "2 CPUs", "code": "git abc1234",
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rounds": [{"hyperpelt": {"8": figures(60.0, 600.0), "10000": figures(t, hwm)},
                        "lora": {"8": figures(50.0, 700.0), "227": figures(12.0, 760.0)}}
                       for t, hwm in rounds],
            "lora": {"adapter_bytes": 294912, "fit": 227},
            "mean_length": {"8": 40.0, "10000": 41.0, "227": 40.5}}


def test_the_targets_take_the_median_of_the_rounds_values(tmp_path):
    results = results_of([(51.0, 650.0), (45.0, 720.0), (54.0, 690.0)], tmp_path)
    kept, grown, steady = checks(results)
    assert kept.name == "throughput at 10000 tasks / at 8" and kept.value == pytest.approx(0.85)
    assert kept.holds and not kept.lower_is_better
    assert grown.name == "peak RSS at 10000 tasks - at 8 (MB)" and grown.value == pytest.approx(90.0)
    assert grown.holds and grown.lower_is_better
    assert steady.name == "RSS idle after the load at 10000 tasks - at 8 (MB)" and steady.value == 0
    report = markdown(results, "python -m bench.many_tasks")
    assert "| minilm | throughput at 10000 tasks / at 8 | 0.85 | ≥ 0.8 |  | yes |" in report
    assert "| minilm | peak RSS at 10000 tasks - at 8 (MB) | 90.00 | ≤ 100 |  | yes |" in report
    assert "Targets met: all." in report and "Code: git abc1234." in report
    # hits / misses / evictions, hit %, cached tasks / MiB, generations / ms each, then the three RSS
    assert "| 300 / 100 / 40 | 75.0 | 60 / 24.0 | 50 / 10.0 | 500 | 520 | 658 |" in report
    assert "| 227 | 12.0 | 400 / 900 | 0 | 40.5 | 500 | 520 | 725 |" in report  # LoRA's row
    assert "holds 227 adapters" in report and "![throughput and resident set" in report
    missed = markdown(results_of([(47.0, 650.0), (45.0, 720.0), (54.0, 705.0)], tmp_path), "x")
    assert "Targets not met: throughput at 10000 tasks / at 8; peak RSS at 10000 tasks - at 8 (MB)." in missed
    assert checks({**results, "rounds": [{"hyperpelt": {"8": figures(1.0, 1.0)}, "lora": {}}]}) == []
    png = plot(results, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
