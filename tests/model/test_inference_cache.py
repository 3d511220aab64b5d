"""Generated weights are cached for inference: generate() runs no hypernetwork per decoding step, the
cache follows weight changes, and cached, regenerated and exported weights give the same tokens."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.research_code import regenerating_every_forward  # noqa: E402
from conftest import build_model, encode, examples, perturb, t5_config
from hyperpelt.inject.attention import PrefixSlot

TASKS = ("rte", "mrpc")


@pytest.fixture()
def model():
    model = build_model(t5_config(), None, TASKS)
    perturb(model)
    return model


def batch_of(model, n=4):
    features = encode(model, "rte", examples("rte", n)) + encode(model, "mrpc", examples("mrpc", n))
    batch = model.backbone.collate(features, model.tokenizer)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return torch.tensor([0] * n + [1] * n), inputs


def count_condition_calls(model):
    calls = []
    original = model.method.condition

    def counting(task_ids, state):
        calls.append(task_ids.clone())
        return original(task_ids, state)

    model.method.condition = counting
    return calls


def test_cached_generate_runs_the_hypernetwork_zero_times_per_step(model):
    task_ids, inputs = batch_of(model)
    calls = count_condition_calls(model)
    with torch.no_grad():
        first = model.generate(task_ids, **inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert len(calls) == 1  # once for the whole generation, not once per decoding step
        second = model.generate(task_ids, **inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert len(calls) == 1  # cache hit: no hypernetwork work at all
        with regenerating_every_forward(model, task_ids):
            regenerated = model.host.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert len(calls) >= 1 + 6  # the research code's behaviour: every decoding step regenerates
    assert torch.equal(first, second)
    assert torch.equal(first, regenerated)


def test_cache_follows_weight_changes(model):
    task_ids, inputs = batch_of(model)
    start = torch.zeros_like(inputs["input_ids"][:, :2])  # two decoder positions
    calls = count_condition_calls(model)
    with torch.no_grad():
        before = model(task_ids, labels=None, **inputs, decoder_input_ids=start).logits
        model(task_ids, labels=None, **inputs, decoder_input_ids=start)
        assert len(calls) == 1
        model.method.projector_out.bias.add_(0.5)  # an in-place update, as a load makes, and says so:
        model.method.weights_changed()
        after = model(task_ids, labels=None, **inputs, decoder_input_ids=start).logits
    assert len(calls) == 2
    assert not torch.allclose(before, after)
    # training (gradients on) never uses the cache
    model(task_ids, labels=None, **inputs, decoder_input_ids=start)
    assert len(calls) == 3


def test_exported_static_weights_match_the_hypernetwork(model):
    task_ids, inputs = batch_of(model)
    rte = task_ids == 0
    one_task = {k: v[rte] for k, v in inputs.items()}
    static = model.export_static("rte")
    assert sum(p.numel() for p in static.method.parameters()) == 0  # no hypernetwork left
    with torch.no_grad():
        ours = model.generate(task_ids[rte], **one_task, max_new_tokens=5, do_sample=False)
        exported = static.generate(task_ids[rte], **one_task, max_new_tokens=5, do_sample=False)
    assert torch.equal(ours, exported)


def test_each_prefix_site_selects_its_rows_once_per_generation(model, monkeypatch):
    task_ids, inputs = batch_of(model)
    selected = []
    original = PrefixSlot._selected

    def counted(slot, batch_size):
        selected.append(slot.index)
        return original(slot, batch_size)

    monkeypatch.setattr(PrefixSlot, "_selected", counted)
    model.pack_inference = False
    with torch.no_grad():
        tokens = model.generate(task_ids, **inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    monkeypatch.undo()
    sites = [s for s in model.method.sites if s.role == "attention"]
    assert len(tokens[0]) == 7 and sorted(selected) == list(range(len(sites)))
    model.pack_inference = True
    with torch.no_grad():
        assert torch.equal(model.generate(task_ids, **inputs, max_new_tokens=6, min_new_tokens=6), tokens)


def test_each_adapter_site_gathers_its_rows_once_per_generation(model, monkeypatch):
    import hyperpelt.inject.adapters as adapters

    task_ids, inputs = batch_of(model)
    model.pack_inference = False
    gathered = []
    original = adapters._pick

    def counted(w, rows, index, dtype):
        gathered.append((id(w), index))
        return original(w, rows, index, dtype)

    monkeypatch.setattr(adapters, "_pick", counted)
    with torch.no_grad():
        tokens = model.generate(task_ids, **inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert len(tokens[0]) == 7 and gathered and len(gathered) == len(set(gathered))
    # gathered afresh at every step, the rows give the same tokens
    monkeypatch.setattr(adapters, "_task_pick", lambda state, w, group, index, batch_size, dtype:
                        original(w, state.rows_for(batch_size, w.shared), index, dtype))
    with torch.no_grad():
        assert torch.equal(model.generate(task_ids, **inputs, max_new_tokens=6, min_new_tokens=6), tokens)
