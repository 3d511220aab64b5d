"""Prefix-tuning (Li & Liang) and the MAM adapter (He et al.), in every attention kind of the host.

Multi-task prefix-tuning: each task has its own prefix embeddings P_τ (N×d per attention kind), and a
reparameterisation MLP per attention kind, shared by the tasks, maps them to keys and values for every
layer: MLP(P) = W2 · tanh(W1 · P) ∈ R^{N × 2·L·d}. MAM adds a parallel adapter beside every
feed-forward block with a fixed scale (He et al.: bottleneck 512, scale 4), shared by the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import UserError
from ..inject import AdapterWeights, PrefixWeights, attach_prefixes, wrap_parallel_adapters
from .base import Method


@dataclass
class PrefixConfig:
    prefix_length: int = 49
    """N: prefix vectors per attention block."""
    hidden: int = 512
    """Width of the reparameterisation MLP (d_mid; 512 reproduces the paper's 1.72% per task)."""
    train_layer_norms: bool = False
    prefix_position_bias: Literal["zero", "distance"] = "zero"
    """Relative-position bias of prefix keys (T5): zero, or distance (prefixes as past tokens, as
    transformers and peft treat them); the papers do not say."""

    def __post_init__(self):
        if min(self.prefix_length, self.hidden) < 1:
            raise UserError("method: prefix_length and hidden must be >= 1")


@dataclass
class MAMConfig(PrefixConfig):
    adapter_dim: int = 512
    """Bottleneck of the parallel FFN adapter (He et al.: 512)."""
    adapter_scale: float = 4.0
    """Fixed scale s of the parallel adapter (He et al.: 4)."""


class PrefixTuning(Method):
    def __init__(self, config: PrefixConfig, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        self.attention_sites = self.sites_of("attention")
        self.kinds = sorted({s.block_type for s in self.attention_sites})
        n, d = config.prefix_length, dims.d_model
        self.embedding = nn.Parameter(torch.randn(num_tasks, len(self.kinds), n, d))
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(d, config.hidden), nn.Tanh(),
                          nn.Linear(config.hidden, 2 * self._layers(k) * dims.inner_dim))
            for k in self.kinds
        )
        # where each (kind, layer) lands in the list of attention sites
        order = {(s.block_type, s.layer): i for i, s in enumerate(self.attention_sites)}
        index = [
            order[(k, layer)]
            for k in self.kinds
            for layer in sorted(s.layer for s in self.attention_sites if s.block_type == k)
        ]
        self.register_buffer("site_order", torch.argsort(torch.tensor(index)), False)

    def _layers(self, kind: int) -> int:
        return sum(1 for s in self.attention_sites if s.block_type == kind)

    def inject(self, host, backbone, state) -> None:
        attach_prefixes(self.attention_sites, host, state, self.dims.num_heads, self.dims.head_dim,
                        backbone, self.config.prefix_position_bias)

    def condition(self, task_ids, state) -> None:
        tasks = self.batch_tasks(task_ids, state)
        keys, values = [], []
        for k, mlp in enumerate(self.mlps):
            out = mlp(self.embedding[tasks, k])  # [T, N, 2 * L * inner]
            # [2, T, L, N, inner]
            out = out.view(len(tasks), out.shape[1], -1, 2, self.dims.inner_dim).permute(3, 0, 2, 1, 4)
            keys.append(out[0])
            values.append(out[1])
        keys, values = torch.cat(keys, 1)[:, self.site_order], torch.cat(values, 1)[:, self.site_order]
        state.prefix = PrefixWeights(keys, values)


class MAMAdapter(PrefixTuning):
    def __init__(self, config: MAMConfig, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        self.ffn_sites = self.sites_of("ffn")
        s, d, m = len(self.ffn_sites), dims.d_model, config.adapter_dim
        self.down = nn.Parameter(torch.randn(1, s, m, d) / d**0.5)
        self.down_bias = nn.Parameter(torch.zeros(1, s, m))
        self.up = nn.Parameter(torch.zeros(1, s, d, m))
        self.up_bias = nn.Parameter(torch.zeros(1, s, d))

    def inject(self, host, backbone, state) -> None:
        super().inject(host, backbone, state)
        wrap_parallel_adapters(self.ffn_sites, host, backbone, state)

    def condition(self, task_ids, state) -> None:
        super().condition(task_ids, state)
        state.adapters["ffn"] = AdapterWeights(
            self.down, self.up, self.down_bias, self.up_bias, scale=self.config.adapter_scale, shared=True
        )
