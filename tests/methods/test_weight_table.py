"""Inference reads every task's generated weights from one table: any mix of tasks costs no hypernetwork
work and no new memory, and gives what generating for the batch gives."""

import random

import pytest
import torch

from conftest import build_model, encode, examples, perturb, t5_config
from helpers.methods import SMALL
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


def test_each_task_is_generated_once_over_100_random_task_mixes():
    """A batch's missing tasks are generated together, in one call; once every task is cached no mix costs
    hypernetwork work or new memory."""
    model = build_model(t5_config(), tasks=TASKS)
    perturb(model)
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
