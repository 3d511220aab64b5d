"""Hyperformer and Hyperformer++ (Karimi Mahabadi et al., 2021): hypernetworks generate task-conditional
adapters, placed after every self-attention and feed-forward block, and the conditional layer norm inside
them: A(y) = LN_τ(U_τ · GeLU(D_τ · y)) + y.

Hyperformer: a task embedding z_τ passes a task projector (two-layer ReLU MLP) to I_τ, and every adapter
site has its own linear hypernetwork. Hyperformer++: one hypernetwork per stack (encoder, decoder) shared
by all its layers, fed I = LN(h_I([z_τ, l_i, p_j])) with layer-id and adapter-position embeddings (§2.4,
§4.1). The research code's faults are not repeated here: weights are generated once per forward for all
layers (not per layer call or decoding step), and a batch may mix tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..inject import AdapterWeights
from .adapters import NORM_INIT, SEQUENTIAL_SITES, inject_sequential_adapters
from .base import Method


@dataclass
class HyperformerConfig:
    default_task_prefix: ClassVar[bool] = False
    """Hyperformer removes the T5 task prefixes and conditions on task embeddings instead (§2.3); the
    default of data.task_prefix when the config leaves it null."""

    task_dim: int = 64
    """t: size of z_τ, I_τ and the layer-id and position embeddings (paper: 64)."""
    projector_hidden: int = 128
    """e: hidden size of the task projector (paper: 128)."""
    reduction_factor: int = 32
    """Adapter bottleneck m = d_model / r (paper: r = 32)."""
    shared: bool = False
    """Hyperformer++: one hypernetwork per stack with layer-id and position embeddings."""
    adapter_blocks: bool = True
    """Ablation "- adapter blocks": False generates no adapters (only the host's layer norms train)."""
    conditional_layer_norm: bool = True
    """Ablation: False replaces the generated layer norm in the adapters by a plain trained one per site."""
    task_projector: bool = True
    """Ablation: False feeds the embeddings (summed, for ++) to the hypernetworks without the MLP."""
    train_layer_norms: bool = True
    """Ablation "- T5 layer norm": False keeps the host's layer norms frozen."""
    task_feature_dim: int | None = None
    """t': size of the task feature z_τ, which the task projector maps to t; None means task_dim
    (Appendix A gives t' = 512)."""
    projector_per_stack: bool = True
    """One task projector for the encoder and one for the decoder (as Appendix A counts for ++); False
    shares one by both stacks (Eq. 5 writes one h_I)."""
    layer_norm_init: float = 0.01
    """Starting weight γ of the adapters' (conditional) layer norm: the generator's bias for it; the paper
    gives none."""

    def __post_init__(self):
        if min(self.task_dim, self.projector_hidden, self.reduction_factor, self.feature_dim) < 1:
            raise UserError(
                "method: task_dim, task_feature_dim, projector_hidden and reduction_factor must be >= 1"
            )
        if not self.task_projector and self.feature_dim != self.task_dim:
            raise UserError(
                f"method: task_projector: false feeds z_τ to the hypernetworks as it is, so task_feature_dim "
                f"({self.task_feature_dim}) must equal task_dim ({self.task_dim}) or be null"
            )

    @property
    def feature_dim(self) -> int:
        """t', the size of z_τ."""
        return self.task_dim if self.task_feature_dim is None else self.task_feature_dim


@dataclass
class HyperformerPlusPlusConfig(HyperformerConfig):
    shared: bool = True


class Generator(nn.Module):
    """Linear hypernetworks from I (size t) to adapter weights; ``count`` > 1 stacks one per site."""

    def __init__(self, t: int, d: int, m: int, count: int, conditional_norm: bool,
                 norm_init: float = NORM_INIT):
        super().__init__()
        self.d, self.m = d, m
        sizes = {"down": m * d, "down_bias": m, "up": d * m, "up_bias": d}
        if conditional_norm:
            sizes.update(norm_weight=d, norm_bias=d)
        self.offsets, start = {}, 0  # where each generated piece sits in the flat output
        for name, size in sizes.items():
            self.offsets[name] = (start, start + size)
            start += size
        self.weight = nn.Parameter(torch.empty(count, start, t))
        self.bias = nn.Parameter(torch.zeros(count, start))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(t * d))
        with torch.no_grad():  # the generated layer norm starts small, so adapters start near the identity
            if conditional_norm:
                self.weight[:, slice(*self.offsets["norm_weight"])] = 0.0
                self.bias[:, slice(*self.offsets["norm_weight"])] = norm_init
                self.weight[:, slice(*self.offsets["norm_bias"])] = 0.0

    def forward(self, hyper: torch.Tensor) -> dict[str, torch.Tensor]:
        """hyper [T, S, t] → weights [T, S, ...]; with one generator it is shared by the S sites."""
        if self.weight.shape[0] == 1:
            flat = F.linear(hyper, self.weight[0], self.bias[0])
        else:
            flat = torch.einsum("tsi,soi->tso", hyper, self.weight) + self.bias
        parts = {name: flat[..., a:b] for name, (a, b) in self.offsets.items()}
        t, s = hyper.shape[:2]
        parts["down"] = parts["down"].reshape(t, s, self.m, self.d)
        parts["up"] = parts["up"].reshape(t, s, self.d, self.m)
        return parts


