"""Inference reads every task's generated weights from one table: any mix of tasks costs no hypernetwork
work and no new memory, and gives what generating for the batch gives."""

import random

import pytest
import torch

from conftest import build_model, encode, examples, perturb, t5_config
from helpers.methods import SMALL
from hyperpelt.inject import ConditioningState
from hyperpelt.methods import weight_table

TASKS = ("rte", "mrpc", "stsb", "cola")


def features_of(model) -> dict[int, list[dict]]:
    return {i: encode(model, task, examples(task, 8)) for i, task in enumerate(TASKS)}


def random_mix(model, features, rng: random.Random, size: int = 6):
    task_ids = [rng.randrange(len(TASKS)) for _ in range(size)]
    chosen = [features[t][rng.randrange(8)] for t in task_ids]
    batch = model.backbone.collate(chosen, model.tokenizer)
    batch["decoder_input_ids"] = torch.zeros_like(batch["input_ids"][:, :3])
    batch.pop("labels")
    return torch.tensor(task_ids), batch


def table_tensors(model) -> list[torch.Tensor]:
    table = model.weight_table
    weights = ([table.prefix] if table.prefix is not None else []) + list(table.adapters.values())
    return [getattr(w, name) for w in weights for name in w.row_fields if getattr(w, name) is not None]


def test_hypernetwork_calls_stay_constant_over_100_random_task_mixes():
    """Unbounded (training's evaluation, predict): the first batch generates every task in one call, as the
    fixed table did, and no later mix costs hypernetwork work."""
    model = build_model(t5_config(), tasks=TASKS)
    perturb(model)
    calls = []
    condition = model.method.condition
    model.method.condition = lambda task_ids, state: calls.append(len(task_ids)) or condition(task_ids, state)
    features, rng = features_of(model), random.Random(0)
    with torch.no_grad():
        task_ids, batch = random_mix(model, features, rng)
        model(task_ids, **batch)
        table = [t.data_ptr() for t in table_tensors(model)]
        assert calls == [len(TASKS)]  # one pass of the hypernetwork, for every task
        mixes = set()
        for _ in range(100):
            task_ids, batch = random_mix(model, features, rng)
            mixes.add(tuple(sorted(set(task_ids.tolist()))))
            model(task_ids, **batch)
    assert len(mixes) > 8  # many different sets of tasks
    assert calls == [len(TASKS)]
    assert [t.data_ptr() for t in table_tensors(model)] == table  # no new weights were generated


def test_a_bounded_cache_generates_each_task_once_over_100_random_task_mixes():
    """With a budget (serving): a batch's missing tasks are generated together, in one call; once every task
    is cached no mix costs hypernetwork work or new memory."""
    model = build_model(t5_config(), tasks=TASKS)
    perturb(model)
    model.serve_weights(10**9)
    calls = []
    condition = model.method.condition
    model.method.condition = lambda task_ids, state: calls.append(len(task_ids)) or condition(task_ids, state)
    features, rng = features_of(model), random.Random(0)
    seen, table, mixes = set(), None, set()
    with torch.no_grad():
        for _ in range(100):
            task_ids, batch = random_mix(model, features, rng)
            new, before = set(task_ids.tolist()) - seen, len(calls)
            model(task_ids, **batch)
            assert calls[before:] == ([len(new)] if new else [])
            seen |= new
            if len(seen) == len(TASKS) and table is None:
                table = [t.data_ptr() for t in table_tensors(model)]
            mixes.add(tuple(sorted(set(task_ids.tolist()))))
    assert len(mixes) > 8  # many different sets of tasks
    assert sum(calls) == len(TASKS) and model.weight_table.stats.misses == len(TASKS)
    assert [t.data_ptr() for t in table_tensors(model)] == table  # no new weights were generated


@pytest.mark.parametrize("method", ["hyperpelt", "hyperformer++", "adapters", "mam", "prefix"])
def test_table_outputs_equal_generating_for_the_batch(method):
    model = build_model(t5_config(), {"name": method, **SMALL[method]}, tasks=TASKS)
    perturb(model)
    features, rng = features_of(model), random.Random(1)
    for size in (1, 6):  # one example (one task, the plain-matmul path) and a mix
        task_ids, batch = random_mix(model, features, rng, size)
        with torch.no_grad():
            from_table = model(task_ids, **batch).logits
        with torch.enable_grad():  # gradients on: weights are generated for this batch, no table
            generated = model(task_ids, **batch).logits.detach()
        assert torch.allclose(from_table, generated, atol=1e-5), method


def t5_with_a_mix(seed: int):
    """HyperPELT on t5-tiny and a random mixed batch of its tasks."""
    model = build_model(t5_config(), tasks=TASKS)
    task_ids, batch = random_mix(model, features_of(model), random.Random(seed))
    return model, task_ids, batch


def test_table_is_rebuilt_after_a_weight_changes():
    model, task_ids, batch = t5_with_a_mix(2)
    with torch.no_grad():
        before = model(task_ids, **batch).logits
        assert model.weight_table.builds == 1
        perturb(model)  # an in-place change, as an optimizer step makes
        after = model(task_ids, **batch).logits
        assert model.weight_table.builds == 2
        model(task_ids, **batch)
    assert model.weight_table.builds == 2
    assert not torch.allclose(before, after)


