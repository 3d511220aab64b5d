"""The hypernetwork of HyperPELT (Zhang et al., §3.1–3.2), shared by its task path and by VL-HyperPELT's
visual path (§3.3), so that both build and run it through the same code.

A two-layer projector (linear, ReLU, linear) gives the hyper-embedding I; linear generators map I to
prefix keys and values (h_P) and to adapter down and up weights (h_A). The projector's first layer reads
the concatenation [first, l_layer, b_block], where ``first`` is the task embedding or the mapped image
grid; it is computed as the sum of its three column blocks applied to each part, so no
[rows × sites × N × 3d_τ] tensor is built.

The functions here build the modules and run them; the method keeps the modules under its own attribute
names (they are its checkpoint keys), and the visual path is a second set of them passed to the same
functions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..inject import Activation, AdapterWeights, PrefixWeights


def projector(width: int, hidden: int, hyper_dim: int) -> tuple[nn.Linear, nn.Linear]:
    """The projector's two layers: ``width`` inputs to ``hidden``, then to the hyper-embedding's size."""
    return nn.Linear(width, hidden), nn.Linear(hidden, hyper_dim)


def prefix_generators(hyper_dim: int, inner_dim: int) -> tuple[nn.Linear, nn.Linear]:
    """h_P: a hyper-embedding row to one prefix key row and one prefix value row."""
    return nn.Linear(hyper_dim, inner_dim), nn.Linear(hyper_dim, inner_dim)


def adapter_generators(hyper_dim: int, d_model: int, adapter_dim: int) -> tuple[nn.Linear, nn.Linear]:
    """h_A: a hyper-embedding to an adapter's down weights (drawn small) and up weights (zero, so a
    generated adapter starts as the identity map)."""
    down = nn.Linear(hyper_dim, adapter_dim * d_model)
    up = nn.Linear(hyper_dim, d_model * adapter_dim)
    nn.init.normal_(down.weight, std=1.0 / math.sqrt(hyper_dim * d_model))
    nn.init.zeros_(down.bias)
    nn.init.zeros_(up.weight)
    nn.init.zeros_(up.bias)
    return down, up


def site_hidden(
    projector_in: nn.Linear, first: torch.Tensor, layers: torch.Tensor, blocks: torch.Tensor
) -> torch.Tensor:
    """The projector's hidden layer for every row of ``first`` and every site: [F, sites, N, hidden].

    ``first`` is [F, N, d_τ] (F tasks or images); ``layers`` and ``blocks`` are the sites' layer and block
    embeddings, [sites, N, d_τ], or [sites, d_τ] vectors broadcast over the N rows.
    """
    w_first, w_layer, w_block = projector_in.weight.chunk(3, dim=1)
    per_site = layers @ w_layer.T + blocks @ w_block.T
    if per_site.dim() == 2:
        per_site = per_site[:, None]
    return F.relu((first @ w_first.T)[:, None] + per_site[None] + projector_in.bias)


def prefix_weights(key: nn.Linear, value: nn.Linear, hyper: torch.Tensor) -> PrefixWeights:
    """Prefix keys and values from hyper-embeddings [F, sites, N, d_I]: each [F, sites, N, inner_dim]."""
    return PrefixWeights(key(hyper), value(hyper))


def adapter_weights(
    down: nn.Linear, up: nn.Linear, scale: torch.Tensor, hyper: torch.Tensor, d_model: int,
    adapter_dim: int, activation: Activation,
) -> AdapterWeights:
    """Adapter weights from hyper-embeddings [F, sites, d_I]: down [F, sites, m, d] and up [F, sites, d, m],
    the up weights scaled by each site's λ (``scale``)."""
    rows, d, m = len(hyper), d_model, adapter_dim
    down_weights = down(hyper).view(rows, -1, m, d)
    # λ·(W_up a) = (λ·W_up) a: scaling the small generated weights once per step spares every site a
    # full-size multiply of its output, and its backward a full-size reduction for λ's gradient.
    up_weights = up(hyper).view(rows, -1, d, m) * scale[:, None, None]
    return AdapterWeights(down_weights, up_weights, activation=activation)
