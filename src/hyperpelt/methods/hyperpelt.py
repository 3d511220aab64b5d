"""HyperPELT: one shared hypernetwork generates prefixes for every attention block and parallel
adapters beside every feed-forward block, for every task and layer (Zhang et al., §3.1–3.2).

Hyper-embedding: I = MLP([z_task, l_layer, b_block]), each embedding N×d_τ, the MLP two linear layers
with a ReLU, giving N×d_I. Linear hypernetworks map I to prefix keys and values (N×inner_dim) for
attention sites, and the mean of I over its N rows to adapter down/up weights for FFN sites; each
adapter has a trainable scale λ. With ``layer_block_embeddings: vectors`` the layer and block embeddings
are single d_τ vectors broadcast over the N rows (Table 3's count). The projector and the generators are
``generator.py``'s, which VL-HyperPELT's visual path shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import UserError
from ..inject import Activation, ConditioningState, attach_prefixes, wrap_parallel_adapters
from . import generator
from .base import Method


@dataclass
class HyperPELTConfig:
    prefix_length: int = 49
    """N: prefix vectors per attention block, and rows of every embedding (paper: 49)."""
    hyper_dim: int = 64
    """d_I: size of the hyper-embedding (paper: 64)."""
    task_dim: int | None = None
    """d_τ: size of task, layer and block embeddings; None means d_model (paper: 768 = d_model)."""
    projector_hidden: int = 128
    """Hidden size of the two-layer projector (d_I^mid; the paper leaves it open, Hyperformer used 128)."""
    adapter_dim: int = 32
    """d_mid: adapter bottleneck (open in the paper; 32 matches its 0.24% per task on T5-base, see docs)."""
    use_prefix: bool = True
    use_adapter: bool = True
    adapter_activation: Activation = "relu"
    train_layer_norms: bool = True
    """Train the backbone's layer norms (the paper does)."""
    init_std: float = 1.0
    """Standard deviation of the task, layer and block embeddings at initialisation."""
    layer_block_embeddings: Literal["rows", "vectors"] = "rows"
    """rows: layer and block embeddings are N×d_τ like the task embedding (§3.2); vectors: one d_τ vector
    each, shared by the N rows (as Table 3 counts them: 626,688 fewer parameters on T5-base)."""
    prefix_position_bias: Literal["zero", "distance"] = "zero"
    """Relative-position bias of prefix keys (T5): zero, or distance (prefixes as past tokens, as
    transformers and peft treat them); the paper does not say."""

    def __post_init__(self):
        if not (self.use_prefix or self.use_adapter):
            raise UserError("method: hyperpelt needs use_prefix or use_adapter (or both)")
        if min(self.prefix_length, self.hyper_dim, self.projector_hidden, self.adapter_dim) < 1:
            raise UserError("method: prefix_length, hyper_dim, projector_hidden and adapter_dim must be >= 1")


class HyperPELT(Method):
    task_embedding_name = "task_embedding"

    def __init__(self, config: HyperPELTConfig, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        n, d_tau, d_i = config.prefix_length, config.task_dim or dims.d_model, config.hyper_dim
        self.task_embedding = nn.Parameter(torch.randn(num_tasks, n, d_tau) * config.init_std)
        rows = (n,) if config.layer_block_embeddings == "rows" else ()
        self.layer_embedding = nn.Parameter(torch.randn(dims.num_layers, *rows, d_tau) * config.init_std)
        self.block_embedding = nn.Parameter(torch.randn(len(block_types), *rows, d_tau) * config.init_std)
        self.projector_in, self.projector_out = generator.projector(3 * d_tau, config.projector_hidden, d_i)

        attention = self.sites_of("attention") if config.use_prefix else []
        ffn = self.sites_of("ffn") if config.use_adapter else []
        self.attention_sites, self.ffn_sites = attention, ffn
        for name, group in (("attention", attention), ("ffn", ffn)):
            self.register_buffer(f"{name}_layers",
                                 torch.tensor([s.layer for s in group], dtype=torch.long), False)
            self.register_buffer(f"{name}_blocks",
                                 torch.tensor([s.block_type for s in group], dtype=torch.long), False)
        if attention:
            self.prefix_key, self.prefix_value = generator.prefix_generators(d_i, dims.inner_dim)
        if ffn:
            self.adapter_down, self.adapter_up = generator.adapter_generators(d_i, dims.d_model,
                                                                              config.adapter_dim)
            self.adapter_scale = nn.Parameter(torch.ones(len(ffn)))

    def inject(self, host, backbone, state: ConditioningState) -> None:
        attach_prefixes(self.attention_sites, host, state, self.dims.num_heads, self.dims.head_dim,
                        backbone, self.config.prefix_position_bias)
        wrap_parallel_adapters(self.ffn_sites, host, backbone, state)

    def hyper_embedding(
        self, embeddings: torch.Tensor, layers: torch.Tensor, blocks: torch.Tensor
    ) -> torch.Tensor:
        """I for every (task embedding row, site) pair: [tasks, sites, N, d_I], one batched pass for all
        layers."""
        hidden = generator.site_hidden(self.projector_in, embeddings, self.layer_embedding[layers],
                                       self.block_embedding[blocks])
        return self.projector_out(hidden)

    def condition(self, task_ids: torch.Tensor, state: ConditioningState) -> None:
        tasks = self.batch_tasks(task_ids, state)
        self.condition_embeddings(self.task_embedding[tasks], state)

    def condition_embeddings(self, embeddings: torch.Tensor, state: ConditioningState) -> None:
        if self.attention_sites:
            hyper = self.hyper_embedding(embeddings, self.attention_layers, self.attention_blocks)
            state.prefix = generator.prefix_weights(self.prefix_key, self.prefix_value, hyper)
        if self.ffn_sites:
            hyper = self.hyper_embedding(embeddings, self.ffn_layers, self.ffn_blocks)
            hyper = hyper.mean(dim=2)  # [T, S, d_I]
            state.adapters["ffn"] = generator.adapter_weights(
                self.adapter_down, self.adapter_up, self.adapter_scale, hyper, self.dims.d_model,
                self.config.adapter_dim, self.config.adapter_activation)
