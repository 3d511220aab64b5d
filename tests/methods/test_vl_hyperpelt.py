"""VL-HyperPELT: per-example visual prefixes and adapters beside the task ones, and the V&L baselines."""

import pytest
import torch

from conftest import build_model, encode, examples, minilm_config, t5_config, train_steps
from hyperpelt.errors import UserError

TASKS = ("rte", "stsb")
GRID, DIM = 4, 6
TEXT = {"name": "hyperpelt", "prefix_length": GRID, "hyper_dim": 8, "task_dim": 16, "projector_hidden": 16,
        "adapter_dim": 4}
VL = {**TEXT, "name": "vl-hyperpelt", "feature_dim": DIM}
VISUAL_OFF = {**VL, "visual_prefix": False, "visual_adapter": False}
BACKBONES = {"t5": t5_config, "minilm": minilm_config}


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, GRID, DIM, generator=torch.Generator().manual_seed(seed))


def mixed_batch(model, per_task: int = 2):
    features, task_ids = [], []
    for task_id, task in enumerate(TASKS):
        features += encode(model, task, examples(task, per_task))
        task_ids += [task_id] * per_task
    return torch.tensor(task_ids), model.backbone.collate(features, model.tokenizer)


def outputs(model, task_ids, batch, image_features):
    """Each example's logits (T5) or head output (encoders) for the batch."""
    out = model(task_ids, image_features=image_features, **batch)
    return out.logits if out.logits is not None else out.predictions


def one_example(batch: dict, i: int) -> dict:
    """Example ``i`` alone, its padding cut to its own length (as it would be batched alone)."""
    single = {k: v[i:i + 1] for k, v in batch.items()}
    for mask, names in (("attention_mask", ("input_ids", "attention_mask", "token_type_ids")),
                        ("decoder_attention_mask", ("decoder_input_ids", "decoder_attention_mask"))):
        if mask in single:
            width = int(single[mask].sum())
            for name in names:
                if name in single:
                    single[name] = single[name][:, :width]
    if "labels" in single and single["labels"].dim() > 1:
        single["labels"] = single["labels"][:, : int((single["labels"][0] != -100).sum())]
    return single


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_with_the_visual_hypernetworks_off_it_is_hyperpelt_exactly(backbone):
    text = build_model(BACKBONES[backbone](), TEXT, TASKS, seed=3)
    vl = build_model(BACKBONES[backbone](), VISUAL_OFF, TASKS, seed=3)
    assert not vl.method.reads_images
    assert {n: p.shape for n, p in text.named_parameters()} == {n: p.shape for n, p in vl.named_parameters()}
    task_ids, batch = mixed_batch(text)
    with torch.no_grad():
        for grad in (False, True):  # the weight table (inference) and generation per batch (training)
            with torch.set_grad_enabled(grad):
                expected = text(task_ids, **batch)
                got = vl(task_ids, image_features=images(len(task_ids)), **batch)
            assert torch.equal(expected.loss, got.loss)
            key = "logits" if backbone == "t5" else "predictions"
            assert torch.equal(expected[key], got[key])


@pytest.mark.parametrize("options", [
    {},
    {"prefix_merge": "sum", "adapter_merge": "sum"},
    {"visual_site_embeddings": False, "visual_input": "tokens"},
    {"layer_block_embeddings": "vectors", "prefix_length": 2},
])
@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_each_example_gets_the_output_it_gets_alone(backbone, options):
    model = build_model(BACKBONES[backbone](), {**VL, **options}, TASKS, seed=1)
    task_ids, batch = mixed_batch(model)
    feats = images(len(task_ids), seed=2)
    with torch.no_grad():
        together = outputs(model, task_ids, batch, feats)
        for i in range(len(task_ids)):
            alone = outputs(model, task_ids[i:i + 1], one_example(batch, i), feats[i:i + 1])
            if backbone == "t5":
                steps = alone.shape[1]
                torch.testing.assert_close(together[i, :steps], alone[0], atol=2e-5, rtol=1e-4)
            else:
                torch.testing.assert_close(together[i], alone[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_the_image_changes_the_output_and_trains_the_visual_path(backbone):
    model = build_model(BACKBONES[backbone](), VL, TASKS, seed=0)
    task_ids, batch = mixed_batch(model)
    with torch.no_grad():
        a = outputs(model, task_ids, batch, images(len(task_ids), seed=1))
        b = outputs(model, task_ids, batch, images(len(task_ids), seed=2))
    assert not torch.allclose(a, b)  # the visual prefixes act from the start (the adapters start at zero)
    model.train()
    model(task_ids, image_features=images(len(task_ids)), **batch).loss.backward()
    for name in ("visual_mapping.weight", "visual_projector_in.weight", "visual_prefix_key.weight",
                 "visual_adapter_up.weight", "layer_embedding"):
        grad = model.method.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_a_tiny_t5_vl_hyperpelt_trains_and_generates_from_the_image():
    model = build_model(t5_config(), VL, ("easy_vqa",), seed=0)
    rows = examples("easy_vqa", 4)
    batch = model.backbone.collate(encode(model, "easy_vqa", rows), model.tokenizer)
    task_ids, feats = torch.zeros(4, dtype=torch.long), images(4, seed=5)
    losses = train_steps(model, task_ids, {**batch, "image_features": feats}, 25, lr=1e-2)
    assert losses[-1] < 0.5 * losses[0], losses
    generate = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
                    do_sample=False)
    out = model.generate(task_ids, image_features=feats, **generate)
    beams = model.generate(task_ids, image_features=feats, num_beams=2, **generate)  # rows follow beams
    assert out.shape[0] == beams.shape[0] == 4
    texts = model.tokenizer.batch_decode(out, skip_special_tokens=True)
    targets = model.tokenizer.batch_decode(batch["labels"].clamp(min=0), skip_special_tokens=True)
    assert sum(t == g for t, g in zip(texts, targets)) >= 3, (texts, targets)


def test_without_image_features_a_visual_method_says_what_is_missing():
    model = build_model(t5_config(), VL, TASKS)
    task_ids, batch = mixed_batch(model)
    with pytest.raises(UserError, match="data.feature_cache"):
        model(task_ids, **batch)
    assert model.state.prefix is None and model.state.example_prefix is None  # nothing left behind


def test_a_grid_unlike_the_prefix_rows_is_a_clear_error():
    model = build_model(t5_config(), VL, TASKS)
    task_ids, batch = mixed_batch(model)
    with pytest.raises(UserError, match="image grid has 7 cells"):
        model(task_ids, image_features=torch.randn(len(task_ids), 7, DIM), **batch)


@pytest.mark.parametrize("method", ["clip-t5", "vl-adapter", "vl-hyperpelt"])
def test_visual_tokens_lead_the_encoder_input(method):
    options = {"name": method, "feature_dim": DIM}
    if method == "vl-hyperpelt":
        options = {**VISUAL_OFF, "visual_input": "tokens"}
    model = build_model(t5_config(), options, TASKS, seed=0)
    task_ids, batch = mixed_batch(model)
    seen = {}
    hook = model.host.encoder.register_forward_hook(lambda m, args, kwargs, out: seen.update(kwargs),
                                                    with_kwargs=True)
    with torch.no_grad():
        model(task_ids, image_features=images(len(task_ids)), **batch)
    hook.remove()
    assert seen["inputs_embeds"].shape[1] == GRID + batch["input_ids"].shape[1]
    assert seen["attention_mask"][:, :GRID].all()
    tokens = model.method.visual_tokens(images(len(task_ids)))
    assert torch.equal(seen["inputs_embeds"][:, :GRID], tokens)
