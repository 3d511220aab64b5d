"""Adapters (Houlsby et al.) placed after every self-attention and feed-forward block, one set per task.

A(y) = LN(U · act(D · y)) + y on the block's output y, before the host's residual. ``adapters`` keeps
per-task layer norms (in the adapters and the host's own, as Houlsby suggests); ``adapters-shared``
(Adapters† of Hyperformer) shares every layer norm across tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..inject import Activation, AdapterWeights, SequentialAdapter, TaskLayerNorm, replace_module
from .base import Method

SEQUENTIAL_SITES = ("attention_output", "ffn_output")
NORM_INIT = 1e-2  # initial weight of the layer norm on adapter outputs


@dataclass
class AdaptersConfig:
    reduction_factor: int = 32
    """Bottleneck m = d_model / r (Hyperformer reports r = 32)."""
    activation: Activation = "gelu"
    adapter_layer_norm: bool = True
    """A layer norm on each adapter's output (Hyperformer's Eq. 3)."""
    task_layer_norms: bool = True
    """Layer norms per task (host and adapters); False shares them across tasks (Adapters†)."""
    train_layer_norms: bool = True
    layer_norm_init: float = NORM_INIT
    """Starting weight γ of the layer norm on each adapter's output (the papers give none)."""

    def __post_init__(self):
        if self.reduction_factor < 1:
            raise UserError("method.reduction_factor must be >= 1")


@dataclass
class AdaptersSharedConfig(AdaptersConfig):
    task_layer_norms: bool = False


def inject_sequential_adapters(sites, host, state) -> None:
    for index, site in enumerate(sites):
        replace_module(
            host, site.path, SequentialAdapter(host.get_submodule(site.path), state, "sequential", index)
        )


class Adapters(Method):
    def __init__(self, config: AdaptersConfig, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        d, m, s = (dims.d_model, max(1, dims.d_model // config.reduction_factor),
                   len(self.sites_of(*SEQUENTIAL_SITES)))
        self.down = nn.Parameter(torch.randn(num_tasks, s, m, d) / math.sqrt(d))
        self.down_bias = nn.Parameter(torch.zeros(num_tasks, s, m))
        self.up_bias = nn.Parameter(torch.zeros(num_tasks, s, d))
        if config.adapter_layer_norm:
            # The layer norm rescales any output to unit size: a zero up-projection would jump to full size
            # after one step. A small layer-norm weight keeps the adapter near the identity instead.
            norms = num_tasks if config.task_layer_norms else 1
            self.up = nn.Parameter(torch.randn(num_tasks, s, d, m) / math.sqrt(m))
            self.norm_weight = nn.Parameter(torch.full((norms, s, d), config.layer_norm_init))
            self.norm_bias = nn.Parameter(torch.zeros(norms, s, d))
        else:
            self.up = nn.Parameter(torch.zeros(num_tasks, s, d, m))  # adapters start as the identity

    def inject(self, host, backbone, state) -> None:
        inject_sequential_adapters(self.sites_of(*SEQUENTIAL_SITES), host, state)
        if self.config.task_layer_norms and self.config.train_layer_norms:
            for name, module in list(host.named_modules()):
                if isinstance(module, backbone.layer_norm_classes):
                    norm = TaskLayerNorm(module, state, self.num_tasks, backbone.layer_norm_eps(module))
                    replace_module(host, name, norm)

    def condition(self, task_ids, state) -> None:
        tasks = self.batch_tasks(task_ids, state)
        norm_rows = tasks if self.config.task_layer_norms else torch.zeros_like(tasks)
        has_norm = self.config.adapter_layer_norm
        state.adapters["sequential"] = AdapterWeights(
            self.down[tasks],
            self.up[tasks],
            self.down_bias[tasks],
            self.up_bias[tasks],
            self.norm_weight[norm_rows] if has_norm else None,
            self.norm_bias[norm_rows] if has_norm else None,
            activation=self.config.activation,
        )
