"""Packed inference on encoders: a batch's texts in one row of real tokens give what the padded batch does."""

import pytest
import torch

from conftest import build_model, encode, examples, minilm_config, perturb, t5_config
from helpers.methods import SMALL
from helpers.packing import TASKS, mixed_batch
from hyperpelt.backbones.t5 import T5Backbone
from hyperpelt.heads import HeadsConfig
from hyperpelt.inject.packing import Packing, current_packing, packed
from hyperpelt.model.encoding import packed_encoder_states

PACKABLE = ["full", "adapters", "adapters-shared", "hyperformer", "hyperformer++", "prefix", "mam",
            "hyperpelt"]


def record_input_ids(seen: list):
    return lambda module, args, kwargs, out: seen.append(kwargs["input_ids"])


def encoded_both_ways(model, task_ids, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = {}
    for pack in (False, True):
        model.pack_inference = pack
        with torch.no_grad(), model.conditioned(task_ids):
            out[pack] = model.text_reader()(inputs, task_ids)
    model.pack_inference = True
    return out[False], out[True]


def assert_same_encoding(padded, packed_):
    assert packed_.tokens.shape == padded.tokens.shape
    assert torch.equal(packed_.token_mask, padded.token_mask)
    assert torch.allclose(packed_.pooled, padded.pooled, atol=1e-5)
    mask = padded.token_mask
    assert torch.allclose(packed_.tokens[mask], padded.tokens[mask], atol=1e-5)


@pytest.mark.parametrize("method", PACKABLE)
def test_packed_texts_equal_the_padded_batch_for_every_text_method(method):
    model = build_model(minilm_config(), {"name": method, **SMALL[method]}, TASKS,
                        heads=HeadsConfig(pair_encoding="separate", pair_head="alignment"))
    perturb(model, std=0.1)
    assert model.method.packs_sequences
    task_ids, batch = mixed_batch(model)
    assert not batch["attention_mask"].all() and not batch["attention_mask_b"].all()
    (a, b), (packed_a, packed_b) = encoded_both_ways(model, task_ids, batch)
    assert_same_encoding(a, packed_a)
    assert_same_encoding(b, packed_b)
    with torch.no_grad():
        packed_predictions = model.predict_batch(task_ids, **batch)
        model.pack_inference = False
        padded_predictions = model.predict_batch(task_ids, **batch)
    assert packed_predictions == pytest.approx(padded_predictions, abs=1e-4)


def test_a_batch_attended_as_one_group_reads_each_sequence_with_its_own_task():
    """Tasks interleaved and lengths close: one attention group, its sequences reordered by task."""
    model = build_model(minilm_config(), tasks=TASKS,
                        heads=HeadsConfig(pair_encoding="separate", pair_head="alignment"))
    perturb(model, std=0.1)
    features = [f for pair in zip(encode(model, "sst2", examples("sst2", 4)),
                                  encode(model, "stsb", examples("stsb", 4))) for f in pair]
    task_ids, batch = torch.tensor([0, 1] * 4), model.backbone.collate(features, model.tokenizer)
    lengths = torch.cat([batch["attention_mask"].sum(1), batch["attention_mask_b"].sum(1)])
    with torch.no_grad(), model.conditioned(task_ids):
        assert len(Packing.of(lengths[:, None] > torch.arange(20), model.state.rows.repeat(2),
                              task_ids.repeat(2)).groups) == 1
    (a, b), (packed_a, packed_b) = encoded_both_ways(model, task_ids, batch)
    assert_same_encoding(a, packed_a)
    assert_same_encoding(b, packed_b)


def test_pairs_read_as_one_text_pack_too():
    model = build_model(minilm_config(), tasks=TASKS)
    perturb(model, std=0.1)
    task_ids, batch = mixed_batch(model)
    assert "input_ids_b" not in batch
    (a, b), (packed_a, packed_b) = encoded_both_ways(model, task_ids, batch)
    assert b is None and packed_b is None
    assert_same_encoding(a, packed_a)


def test_a_packed_batch_runs_the_host_once_over_its_real_tokens_only():
    model = build_model(minilm_config(), tasks=TASKS, heads=HeadsConfig(pair_encoding="separate"))
    task_ids, batch = mixed_batch(model)
    seen, groups = [], []
    hook = model.host.register_forward_hook(record_input_ids(seen), with_kwargs=True)
    attention = model.host.encoder.layer[0].attention.self
    groups_hook = attention.register_forward_hook(lambda *_: groups.append(len(current_packing().groups))
                                                  if current_packing() else None)
    try:
        with torch.no_grad():
            model(task_ids, **batch)
            model.pack_inference = False
            model(task_ids, **batch)
    finally:
        hook.remove()
        groups_hook.remove()
        model.pack_inference = True
    real = int(batch["attention_mask"].sum() + batch["attention_mask_b"].sum())
    assert len(groups) == 1 and groups[0] == 2  # short texts (sst2's empty second ones) attend apart
    assert [tuple(ids.shape) for ids in seen[:1]] == [(1, real)]
    assert len(seen) == 3  # packed: one forward; padded: one per text of the pairs
    assert seen[1].numel() + seen[2].numel() > real


def test_training_and_text_changing_methods_do_not_pack():
    model = build_model(minilm_config(), tasks=TASKS, heads=HeadsConfig(pair_encoding="separate"))
    task_ids, batch = mixed_batch(model)
    seen = []
    hook = model.host.register_forward_hook(record_input_ids(seen), with_kwargs=True)
    try:
        model(task_ids, **batch)  # gradients on: padded, one forward per text
    finally:
        hook.remove()
    assert len(seen) == 2 and seen[0].shape[0] == len(task_ids)
    prompt = build_model(minilm_config(), {"name": "prompt", **SMALL["prompt"]}, TASKS)
    assert not prompt.method.packs_sequences


def test_packing_layout_round_trips_and_finds_runs_of_rows():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    packing = Packing.of(mask, torch.tensor([2, 2, 0]), torch.tensor([5, 5, 3]))
    padded = torch.arange(9.0).reshape(3, 3, 1)
    row = packing.pack(padded)
    assert row.flatten().tolist() == [0.0, 1.0, 3.0, 6.0, 7.0, 8.0]
    assert packing.unpack(row).flatten().tolist() == [0.0, 1.0, 0.0, 3.0, 0.0, 0.0, 6.0, 7.0, 8.0]
    assert [(start, end, int(r)) for start, end, r in packing.segments] == [(0, 3, 2), (3, 6, 0)]
    assert packing.token_task_ids.tolist() == [5, 5, 5, 3, 3, 3]
    assert len(packing.groups) == 1 or packing.groups[0][2].mask.shape[1] < 3

    # one group: attention reads its sequences in the row's order, rows with them
    packing = Packing.of(torch.ones(3, 2, dtype=torch.bool), torch.tensor([1, 0, 1]), torch.tensor([1, 0, 1]))
    (_, _, group), = packing.groups
    assert packing.order.tolist() == [1, 0, 2] and group.order is None
    assert group.sequence_rows.tolist() == [0, 1, 1]

    # lengths 3, 1, 3, 1: attention takes the two short ones apart; rows order each group
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    packing = Packing.of(mask, torch.tensor([1, 0, 0, 1]), torch.tensor([1, 0, 0, 1]))
    padded = torch.arange(12.0).reshape(4, 3, 1)
    row = packing.pack(padded)
    assert row.flatten().tolist() == [3.0, 9.0, 6.0, 7.0, 8.0, 0.0, 1.0, 2.0]
    assert torch.equal(packing.unpack(row), padded * mask[..., None])
    assert [(start, end, int(r)) for start, end, r in packing.segments] == [(0, 1, 0), (1, 2, 1), (2, 5, 0),
                                                                          (5, 8, 1)]
    assert [(start, end, tuple(group.mask.shape)) for start, end, group in packing.groups] == [
        (0, 2, (2, 1)), (2, 8, (2, 3))]
    assert packing.groups[1][2].sequence_rows.tolist() == [0, 1]
    assert current_packing() is None
    with packed(packing):
        assert current_packing() is packing
    assert current_packing() is None


@pytest.mark.parametrize("method", ["hyperpelt", "prefix", "hyperformer", "adapters"])
def test_a_text_to_text_encoder_reads_a_packed_batch_as_the_padded_one(method):
    model = build_model(t5_config(), {"name": method, **SMALL[method]}, TASKS)
    perturb(model, std=0.1)
    task_ids, batch = mixed_batch(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    mask = inputs["attention_mask"].bool()
    assert not mask.all()
    with torch.no_grad(), model.conditioned(task_ids):
        padded = model.host.get_encoder()(**inputs).last_hidden_state
        states, cache = packed_encoder_states(model.host, model.backbone, model.state, inputs, True)
    assert states.shape == padded.shape
    assert torch.allclose(states[mask], padded[mask], atol=1e-5)
    for layer, block in enumerate(model.host.decoder.block):  # the cache: the decoder's own projections
        attention = block.layer[1].EncDecAttention
        for projection, cached in ((attention.k, cache.cross_attention_cache.layers[layer].keys),
                                   (attention.v, cache.cross_attention_cache.layers[layer].values)):
            own = projection(padded).view(*mask.shape, -1, attention.key_value_proj_dim).transpose(1, 2)
            assert torch.allclose(cached.transpose(1, 2)[mask], own.transpose(1, 2)[mask], atol=1e-5)
    projected = []
    hook = model.host.decoder.block[0].layer[1].EncDecAttention.k.register_forward_hook(
        lambda module, args, out: projected.append(args[0].shape[:2]))
    for beams in (1, 2):  # beams widen the batch after the encoder: the decoder projects them itself
        scores = {}
        for pack in (False, True):
            model.pack_inference = pack
            projected.clear()
            out = model.generate(task_ids, max_new_tokens=4, output_scores=True, return_dict_in_generate=True,
                                 num_beams=beams, **inputs)
            scores[pack] = torch.stack(out.scores)
            packed_tokens = (1, int(mask.sum())) if beams == 1 else (len(mask) * beams, mask.shape[1])
            assert projected == [packed_tokens if pack else (len(mask) * beams, mask.shape[1])]
        assert torch.allclose(scores[True], scores[False], atol=1e-4)
    hook.remove()
    model.pack_inference = True


def test_decoding_joins_each_prefix_to_the_cached_cross_attention_keys_once_per_batch(monkeypatch):
    from hyperpelt.inject import PrefixSlot

    model = build_model(t5_config(), tasks=TASKS)
    perturb(model, std=0.1)
    task_ids, batch = mixed_batch(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    original, hits = PrefixSlot.joined, []

    def scores(remember: bool) -> torch.Tensor:
        def joined(slot, prefix_keys, prefix_values, key, value, wanted):
            kept = slot.state.joined.get(slot.index)
            out = original(slot, prefix_keys, prefix_values, key, value, wanted and remember)
            hits.append(kept is not None and out[0] is kept[2])
            return out

        monkeypatch.setattr(PrefixSlot, "joined", joined)
        hits.clear()
        out = model.generate(task_ids, max_new_tokens=4, output_scores=True, return_dict_in_generate=True,
                             **inputs)
        return torch.stack(out.scores)

    joined_once = scores(remember=True)
    assert sum(hits) >= len(model.host.decoder.block)  # each cross-attention layer, every step but the first
    joined_every_step = scores(remember=False)
    assert sum(hits) == 0
    assert torch.equal(joined_once, joined_every_step)


def test_a_text_to_text_backbone_without_a_cross_attention_cache_still_generates_packed(monkeypatch):
    model = build_model(t5_config(), tasks=TASKS)
    perturb(model, std=0.1)
    task_ids, batch = mixed_batch(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    packed_tokens = model.generate(task_ids, max_new_tokens=4, **inputs)

    class Backbone(T5Backbone):  # one that lets the decoder project the padded states itself
        def cross_attention_cache(self, host, hidden, packing):
            return None

    monkeypatch.setattr(model, "backbone", Backbone())
    with torch.no_grad(), model.conditioned(task_ids):
        assert packed_encoder_states(model.host, model.backbone, model.state, inputs, True)[1] is None
    assert torch.equal(model.generate(task_ids, max_new_tokens=4, **inputs), packed_tokens)
