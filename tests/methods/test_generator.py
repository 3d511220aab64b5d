"""The shared hypernetwork (methods/generator.py): what it computes, and that HyperPELT's task path and
VL-HyperPELT's visual path both run through it under their old checkpoint keys."""

import torch
import torch.nn.functional as F

from conftest import build_model, t5_config
from hyperpelt.methods import generator

TASKS = ("rte", "stsb")
GRID, DIM = 4, 6
VL = {"name": "vl-hyperpelt", "prefix_length": GRID, "hyper_dim": 8, "task_dim": 16, "projector_hidden": 16,
      "adapter_dim": 4, "feature_dim": DIM}


def test_the_column_blocks_are_the_projector_on_the_concatenation():
    torch.manual_seed(0)
    projector_in, _ = generator.projector(3 * 5, 7, 3)
    first, layers, blocks = torch.randn(2, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    got = generator.site_hidden(projector_in, first, layers, blocks)
    joined = torch.cat([first[:, None].expand(-1, 3, -1, -1), layers[None].expand(2, -1, -1, -1),
                        blocks[None].expand(2, -1, -1, -1)], dim=-1)
    torch.testing.assert_close(got, F.relu(projector_in(joined)))
    vectors = generator.site_hidden(projector_in, first, layers[:, 0], blocks[:, 0])  # broadcast over rows
    joined = torch.cat([first[:, None].expand(-1, 3, -1, -1), layers[None, :, :1].expand(2, -1, 4, -1),
                        blocks[None, :, :1].expand(2, -1, 4, -1)], dim=-1)
    torch.testing.assert_close(vectors, F.relu(projector_in(joined)))


def test_generated_adapters_start_as_the_identity_and_scale_by_lambda():
    torch.manual_seed(0)
    down, up = generator.adapter_generators(8, 6, 3)
    assert torch.count_nonzero(up.weight) == torch.count_nonzero(up.bias) == 0
    assert torch.count_nonzero(down.bias) == 0 and down.weight.std() > 0
    torch.nn.init.normal_(up.weight)
    hyper, scale = torch.randn(2, 5, 8), torch.rand(5)
    weights = generator.adapter_weights(down, up, scale, hyper, 6, 3, "relu")
    assert weights.down.shape == (2, 5, 3, 6) and weights.up.shape == (2, 5, 6, 3)
    torch.testing.assert_close(weights.up, up(hyper).view(2, 5, 6, 3) * scale[:, None, None])


def counted(calls: list, name: str):
    original = getattr(generator, name)

    def call(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)
    return call


def test_the_task_and_visual_paths_run_the_same_generator(monkeypatch):
    model = build_model(t5_config(), VL, TASKS, seed=0)
    calls = []
    for name in ("site_hidden", "prefix_weights", "adapter_weights"):
        monkeypatch.setattr(generator, name, counted(calls, name))
    model.train()
    model(torch.tensor([0, 1]), image_features=torch.randn(2, GRID, DIM),
          input_ids=torch.ones(2, 3, dtype=torch.long), labels=torch.ones(2, 2, dtype=torch.long))
    # task path: prefix and adapter each from site_hidden; visual path: the same again, per example
    assert sorted(calls) == sorted(["site_hidden", "prefix_weights", "site_hidden", "adapter_weights"] * 2)


def test_checkpoint_keys_keep_their_names():
    names = set(build_model(t5_config(), VL, TASKS, seed=0).method.state_dict())
    modules = ["projector_in", "projector_out", "prefix_key", "prefix_value", "adapter_down", "adapter_up"]
    modules += [f"visual_{m}" for m in modules] + ["visual_mapping", "visual_norm"]
    expected = {f"{m}.{p}" for m in modules for p in ("weight", "bias")}
    expected |= {"task_embedding", "layer_embedding", "block_embedding", "adapter_scale",
                 "visual_adapter_scale"}
    assert names == expected
