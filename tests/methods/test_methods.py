"""Every method of both papers: trains for a few steps on a tiny T5 and on MiniLM, trains exactly the
parameters it should, and comes back exactly from its checkpoint."""

import pytest
import torch

from conftest import build_model, encode, examples, minilm_config, t5_config, train_steps
from helpers.methods import GRID, SMALL
from hyperpelt.checkpoint import load_checkpoint, save_checkpoint
from hyperpelt.inject import TaskLayerNorm
from hyperpelt.methods import method_names

TRAINS_HOST_LAYER_NORMS = {"adapters-shared", "hyperformer", "hyperformer++", "hyperpelt", "vl-hyperpelt"}
BACKBONES = {"t5": t5_config, "minilm": minilm_config}
TASKS = ("rte", "stsb")


def test_every_method_is_covered():
    shipped = {name for name in method_names() if not name.startswith("toy-")}  # toys: test_extending.py
    assert shipped == set(SMALL)


def mixed_batch(model):
    features, task_ids = [], []
    for task_id, task in enumerate(TASKS):
        features += encode(model, task, examples(task, 3))
        task_ids += [task_id] * 3
    batch = model.backbone.collate(features, model.tokenizer)
    if model.method.reads_images:
        generator = torch.Generator().manual_seed(0)
        batch["image_features"] = torch.randn(len(task_ids), GRID, 8, generator=generator)
    return torch.tensor(task_ids), batch


def expected_trainable(model, method: str) -> set[str]:
    """What should train, derived from module types rather than from the method's own bookkeeping."""
    if method in ("full", "clip-t5"):
        return {n for n, _ in model.named_parameters()}
    names = {f"method.{n}" for n, _ in model.method.named_parameters()}
    names |= {f"heads.{n}" for n, _ in model.heads.named_parameters()} if model.heads is not None else set()
    for path, module in model.host.named_modules():
        if isinstance(module, TaskLayerNorm):
            names |= {f"host.{path}.{n}" for n, _ in module.named_parameters(recurse=False)}
    if method in TRAINS_HOST_LAYER_NORMS:
        for name, _ in model.host.named_parameters():
            short = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if short in ("layer_norm", "final_layer_norm", "LayerNorm"):
                names.add(f"host.{name}")
    return names


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(SMALL))
def test_method_trains_saves_and_loads(method, backbone, tmp_path):
    options = {"name": method, **SMALL[method]}
    model = build_model(BACKBONES[backbone](), options, TASKS, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(model, method)
    if method == "adapters":  # per-task layer norms replace the host's own
        assert any(isinstance(m, TaskLayerNorm) for m in model.host.modules())
        norms = [m for m in model.host.modules() if isinstance(m, TaskLayerNorm)]
        assert not any(p.requires_grad for m in norms for p in m.base_layer.parameters())

    task_ids, batch = mixed_batch(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        start = model(task_ids, **batch)["loss"].item()
    train_steps(model, task_ids, batch, 4, lr=1e-4 if method in ("full", "clip-t5") else 3e-3)
    with torch.no_grad():
        end = model(task_ids, **batch)["loss"].item()
    assert end < start  # measured without dropout
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved, "no trainable parameter moved"

    with torch.no_grad():
        reference = model(task_ids, **batch)
    save_checkpoint(model, tmp_path / "ck", seed=0)
    restored = load_checkpoint(tmp_path / "ck").eval()
    with torch.no_grad():
        again = restored(task_ids, **batch)
    if backbone == "t5":
        assert torch.equal(reference.logits, again.logits)
        generate = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        max_new_tokens=3, do_sample=False, image_features=batch.get("image_features"))
        assert torch.equal(model.generate(task_ids, **generate), restored.generate(task_ids, **generate))
    else:
        assert torch.equal(reference["predictions"], again["predictions"])
        assert torch.equal(reference["loss"], again["loss"])


@pytest.mark.parametrize(
    "ablation",
    [{"adapter_blocks": False}, {"conditional_layer_norm": False}, {"task_projector": False},
     {"train_layer_norms": False}],
)
@pytest.mark.parametrize("method", ["hyperformer", "hyperformer++"])
def test_hyperformer_ablations(method, ablation):
    options = {"name": method, **SMALL[method], **ablation}
    model = build_model(t5_config(), options, TASKS)
    full = build_model(t5_config(), {"name": method, **SMALL[method]}, TASKS)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(model) < count(full)
    host_norms = [n for n, p in model.host.named_parameters() if p.requires_grad and "layer_norm" in n]
    assert bool(host_norms) == ablation.get("train_layer_norms", True)
    task_ids, batch = mixed_batch(model)
    model.train()
    loss = model(task_ids, **batch).loss
    loss.backward()
    if ablation.get("adapter_blocks", True):
        grad = model.method.task_embedding.grad
        assert grad is not None and grad.abs().sum() > 0
    else:  # nothing is generated: only the host's layer norms learn
        assert not any(type(m).__name__ == "SequentialAdapter" for m in model.host.modules())
