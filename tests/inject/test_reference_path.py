"""Every fast path against the slow reference path (``TunedModel.reference()``, inject/reference.py).

For every registered method, on a tiny T5 and on MiniLM: the loss and gradients of a training step, the
weights after two optimizer steps, and the evaluation of a batch of several tasks and lengths (before and
after training: the weight table must follow), equal the reference's within float rounding. A fast path
broken on purpose is caught (``test_a_broken_fast_path_is_caught``), so no speed change moves a result
unseen.
"""

import copy
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from conftest import build_model, minilm_config, perturb, t5_config
from helpers.methods import GRID, SMALL
from helpers.packing import TASKS
from helpers.packing import mixed_batch as packing_batch
from hyperpelt.backbones.few_rows import FewRowsLinear
from hyperpelt.heads import HeadsConfig
from hyperpelt.inject import ConditioningState, PrefixSlot
from hyperpelt.inject import adapters as adapter_sites
from hyperpelt.inject.packing import Packing
from hyperpelt.inject.reference import reference_path
from hyperpelt.inject.state import _PerSite
from hyperpelt.methods import method_names, weight_table

METHODS = [name for name in method_names() if not name.startswith("toy-")]  # toys: other test modules'
BACKBONES = {"t5": t5_config, "minilm": minilm_config}
TOLERANCE = dict(atol=1e-5, rtol=1e-4)
LR = 0.1


def test_every_registered_method_has_a_reference_check():
    missing = set(METHODS) - set(SMALL)
    assert not missing, f"give {missing} a tiny config in helpers/methods.py SMALL"


def tiny_model(backbone: str, method: str):
    heads = None if backbone == "t5" else HeadsConfig(pair_encoding="separate", pair_head="alignment")
    model = build_model(BACKBONES[backbone](), {"name": method, **SMALL[method]}, TASKS, heads=heads)
    perturb(model, std=0.1)
    for module in model.modules():  # deterministic training steps
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def mixed_batch(model) -> tuple[torch.Tensor, dict]:
    """test_packing's batch (tasks interleaved, lengths different, so packing applies), with random image
    features for methods that read them."""
    task_ids, batch = packing_batch(model)
    assert not batch["attention_mask"].all()
    if model.method.reads_images:
        generator = torch.Generator().manual_seed(0)
        batch["image_features"] = torch.randn(len(task_ids), GRID, 8, generator=generator)
    return task_ids, batch


@torch.no_grad()
def evaluate(model, task_ids: torch.Tensor, batch: dict) -> dict:
    """What evaluation reads of the mixed batch and of its last task's examples alone (not row 0)."""
    out = {}
    for name, keep in (("mixed", slice(None)), ("one task", task_ids == task_ids.max())):
        ids, part = task_ids[keep], {k: v[keep] for k, v in batch.items()}
        forward = model(ids, **part)
        out[f"{name} loss"] = forward.loss
        if model.backbone.generative:
            out[f"{name} logits"] = forward.logits
            inputs = {k: v for k, v in part.items() if k != "labels"}
            generated = model.generate(ids, max_new_tokens=4, output_scores=True,
                                       return_dict_in_generate=True, **inputs)
            out[f"{name} tokens"], out[f"{name} scores"] = generated.sequences, torch.stack(generated.scores)
        else:
            out[f"{name} predictions"] = forward.predictions
    return out


def run(model, task_ids: torch.Tensor, batch: dict, reference: bool) -> dict:
    """Evaluation, two SGD steps on the batch, evaluation again: the fast path or the reference's. (SGD, not
    the trainer's AdamW: Adam scales a gradient near its eps up to a step of the learning rate, so it would
    blow float rounding in a gradient of 1e-9 up to a difference in the weights that no tolerance bounds.)"""
    with model.reference() if reference else nullcontext():
        out = {f"before: {k}": v for k, v in evaluate(model, task_ids, batch).items()}
        trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        optimizer = torch.optim.SGD([p for _, p in trained], lr=LR)
        model.train()
        for step in range(2):
            loss = model(task_ids, **batch).loss
            loss.backward()
            if step == 0:
                out["step loss"] = loss.detach()
                out.update({f"gradient: {name}": torch.zeros_like(p) if p.grad is None else p.grad.clone()
                            for name, p in trained})
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        out.update({f"trained: {name}": p.detach().clone() for name, p in trained})
        out.update({f"after: {k}": v for k, v in evaluate(model, task_ids, batch).items()})
    return out


