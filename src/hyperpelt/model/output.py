"""What ``TunedModel.forward`` returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class TunedOutput(ModelOutput):
    """What ``TunedModel.forward`` returns for every backbone: the mean loss over the batch (when labels
    are given); for text-to-text backbones the host's token logits; for encoder backbones each example's
    prediction (a class index, or a label value for regression)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
