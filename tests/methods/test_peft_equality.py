"""Where a method coincides with peft's, the logits are peft's (peft 0.21.2, a tiny random T5).

"Equal" means bit for bit (``torch.equal``): both sides run the same host weights through the same
transformers attention function (SDPA with T5's position bias folded into a float mask), and the prefix
or prompt enters the same way, so nothing is left to differ in the last bits.

Prefix tuning: peft 0.21.2 prefixes only the decoder's self-attention of T5. It hands T5 an
EncoderDecoderCache whose cross-attention cache it empties (so cross-attention gets no prefix), and T5's
encoder is never given a cache (so the encoder gets none either); a prefix of N past tokens shifts the
decoder's queries to positions N + i, which is our ``prefix_position_bias: distance``. (peft's prefix
embedding holds 2·L key/value rows per token for T5, of which it hands decoder layers l and l + L/2 the
same pair and drops the rest with the cross-attention cache; the test copies what peft actually uses.)
"""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from conftest import build_model, t5_config, task_batch
from hyperpelt.inject import PrefixWeights, attach_prefixes
from hyperpelt.methods import Method, register_method

peft = pytest.importorskip("peft")

N = 5


@dataclass
class GivenPrefixConfig:
    prefix_length: int = N
    block_types: tuple[str, ...] = ("decoder_self_attention",)
    """The attention blocks that get a prefix."""
    prefix_position_bias: str = "distance"


class GivenPrefix(Method):
    """Prefixes that are plain tensors (one task) on the attention sites of the chosen block types."""

    def __init__(self, config, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        kinds = {block_types.index(b) for b in config.block_types}
        self.attention_sites = [s for s in self.sites_of("attention") if s.block_type in kinds]
        shape = (1, len(self.attention_sites), config.prefix_length, dims.inner_dim)
        self.keys, self.values = nn.Parameter(torch.zeros(shape)), nn.Parameter(torch.zeros(shape))

    def inject(self, host, backbone, state):
        attach_prefixes(self.attention_sites, host, state, self.dims.num_heads, self.dims.head_dim,
                        backbone, self.config.prefix_position_bias)

    def condition(self, task_ids, state):
        self.batch_tasks(task_ids, state)
        state.prefix = PrefixWeights(self.keys, self.values)


register_method("toy-given-prefix", GivenPrefixConfig, GivenPrefix)


def peft_host(model):
    """A fresh host built as ``model``'s, with the same weights (random_t5 seeds nothing: copy them)."""
    from hyperpelt.backbones.t5 import few_row_decoding, random_t5

    host = few_row_decoding(random_t5("t5-tiny"))
    host.load_state_dict(model.host.state_dict())
    return host.eval()


def test_prompt_tuning_equals_peft():
    model = build_model(t5_config(), {"name": "prompt", "prompt_length": N})
    config = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N)
    theirs = peft.get_peft_model(peft_host(model), config).eval()
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight[:N] = model.method.prompts[0]
    batch = task_batch(model, "rte", 3)
    with torch.no_grad():
        ours = model(torch.zeros(3, dtype=torch.long), **batch).logits
        reference = theirs(**batch).logits
    assert torch.equal(ours, reference)


def test_prefix_tuning_equals_peft():
    model = build_model(t5_config(), {"name": "toy-given-prefix"})
    config = peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N)
    theirs = peft.get_peft_model(peft_host(model), config).eval()
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.normal_()
        cache = theirs.get_prompt(batch_size=1).self_attention_cache
        for layer, site in enumerate(model.method.attention_sites):
            assert site.layer == layer
            for name, tensor in (("keys", cache.layers[layer].keys), ("values", cache.layers[layer].values)):
                # [1, heads, N, head_dim] -> [N, heads * head_dim], the layout our slots read
                getattr(model.method, name)[0, layer] = tensor[0].transpose(0, 1).reshape(N, -1)
    batch = task_batch(model, "rte", 3)
    with torch.no_grad():
        ours = model(torch.zeros(3, dtype=torch.long), **batch).logits
        reference = theirs(**batch).logits
        zero = build_model(t5_config(), {"name": "toy-given-prefix", "prefix_position_bias": "zero"})
        zero.load_state_dict(model.state_dict())
        without_distance = zero(torch.zeros(3, dtype=torch.long), **batch).logits
    assert torch.equal(ours, reference)
    assert not torch.allclose(without_distance, reference)  # zero bias on prefixes is not peft's reading
