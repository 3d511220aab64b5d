"""Images as input tokens (VL-T5, VL-Adapter): each grid cell's features, projected to the host's width,
placed before the text's token embeddings. CLIP-T5 (``clip-t5``: full fine-tuning) and VL-Adapter
(``vl-adapter``: frozen host, adapters) are the V&L baselines of HyperPELT's Table 2."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from .adapters import Adapters, AdaptersConfig
from .full import FullConfig, FullFineTuning
from .prompt import prepend_embeddings


class VisualTokens(nn.Module):
    """[B, grid, feature_dim] image features -> [B, grid, d_model] input tokens: a linear map and a layer
    norm (VL-T5's visual embedding, without its box positions: a grid has none)."""

    def __init__(self, feature_dim: int, d_model: int):
        super().__init__()
        self.project = nn.Linear(feature_dim, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.project(features))


def batch_images(state, method_name: str, batch_size: int | None = None) -> torch.Tensor:
    """The batch's image features, repeated when generation expands the batch; a clear error without."""
    features = state.image_features
    if features is None:
        raise UserError(f"method '{method_name}' reads each example's image: give the run an image-feature "
                        f"cache (data.feature_cache) and examples with an image_id")
    if batch_size is not None and batch_size != len(features):
        features = features.repeat_interleave(batch_size // len(features), dim=0)
    return features


def prepend_visual_tokens(tokens: VisualTokens, method_name: str, host, inputs: dict, state) -> dict:
    features = batch_images(state, method_name, len(inputs["input_ids"]))
    return prepend_embeddings(host, inputs, tokens(features.to(tokens.project.weight.dtype)))


class VisualInput:
    """Mixed into a method: the image's grid as input tokens before the text, the projection trained."""

    reads_images = changes_inputs = True

    def __init__(self, config, dims, sites, num_tasks, block_types):
        super().__init__(config, dims, sites, num_tasks, block_types)
        self.visual_tokens = VisualTokens(config.feature_dim, dims.d_model)

    def prepare_inputs(self, host, inputs: dict, state) -> dict:
        return prepend_visual_tokens(self.visual_tokens, self.name, host, inputs, state)


@dataclass
class ClipT5Config(FullConfig):
    feature_dim: int = 2048
    """Size of each image feature vector (CLIP RN101 grid: 2048; efficientnet-lite0: 1280)."""


class ClipT5(VisualInput, FullFineTuning):
    """Full fine-tuning with the image's grid as input tokens (CLIP-T5 of VL-Adapter and HyperPELT)."""


@dataclass
class VLAdapterConfig(AdaptersConfig):
    feature_dim: int = 2048
    """Size of each image feature vector (CLIP RN101 grid: 2048; efficientnet-lite0: 1280)."""


class VLAdapter(VisualInput, Adapters):
    """Adapters on the frozen host with the image's grid as input tokens (VL-Adapter, Sung et al. 2022);
    the visual projection trains with the adapters."""
