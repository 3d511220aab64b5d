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


def _stream(process_index: int, num_processes: int, mixed: bool, batch_size: int = 8,
            micro_batch_size: int | None = None):
    """A BatchStream over two fake tasks whose collate returns the examples' ids."""
    import types

    import torch

    from hyperpelt.data.batches import BatchStream, Collator, TaskData

    def collate(features, tokenizer):
        return {"ids": torch.tensor([f["id"] for f in features])}

    collator = Collator(types.SimpleNamespace(collate=collate), tokenizer=None)
    task = lambda name: types.SimpleNamespace(name=name)  # noqa: E731
    data = [TaskData(task(name), i, {}, {"train": [{"id": 1000 * i + j} for j in range(n)]})
            for i, (name, n) in enumerate([("a", 50), ("b", 30)])]
    return BatchStream(data, collator, batch_size, 1.0, mixed, seed=0, process_index=process_index,
                       num_processes=num_processes, micro_batch_size=micro_batch_size)


@pytest.mark.parametrize("mixed", [False, True])
def test_processes_split_one_global_batch_without_repeats(mixed):
    whole = _stream(0, 1, mixed)  # batch_size is global: two processes take 4 each of the same 8
    ranks = [_stream(0, 2, mixed), _stream(1, 2, mixed)]
    for _ in range(10):
        ((expected, weight),) = whole.next()
        assert weight == 1.0
        parts = []
        for rank in ranks:
            ((part, weight),) = rank.next()
            assert weight == pytest.approx(1.0)  # 2 processes x 4 of 8 examples: DDP's mean is the mean
            parts.append(part)
        assert all(len(p["ids"]) == 4 for p in parts)
        assert sorted(sum((p["ids"].tolist() for p in parts), [])) == sorted(expected["ids"].tolist())
        assert (sorted(sum((p["task_ids"].tolist() for p in parts), []))
                == sorted(expected["task_ids"].tolist()))
        assert not set(parts[0]["ids"].tolist()) & set(parts[1]["ids"].tolist())


@pytest.mark.parametrize("mixed", [False, True])
def test_micro_batches_split_the_same_global_batch(mixed):
    whole, micro = _stream(0, 1, mixed), _stream(0, 1, mixed, micro_batch_size=2)
    split = [_stream(p, 2, mixed, micro_batch_size=2) for p in range(2)]
    for _ in range(10):
        ((expected, _),) = whole.next()
        pieces = micro.next()
        assert [len(b["ids"]) for b, _ in pieces] == [2, 2, 2, 2]
        assert [w for _, w in pieces] == [0.25] * 4  # the weighted sum of the means is the batch's mean
        assert sum((b["ids"].tolist() for b, _ in pieces), []) == expected["ids"].tolist()
        per_rank = [rank.next() for rank in split]
        assert all(len(p) == 2 and [w for _, w in p] == [0.5, 0.5] for p in per_rank)
        ids = [i for p in per_rank for b, _ in p for i in b["ids"].tolist()]
        assert sorted(ids) == sorted(expected["ids"].tolist())
