"""A frozen host in half precision (model.dtype): what trains stays float32, the host's bytes never move,
generated weights meet the host in its dtype once per batch, and mixed-task batches still equal one-task
batches."""

import dataclasses

import pytest
import torch

from conftest import build_model, encode, examples, minilm_config, perturb, t5_config, task_batch
from helpers.methods import GRID, SMALL
from hyperpelt.inject import ConditioningState

BF16 = torch.bfloat16
METHODS = ["hyperpelt", "hyperformer++", "adapters", "prefix", "vl-hyperpelt"]
BACKBONES = {"t5-tiny": (t5_config, "rte"), "minilm-l6": (minilm_config, "sst2")}


def half_model(backbone: str, method: str, tasks=None, dtype: str = "bfloat16", std: float = 0.05):
    config, task = BACKBONES[backbone]
    model = build_model(dataclasses.replace(config(), dtype=dtype), {"name": method, **SMALL[method]},
                        tasks=tasks or (task,))
    perturb(model, std=std)  # every method weight away from its start (zero-initialised ones included)
    return model


def raw_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8).clone()


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", METHODS)
def test_a_training_step_over_a_bfloat16_host(backbone, method):
    model = half_model(backbone, method)
    task = BACKBONES[backbone][1]
    batch = task_batch(model, task, 4)
    if model.reads_images:
        batch["image_features"] = torch.randn(4, GRID, SMALL[method]["feature_dim"])
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trained
    assert {p.dtype for p in frozen.values()} == {BF16}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    before_frozen = {n: raw_bytes(p) for n, p in frozen.items()}
    before_trained = {n: p.detach().clone() for n, p in trained.items()}

    model.train()
    optimizer = torch.optim.SGD(list(trained.values()), lr=0.1)
    loss = model(torch.zeros(4, dtype=torch.long), **batch).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    optimizer.step()

    assert all(torch.equal(raw_bytes(p), before_frozen[n]) for n, p in frozen.items())
    assert {p.dtype for p in frozen.values()} == {BF16}
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert {p.grad.dtype for p in trained.values()} == {torch.float32}
    unchanged = [n for n, p in trained.items() if torch.equal(p.detach(), before_trained[n])]
    assert not unchanged


def test_float16_host_keeps_what_from_pretrained_keeps_in_float32():
    """T5 keeps its feed-forward output projections (``wo``) in float32 under float16, as from_pretrained
    loads it; the random-weight path casts the same way, after drawing the float32 numbers."""
    model = half_model("t5-tiny", "hyperpelt", dtype="float16")
    reference = build_model(t5_config(), {"name": "hyperpelt", **SMALL["hyperpelt"]})
    for (name, p), (_, p32) in zip(model.host.named_parameters(), reference.host.named_parameters()):
        if p.requires_grad:
            continue
        assert p.dtype == (torch.float32 if ".wo." in name else torch.float16), name
        assert torch.equal(p, p32.to(p.dtype)), name
    loss = model(torch.zeros(2, dtype=torch.long), **task_batch(model, "rte", 2)).loss
    assert torch.isfinite(loss)


def test_generated_weights_are_cast_once_per_batch_and_the_table_holds_the_compute_dtype(monkeypatch):
    model = half_model("t5-tiny", "hyperpelt", tasks=("rte", "mrpc"))
    assert model.compute_dtype == BF16 and model.device == torch.device("cpu")
    batch = task_batch(model, "rte", 2)
    casts = []
    cast_weights = ConditioningState.cast_weights
    monkeypatch.setattr(ConditioningState, "cast_weights",
                        lambda self, dtype: (casts.append(dtype), cast_weights(self, dtype)))
    seen = []
    hook = model.host.encoder.block[0].layer[0].SelfAttention.q.register_forward_hook(
        lambda module, args, out: seen.append((out.dtype, model.state.prefix.keys.dtype,
                                               model.state.adapters["ffn"].down.dtype)))
    model(torch.tensor([0, 1]), **batch).loss.backward()  # training: generated, then cast
    assert casts == [BF16] and seen == [(BF16, BF16, BF16)]
    with torch.no_grad():
        model.eval()
        model(torch.tensor([1, 0]), **batch)  # inference: from the table
        model(torch.tensor([0, 0]), **batch)
    table = model.weight_table
    assert table.builds == 1 and table.prefix.keys.dtype == BF16
    assert {w.down.dtype for w in table.adapters.values()} == {BF16}
    assert casts == [BF16] * 4  # the table's build, then once per batch (nothing left to cast: no copy)
    hook.remove()


def test_a_float32_model_enters_no_autocast_and_casts_nothing(monkeypatch):
    model = build_model(t5_config(), {"name": "hyperpelt", **SMALL["hyperpelt"]})
    assert model.compute_dtype == torch.float32
    monkeypatch.setattr(ConditioningState, "cast_weights", lambda *args: pytest.fail("cast in float32"))
    autocast = []
    hook = model.host.encoder.block[0].layer[0].SelfAttention.q.register_forward_hook(
        lambda *args: autocast.append(torch.is_autocast_enabled("cpu")))
    with torch.no_grad():
        model(torch.tensor([0, 0]), **task_batch(model, "rte", 2))
    assert autocast == [False]
    hook.remove()


# Mixed-task batches in bf16. A mixed batch gathers each example's weight rows and uses batched matmuls, a
# one-task batch plain matmuls: kernels that may round differently. bf16 keeps 8 significant bits, so one
# rounding apart is 2^-8 of a value; the tolerance is two such steps of the largest value (on this CPU the
# two are equal bit for bit), against a change several times larger when the tasks are swapped.