def check_against_reference(backbone: str, method: str) -> None:
    model = tiny_model(backbone, method)
    reference = copy.deepcopy(model)
    task_ids, batch = mixed_batch(model)
    fast, slow = run(model, task_ids, batch, reference=False), run(reference, task_ids, batch, reference=True)
    assert fast.keys() == slow.keys()
    for key, value in slow.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(fast[key], value, **TOLERANCE, msg=lambda m, key=key: f"{key}: {m}")
        else:
            assert torch.equal(fast[key], value), key


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", METHODS)
def test_fast_path_equals_the_reference(method, backbone):
    check_against_reference(backbone, method)


def test_the_reference_path_takes_no_fast_path(monkeypatch):
    """Under ``reference()`` no weight table and no packing are used, no rows or joins are kept for the batch,
    and every site regenerates its weights: the hypernetwork runs at every layer call."""
    model = tiny_model("t5", "hyperpelt")
    task_ids, batch = mixed_batch(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    used = []
    monkeypatch.setattr(weight_table.WeightTable, "condition", lambda *_: used.append("table"))
    monkeypatch.setattr(Packing, "of", lambda *_: used.append("packing"))
    kept, condition = [], model.method.condition
    model.method.condition = lambda ids, state: (kept.append(len(state.selected) + len(state.joined))
                                                 or condition(ids, state))
    with model.reference(), torch.no_grad():
        model.generate(task_ids, max_new_tokens=3, min_new_tokens=3, **inputs)
    sites = len(model.method.attention_sites) + len(model.method.ffn_sites)
    assert not used and len(kept) > sites and not any(kept)


# A fast path broken on purpose, as a change meant for speed could break it; the reference path stays as is.
def _stale_table(monkeypatch):
    monkeypatch.setattr(weight_table, "method_version", lambda method: ())  # never rebuilt after training


def _packing_drops_the_last_token(monkeypatch):
    original = Packing.of.__func__

    def of(cls, mask, rows, task_ids):
        mask = mask.clone()
        mask[torch.arange(len(mask)), mask.sum(1) - 1] = False
        return original(cls, mask, rows, task_ids)

    monkeypatch.setattr(Packing, "of", classmethod(of))


def _rows_kept_forever(monkeypatch):
    original, kept = ConditioningState.once_per_batch, {}
    monkeypatch.setattr(ConditioningState, "once_per_batch", lambda self, key, sources, make: original(
        self, key, sources, make) if reference_path() else kept.setdefault(key, make()))


def _first_site_for_all(monkeypatch):
    original = _PerSite.site
    monkeypatch.setattr(_PerSite, "site", lambda self, name, index: original(
        self, name, index if reference_path() else 0))


def _few_rows_mixed_up(monkeypatch):
    def forward(self, x):
        if reference_path() or torch.is_grad_enabled() or x.numel() // x.shape[-1] not in range(2, 9):
            return nn.functional.linear(x, self.weight, self.bias)
        rows = x.numel() // x.shape[-1]
        return torch.mm(self.weight, x.reshape(-1, rows)).t().reshape(*x.shape[:-1], self.out_features)

    monkeypatch.setattr(FewRowsLinear, "forward", forward)


def _joined_the_wrong_way_round(monkeypatch):
    original = PrefixSlot.joined

    def joined(self, prefix_keys, prefix_values, key, value, remember):
        if not remember:
            return original(self, prefix_keys, prefix_values, key, value, remember)
        return torch.cat([key, prefix_keys], dim=2), torch.cat([value, prefix_values], dim=2)

    monkeypatch.setattr(PrefixSlot, "joined", joined)


def _one_row_adapter_without_bias(monkeypatch):
    original = adapter_sites._apply

    def apply(x, w):
        if not w["batched"] and w["down"].shape[0] == 1 and not reference_path():
            w = {**w, "up_bias": None}
        return original(x, w)

    monkeypatch.setattr(adapter_sites, "_apply", apply)


BREAKS = {
    "weight table never rebuilt": (_stale_table, "t5", "hyperpelt"),
    "packing drops each text's last token": (_packing_drops_the_last_token, "minilm", "hyperpelt"),
    "packed T5 encoder drops each text's last token": (_packing_drops_the_last_token, "t5", "hyperformer"),
    "once-per-batch rows kept forever": (_rows_kept_forever, "t5", "hyperpelt"),
    "every site reads the first site's weights": (_first_site_for_all, "minilm", "hyperformer++"),
    "few-row product mixes rows up": (_few_rows_mixed_up, "t5", "full"),
    "decoder's kept join puts the prefix after the keys": (_joined_the_wrong_way_round, "t5", "prefix"),
    "one-row adapter drops its bias": (_one_row_adapter_without_bias, "t5", "mam"),
}


@pytest.mark.parametrize("broken", list(BREAKS))
def test_a_broken_fast_path_is_caught(broken, monkeypatch):
    breaking, backbone, method = BREAKS[broken]
    breaking(monkeypatch)
    with pytest.raises(AssertionError):
        check_against_reference(backbone, method)
