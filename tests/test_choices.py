"""The choices the papers leave open, as named options: defaults keep the previous behaviour, and each
paper reading builds, counts and trains as it should (issue 16, "The papers' protocol, exactly")."""

import random

import pytest
import torch

from conftest import SMALL_METHOD, build_model, t5_config, task_batch
from hyperpelt.accounting import count_parameters
from hyperpelt.config import DataConfig
from hyperpelt.data.batches import load_task_data
from hyperpelt.errors import UserError
from hyperpelt.methods import method_config
from hyperpelt.tasks import get_task, load_task_splits
from hyperpelt.tasks.registry import round_stsb
from hyperpelt.tasks.splits import _carve_train


def one_step(model, task="rte"):
    """One optimizer step on a batch; returns the loss before it."""
    batch = task_batch(model, task, 4)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = model(torch.zeros(4, dtype=torch.long), **batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    return loss


# ---------------------------------------------------------------- 6a: HyperPELT's layer and block embeddings

def test_vectors_count_626688_fewer_on_t5_base():
    rows = count_parameters("t5-base", {"name": "hyperpelt"}, 8)
    vectors = count_parameters("t5-base", {"name": "hyperpelt", "layer_block_embeddings": "vectors"}, 8)
    # (12 layers + 5 block types) × (N - 1 = 48 rows) × d_τ = 768
    assert rows["trainable_params"] - vectors["trainable_params"] == 626_688 == 17 * 48 * 768
    assert round(rows["trained_per_task_pct"], 3) == 0.257
    assert round(vectors["trained_per_task_pct"], 3) == 0.222


def test_vectors_equal_rows_that_repeat_one_vector_and_train():
    rows = build_model(t5_config(), SMALL_METHOD, seed=0)
    vectors = build_model(t5_config(), {**SMALL_METHOD, "layer_block_embeddings": "vectors"}, seed=0)
    assert vectors.method.layer_embedding.shape == (2, 16) and vectors.method.block_embedding.shape == (5, 16)
    state = {k: v for k, v in vectors.method.state_dict().items()}
    n = SMALL_METHOD["prefix_length"]
    for name in ("layer_embedding", "block_embedding"):
        state[name] = state[name][:, None].expand(-1, n, -1)
    rows.method.load_state_dict(state)
    tasks = torch.tensor([0])
    layers, blocks = vectors.method.attention_layers, vectors.method.attention_blocks
    with torch.no_grad():
        expected = rows.method.hyper_embedding(rows.method.task_embedding[tasks], layers, blocks)
        got = vectors.method.hyper_embedding(vectors.method.task_embedding[tasks], layers, blocks)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    before = vectors.method.layer_embedding.detach().clone()
    one_step(vectors)
    assert not torch.equal(before, vectors.method.layer_embedding)


# ---------------------------------------------------------------- 6b-6d: Hyperformer's open choices

HYPERFORMER = {"task_dim": 8, "projector_hidden": 16, "reduction_factor": 8}


@pytest.mark.parametrize("method", ["hyperformer", "hyperformer++"])
def test_task_feature_dim_feeds_the_projector(method):
    model = build_model(t5_config(), {"name": method, **HYPERFORMER, "task_feature_dim": 24}, ("rte", "stsb"))
    assert model.method.task_embedding.shape == (2, 24)
    width = 24 + (16 if method == "hyperformer++" else 0)  # ++: [z_τ, l_i, p_j]
    assert {p[0].in_features for p in model.method.projectors.values()} == {width}
    assert {p[2].out_features for p in model.method.projectors.values()} == {8}
    one_step(model)
    default = build_model(t5_config(), {"name": method, **HYPERFORMER})
    assert default.method.task_embedding.shape == (1, 8)


def test_task_feature_dim_without_projector_is_refused():
    with pytest.raises(UserError, match="task_feature_dim.*task_dim"):
        method_config({"name": "hyperformer", "task_projector": False, "task_feature_dim": 512})
    method_config({"name": "hyperformer", "task_projector": False, "task_feature_dim": 64})


@pytest.mark.parametrize("method", ["hyperformer", "hyperformer++"])
def test_one_projector_shared_by_the_stacks(method):
    per_stack = count_parameters("t5-small", {"name": method}, 8)["trainable_params"]
    options = {"name": method, "projector_per_stack": False}
    shared = count_parameters("t5-small", options, 8)["trainable_params"]
    width = 3 * 64 if method == "hyperformer++" else 64
    assert per_stack - shared == width * 128 + 128 + 128 * 64 + 64  # one two-layer projector less
    model = build_model(t5_config(), {"name": method, **HYPERFORMER, "projector_per_stack": False})
    assert list(model.method.projectors) == ["stacks"]
    one_step(model)


def test_layer_norm_init():
    model = build_model(t5_config(), {"name": "hyperformer++", **HYPERFORMER, "layer_norm_init": 0.5})
    generator = model.method.generators["encoder"]
    assert torch.all(generator.bias[:, slice(*generator.offsets["norm_weight"])] == 0.5)
    plain = build_model(t5_config(), {"name": "hyperformer", **HYPERFORMER, "conditional_layer_norm": False,
                                      "layer_norm_init": 0.5})
    assert torch.all(plain.method.encoder_norm_weight == 0.5)
    adapters = build_model(t5_config(), {"name": "adapters", "reduction_factor": 8, "layer_norm_init": 0.5})
    assert torch.all(adapters.method.norm_weight == 0.5)
    default = build_model(t5_config(), {"name": "adapters", "reduction_factor": 8})
    assert torch.all(default.method.norm_weight == 0.01)


# ---------------------------------------------------------------- 6e: prefix position bias

def reference_bias(attention, prefix, queries, keys):
    """T5's own bias for a past of ``prefix + keys - queries`` tokens, restricted to the prefix columns."""
    past = prefix + keys - queries
    return attention.compute_bias(queries, prefix + keys, past_seen_tokens=past)[..., :prefix]


@pytest.mark.parametrize("method", ["prefix", "mam", "hyperpelt"])
def test_distance_bias_is_t5s_bias_of_past_tokens(method):
    options = {"prefix": {"prefix_length": 3, "hidden": 16}, "mam": {"prefix_length": 3, "hidden": 16,
               "adapter_dim": 8}, "hyperpelt": {k: v for k, v in SMALL_METHOD.items() if k != "name"}}[method]
    model = build_model(t5_config(), {"name": method, **options, "prefix_position_bias": "distance"})
    host = model.host
    for stack in ("encoder", "decoder"):
        first = host.get_submodule(f"{stack}.block.0.layer.0.SelfAttention")
        for layer in (0, 1):
            slot = host.get_submodule(f"{stack}.block.{layer}.layer.0.SelfAttention").hyperpelt_prefix
            for queries, keys in ((5, 5), (1, 4), (2, 7)):  # a whole sequence, and cached decoding steps
                got = slot.bias_columns(40, queries, keys, "cpu")
                assert torch.equal(got, reference_bias(first, 40, queries, keys))
    assert host.decoder.block[1].layer[1].EncDecAttention.hyperpelt_prefix.position_bias is None
    zero = build_model(t5_config(), {"name": method, **options})
    assert zero.host.encoder.block[0].layer[0].SelfAttention.hyperpelt_prefix.position_bias is None
    batch = task_batch(model, "rte", 2)
    with torch.no_grad():
        far = model(torch.zeros(2, dtype=torch.long), **batch).logits
        zero.load_state_dict(model.state_dict())
        near = zero(torch.zeros(2, dtype=torch.long), **batch).logits
    assert not torch.equal(far, near)  # the columns reach the attention


# ---------------------------------------------------------------- 6f, 6g: data protocol

def test_stsb_gold_rounded_on_evaluation_splits_only():
    model = build_model(t5_config(), SMALL_METHOD, ("stsb",))
    raw = load_task_data(model.tasks, model.encode, DataConfig(tasks=["stsb"], max_eval_examples=20))[0]
    rounded = load_task_data(model.tasks, model.encode,
                             DataConfig(tasks=["stsb"], max_eval_examples=20, stsb_gold="rounded"))[0]
    for split in ("validation", "test"):
        labels = [f["label"] for f in raw.features[split]]
        assert [f["label"] for f in rounded.features[split]] == [round_stsb(x) for x in labels]
        assert labels == [ex["label"] for ex in raw.examples[split]]
    assert rounded.features["train"] == raw.features["train"]
    assert any(round_stsb(f["label"]) != f["label"] for f in raw.features["validation"])


def test_carve_from_unique_or_any():
    train = [{"sentence": s, "label": 0, "idx": i} for i, s in enumerate("aaabbbcdef")]
    task = get_task("sst2")
    unique = _carve_train(task, {"train": train, "dev": []}, random.Random(0))
    assert sorted(ex["sentence"] for ex in unique.validation) == ["c", "d", "e", "f"]
    anywhere = _carve_train(task, {"train": train, "dev": []}, random.Random(0), carve_from="any")
    assert len(anywhere.validation) == 5  # half of train, drawn from all of it
    assert load_task_splits("sst2") == load_task_splits("sst2", carve_from="unique")
    other = load_task_splits("sst2", carve_from="any")
    assert len(other.validation) == 100 and len(other.train) == 100
    with pytest.raises(UserError, match="carve_from"):
        load_task_splits("sst2", carve_from="some")


def test_distance_bias_in_cached_generation():
    """Decoding with the cache places each new query after the past: the same tokens as without it."""
    options = {**SMALL_METHOD, "prefix_position_bias": "distance"}
    model = build_model(t5_config(), options)
    batch = task_batch(model, "rte", 2)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
                  do_sample=False)
    task_ids = torch.zeros(2, dtype=torch.long)
    cached = model.generate(task_ids, **inputs)
    assert torch.equal(cached, model.generate(task_ids, use_cache=False, **inputs))