def bf16_tolerance(values: torch.Tensor) -> float:
    return 2 * 2**-8 * float(values.abs().max())


def test_mixed_batches_equal_one_task_batches_in_bfloat16_on_t5():
    model = half_model("t5-tiny", "hyperpelt", tasks=("rte", "mrpc"), std=0.2).eval()
    rte, mrpc = encode(model, "rte", examples("rte", 4)), encode(model, "mrpc", examples("mrpc", 4))
    batch = model.backbone.collate([f for pair in zip(rte, mrpc) for f in pair], model.tokenizer)
    task_ids = torch.tensor([0, 1] * 4)

    def generated(task_ids, batch) -> list[list[int]]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        return model.generate(task_ids, max_new_tokens=4, do_sample=False, **inputs).tolist()

    with torch.no_grad():
        mixed, tokens = model(task_ids, **batch).logits.float(), generated(task_ids, batch)
        swapped = model(1 - task_ids, **batch).logits.float()
        tolerance = bf16_tolerance(mixed)
        for task in (0, 1):
            index = (task_ids == task).nonzero(as_tuple=True)[0]
            sub = {k: v[index] for k, v in batch.items()}
            assert (mixed[index] - model(task_ids[index], **sub).logits.float()).abs().max() <= tolerance
            alone = generated(task_ids[index], sub)  # as long as the mixed batch's or shorter (all ended)
            assert [tokens[i][:len(alone[0])] for i in index.tolist()] == alone
    assert (swapped - mixed).abs().max() > 3 * tolerance  # the tasks really are conditioned differently


def test_mixed_batches_equal_one_task_batches_in_bfloat16_on_minilm():
    model = half_model("minilm-l6", "hyperpelt", tasks=("sst2", "stsb"), std=0.2).eval()
    sst2, stsb = encode(model, "sst2", examples("sst2", 4)), encode(model, "stsb", examples("stsb", 4))
    batch = model.backbone.collate([f for pair in zip(sst2, stsb) for f in pair], model.tokenizer)
    task_ids = torch.tensor([0, 1] * 4)
    with torch.no_grad():
        mixed = model.encode_batch({"task_ids": task_ids, **batch})[0].pooled
        swapped = model.encode_batch({"task_ids": 1 - task_ids, **batch})[0].pooled
        tolerance = bf16_tolerance(mixed)
        assert mixed.dtype == torch.float32  # what the float32 heads read
        for task in (0, 1):
            index = (task_ids == task).nonzero(as_tuple=True)[0]
            alone = model.encode_batch({k: v[index] for k, v in {"task_ids": task_ids, **batch}.items()})
            assert (mixed[index] - alone[0].pooled).abs().max() <= tolerance
    assert (swapped - mixed).abs().max() > 3 * tolerance


def test_a_static_export_of_a_bfloat16_model_stores_its_weights_as_the_host_reads_them(monkeypatch):
    model = half_model("t5-tiny", "hyperpelt", tasks=("rte", "mrpc")).eval()
    batch = task_batch(model, "mrpc", 2)
    with torch.no_grad():
        tabled = model(torch.tensor([1, 1]), **batch).logits
    static = model.export_static("mrpc")
    assert static.method.prefix.keys.dtype == BF16
    assert {w.down.dtype for w in static.method.adapters.values()} == {BF16}
    cast_weights = ConditioningState.cast_weights
    copies = []
    monkeypatch.setattr(ConditioningState, "cast_weights", lambda self, dtype: (
        copies.append(self.prefix.keys), cast_weights(self, dtype)))
    with torch.no_grad():
        exported = static(torch.tensor([0, 0]), **batch).logits
    assert copies and copies[0] is static.method.prefix.keys  # read as stored, not a per-batch copy
    # (the table path gathers each example's rows, the static path reads one task's: other kernels)
    assert (exported.float() - tabled.float()).abs().max() <= bf16_tolerance(tabled.float())


def test_t5_layer_norms_over_a_half_host_keep_no_float32_copies_and_give_the_same_gradients():
    """Over a bf16 host T5's layer norms run again in the backward pass instead of keeping their float32
    intermediates: the step keeps no float32 tensor of the hidden states' size, and the loss and every
    gradient equal those of transformers' own layer norm (the reference) bit for bit."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    def step(model, batch):
        model.zero_grad(set_to_none=True)
        hidden = []

        def keep(t):
            if t.dtype == torch.float32 and t.dim() == 3 and t.shape[-1] == model.host.config.d_model:
                hidden.append(t.shape)
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            loss = model(torch.zeros(4, dtype=torch.long), **batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads, hidden

    model = half_model("t5-tiny", "hyperpelt", std=0.05)
    model.train()
    batch = task_batch(model, "rte", 4)
    norms = [m for m in model.host.modules() if isinstance(m, T5LayerNorm)]
    assert norms and all(type(m) is not T5LayerNorm for m in norms)
    loss, grads, kept = step(model, batch)
    assert not kept
    for norm in norms:
        norm.__class__ = T5LayerNorm
    ref_loss, ref_grads, ref_kept = step(model, batch)
    assert ref_kept  # the reference keeps float32 copies: what the test would catch
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys() and any("layer_norm" in n for n in grads)
    assert all(torch.equal(grads[n], ref_grads[n]) for n in grads)


def test_a_float32_t5_host_keeps_transformers_layer_norms():
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    model = build_model(t5_config(), {"name": "hyperpelt", **SMALL["hyperpelt"]})
    assert {type(m) for m in model.host.modules() if isinstance(m, T5LayerNorm)} == {T5LayerNorm}
