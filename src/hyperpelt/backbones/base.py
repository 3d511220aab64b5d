"""What every backbone tells the methods: where the sites are and how tasks become tensors."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Site:
    """One place a method tunes: an attention module (prefix) or a feed-forward module (adapter)."""

    path: str  # module path inside the host model
    kind: str  # "attention" (prefix), "ffn" (parallel adapter), "attention_output" / "ffn_output" (adapter after the block)
    block_type: int  # index into the backbone's block_types
    layer: int

    @property
    def stack(self) -> str:
        """encoder or decoder."""
        return self.path.split(".", 1)[0]


@dataclass(frozen=True)
class Dims:
    num_layers: int
    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim


def is_layer_norm(module: nn.Module) -> bool:
    """Layer norms of any host family (nn.LayerNorm, T5LayerNorm, RMSNorm...)."""
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("LayerNorm") or name.endswith("RMSNorm")
