"""Temperature sampling of tasks."""

from collections import Counter

import pytest

from hyperpelt.data.mixture import TaskSampler, temperature_rates

SIZES = {"a": 10000, "b": 100}


def test_rates_follow_n_to_the_one_over_t():
    assert temperature_rates(SIZES, 1.0) == pytest.approx({"a": 10000 / 10100, "b": 100 / 10100})
    assert temperature_rates(SIZES, 2.0) == pytest.approx({"a": 100 / 110, "b": 10 / 110})
    uniform = temperature_rates(SIZES, 1e6)
    assert uniform["a"] == pytest.approx(0.5, abs=1e-4)
    assert sum(temperature_rates({"x": 3, "y": 5, "z": 7}, 3.0).values()) == pytest.approx(1.0)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 100.0])
def test_empirical_proportions_match_rates(temperature):
    sampler = TaskSampler(SIZES, temperature, seed=0)
    counts = Counter(sampler.next_tasks(20000))
    for name, rate in temperature_rates(SIZES, temperature).items():
        assert counts[name] / 20000 == pytest.approx(rate, abs=0.01)


def test_seeded_stream():
    one, two = TaskSampler(SIZES, 2.0, seed=7), TaskSampler(SIZES, 2.0, seed=7)
    assert [one.next_task() for _ in range(50)] == two.next_tasks(50)
    assert TaskSampler(SIZES, 2.0, seed=8).next_tasks(200) != TaskSampler(SIZES, 2.0, seed=7).next_tasks(200)


@pytest.mark.parametrize("sizes, temperature",
                         [(SIZES, 0.0), (SIZES, -1.0), ({"a": 0, "b": 3}, 1.0), ({}, 1.0)])
def test_invalid_inputs(sizes, temperature):
    with pytest.raises(ValueError):
        temperature_rates(sizes, temperature)


def _stream(process_index: int, num_processes: int, mixed: bool):
    """A BatchStream over two fake tasks whose collate returns the examples' ids."""
    import types

    import torch

    from hyperpelt.data.features import BatchStream, TaskData

    def collate(features, tokenizer):
        return {"ids": torch.tensor([f["id"] for f in features])}

    model = types.SimpleNamespace(backbone=types.SimpleNamespace(collate=collate), tokenizer=None)
    task = lambda name: types.SimpleNamespace(name=name)  # noqa: E731
    data = [TaskData(task(name), i, {}, {"train": [{"id": 1000 * i + j} for j in range(n)]})
            for i, (name, n) in enumerate([("a", 50), ("b", 30)])]
    return BatchStream(data, model, 4, 1.0, mixed, seed=0, process_index=process_index,
                       num_processes=num_processes)


@pytest.mark.parametrize("mixed", [False, True])
def test_processes_split_one_global_batch_without_repeats(mixed):
    whole = _stream(0, 1, mixed)
    whole.batch_size = 8  # the global batch of two processes with 4 each
    ranks = [_stream(0, 2, mixed), _stream(1, 2, mixed)]
    for _ in range(10):
        expected = whole.next()
        parts = [r.next() for r in ranks]
        assert all(len(p["ids"]) == 4 for p in parts)
        assert sorted(sum((p["ids"].tolist() for p in parts), [])) == sorted(expected["ids"].tolist())
        assert (sorted(sum((p["task_ids"].tolist() for p in parts), []))
                == sorted(expected["task_ids"].tolist()))
        assert not set(parts[0]["ids"].tolist()) & set(parts[1]["ids"].tolist())