class Hyperformer(Method):
    task_embedding_name = "task_embedding"

    def __init__(self, config: HyperformerConfig, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        t, e, d = config.task_dim, config.projector_hidden, dims.d_model
        m = max(1, d // config.reduction_factor)
        sites = self.sites_of(*SEQUENTIAL_SITES) if config.adapter_blocks else []
        self.stacks = list(dict.fromkeys(s.stack for s in sites))
        # grouped by stack
        self.adapter_sites = [s for stack in self.stacks for s in sites if s.stack == stack]
        self.task_embedding = nn.Parameter(torch.randn(num_tasks, config.feature_dim))
        self.generators = nn.ModuleDict()
        self.projectors = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        self.layer_embeddings = nn.ParameterDict()
        self.position_embeddings = nn.ParameterDict()
        for stack in self.stacks:
            stack_sites = [s for s in self.adapter_sites if s.stack == stack]
            count = 1 if config.shared else len(stack_sites)
            self.generators[stack] = Generator(t, d, m, count, config.conditional_layer_norm,
                                               config.layer_norm_init)
            if config.shared:
                self.layer_embeddings[stack] = nn.Parameter(torch.randn(dims.num_layers, t))
                self.position_embeddings[stack] = nn.Parameter(torch.randn(len(SEQUENTIAL_SITES), t))
                self.norms[stack] = nn.LayerNorm(t)
            key = self._projector_key(stack)
            if config.task_projector and key not in self.projectors:
                width = config.feature_dim + (2 * t if config.shared else 0)
                self.projectors[key] = nn.Sequential(nn.Linear(width, e), nn.ReLU(), nn.Linear(e, t))
            if not config.conditional_layer_norm:
                start = torch.full((1, len(stack_sites), d), config.layer_norm_init)
                self.register_parameter(f"{stack}_norm_weight", nn.Parameter(start))
                self.register_parameter(f"{stack}_norm_bias",
                                        nn.Parameter(torch.zeros(1, len(stack_sites), d)))
            self.register_buffer(f"{stack}_layers", torch.tensor([s.layer for s in stack_sites]), False)
            self.register_buffer(f"{stack}_positions",
                                 torch.tensor([SEQUENTIAL_SITES.index(s.role) for s in stack_sites]), False)

    def inject(self, host, backbone, state) -> None:
        if self.adapter_sites:
            inject_sequential_adapters(self.adapter_sites, host, state)

    def _projector_key(self, stack: str) -> str:
        return stack if self.config.projector_per_stack else "stacks"

    def hyper_embedding(self, stack: str, z: torch.Tensor) -> torch.Tensor:
        """I for every (task embedding row, site) of a stack: [T, S, t] (per-layer Hyperformer: S = 1,
        broadcast)."""
        if not self.config.shared:
            hyper = self.projectors[self._projector_key(stack)](z) if self.config.task_projector else z
            return hyper[:, None]
        layers = self.layer_embeddings[stack][getattr(self, f"{stack}_layers")]
        positions = self.position_embeddings[stack][getattr(self, f"{stack}_positions")]
        t, s = len(z), len(layers)
        parts = (z[:, None].expand(t, s, -1), layers[None].expand(t, s, -1), positions[None].expand(t, s, -1))
        if self.config.task_projector:
            hyper = self.projectors[self._projector_key(stack)](torch.cat(parts, -1))
        else:
            hyper = sum(parts)
        return self.norms[stack](hyper)

    def condition(self, task_ids, state) -> None:
        tasks = self.batch_tasks(task_ids, state)
        self.condition_embeddings(self.task_embedding[tasks], state)

    def condition_embeddings(self, embeddings, state) -> None:
        if not self.adapter_sites:
            return
        pieces, tasks = [], len(embeddings)
        for stack in self.stacks:
            hyper = self.hyper_embedding(stack, embeddings)
            count = len(getattr(self, f"{stack}_layers"))
            weights = self.generators[stack](hyper.expand(tasks, count, -1))
            if not self.config.conditional_layer_norm:
                # plain LN
                weights["norm_weight"] = getattr(self, f"{stack}_norm_weight").expand(tasks, -1, -1)
                weights["norm_bias"] = getattr(self, f"{stack}_norm_bias").expand(tasks, -1, -1)
            pieces.append(weights)
        merged = {name: torch.cat([p[name] for p in pieces], dim=1) for name in pieces[0]}
        state.adapters["sequential"] = AdapterWeights(activation="gelu", **merged)