def test_an_optimizer_step_bumps_the_version_and_the_table_is_rebuilt():
    model, task_ids, batch = t5_with_a_mix(3)
    with torch.no_grad():
        before = model(task_ids, **batch).logits
    version = weight_table.method_version(model.method)
    optimizer = torch.optim.SGD([p for p in model.method.parameters() if p.requires_grad], lr=0.5)
    model(task_ids, **batch).logits.square().mean().backward()  # gradients on: no table
    assert model.weight_table.builds == 1 and weight_table.method_version(model.method) == version
    optimizer.step()
    assert weight_table.method_version(model.method) != version
    with torch.no_grad():
        after = model(task_ids, **batch).logits
        model(task_ids, **batch)
    assert model.weight_table.builds == 2
    assert not torch.allclose(before, after)


def test_another_models_optimizer_step_leaves_the_table_as_it_is():
    """A model trained beside (a task added while serving) steps its own weights: the served table stays."""
    model, task_ids, batch = t5_with_a_mix(3)
    other, _, _ = t5_with_a_mix(3)
    with torch.no_grad():
        model(task_ids, **batch)
    version = weight_table.method_version(model.method)
    optimizer = torch.optim.SGD([p for p in other.method.parameters() if p.requires_grad], lr=0.5)
    other(task_ids, **batch).logits.square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        model(task_ids, **batch)
    assert weight_table.method_version(model.method) == version and model.weight_table.builds == 1


def test_loading_weights_bumps_the_version():
    model, task_ids, batch = t5_with_a_mix(4)
    other = build_model(t5_config(), tasks=TASKS)
    perturb(other)
    with torch.no_grad():
        model(task_ids, **batch)
        model.load_state_dict(other.state_dict())
        loaded = model(task_ids, **batch).logits
        assert model.weight_table.builds == 2
        assert torch.equal(loaded, other(task_ids, **batch).logits)


@pytest.mark.parametrize("method", ["hyperpelt", "hyperformer++", "hyperformer", "vl-hyperpelt"])
def test_weights_generated_from_embedding_rows_equal_those_of_task_ids(method):
    model = build_model(t5_config(), {"name": method, **SMALL[method]}, tasks=TASKS)
    perturb(model)
    by_ids, by_rows = ConditioningState(), ConditioningState()
    embedding = getattr(model.method, model.method.task_embedding_name)
    with torch.no_grad():
        model.method.condition(torch.tensor([1, 3]), by_ids)
        model.method.condition_embeddings(embedding[[1, 3]].clone(), by_rows)
    pairs = [(by_ids.prefix, by_rows.prefix)] if by_ids.prefix is not None else []
    pairs += [(by_ids.adapters[group], by_rows.adapters[group]) for group in by_ids.adapters]
    assert pairs
    for a, b in pairs:
        for name in a.row_fields:
            assert (getattr(a, name) is None) == (getattr(b, name) is None)
            if getattr(a, name) is not None:
                assert torch.equal(getattr(a, name), getattr(b, name)), (method, name)


def task_bytes(model) -> int:
    with torch.no_grad():
        state = ConditioningState()
        model.method.condition(torch.tensor([0]), state)
    return sum(t.numel() * t.element_size() for t in table_tensors_of(state.prefix, state.adapters))


def table_tensors_of(prefix, adapters) -> list[torch.Tensor]:
    weights = ([prefix] if prefix is not None else []) + list(adapters.values())
    return [getattr(w, name) for w in weights for name in w.row_fields if getattr(w, name) is not None]


@pytest.mark.parametrize("tasks_kept", [0, 1, 2])
def test_a_budget_below_one_batch_of_tasks_answers_as_an_unbounded_cache_and_keeps_what_fits(tasks_kept):
    model, task_ids, batch = t5_with_a_mix(5)
    perturb(model)
    task_ids = torch.tensor([0, 1, 2, 3, 1, 0])  # four tasks
    first = {k: v[:1] for k, v in batch.items()}
    with torch.no_grad():
        unbounded, unbounded_one = model(task_ids, **batch).logits, model(task_ids[:1], **first).logits
        model.serve_weights(task_bytes(model) * tasks_kept + 7)
        for _ in range(2):  # generated (all missing), then with what was kept
            assert torch.equal(model(task_ids, **batch).logits, unbounded)
        one = model(task_ids[:1], **first).logits  # one task: the plain-matmul path
    stats = model.weight_cache_stats
    assert stats.tasks == tasks_kept and stats.bytes == tasks_kept * task_bytes(model)
    assert stats.misses == 4 + (4 - tasks_kept) + (0 if tasks_kept else 1)
    assert torch.equal(one, unbounded_one)


def test_least_recently_used_tasks_are_evicted_never_one_the_batch_needs():
    model, _, batch = t5_with_a_mix(6)
    model.serve_weights(task_bytes(model) * 2)
    calls = []
    condition = model.method.condition
    model.method.condition = lambda ids, state: calls.append(ids.tolist()) or condition(ids, state)
    with torch.no_grad():
        for ids in ([0, 1], [2, 2], [0, 3], [0, 3], [1, 1], [2, 3], [3, 3]):
            model(torch.tensor(ids), **{k: v[:2] for k, v in batch.items()})
    # [2] evicts 0, the least recently used; [0, 3] evicts 1 and 2; [1] evicts 0; [2, 3] keeps 3, which it
    # needs though it is the least recently used, and evicts 1; [3] is then a hit
    assert calls == [[0, 1], [2], [0, 3], [1], [2]]
    stats = model.weight_cache_stats
    assert (stats.hits, stats.misses, stats.evictions, stats.tasks, stats.generations) == (4, 7, 5, 2, 5)
