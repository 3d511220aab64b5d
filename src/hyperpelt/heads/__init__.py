"""Task heads of encoder backbones: what they read, their kinds, their starts and their options."""

from .config import HeadsConfig
from .features import PAIR_READERS, Encoded, masked_mean, pair_alignment, pair_cosine, pair_features, pool
from .setup import prepare_heads
from .task_heads import (
    REGRESSION_SCALE,
    AnswerHead,
    ClassificationHead,
    RegressionHead,
    TaskHead,
    TaskHeads,
    head_kind,
    head_kinds,
    register_head,
)

__all__ = ["PAIR_READERS", "REGRESSION_SCALE", "AnswerHead", "ClassificationHead", "Encoded", "HeadsConfig",
           "RegressionHead", "TaskHead", "TaskHeads", "head_kind", "head_kinds", "masked_mean",
           "pair_alignment", "pair_cosine", "pair_features", "pool", "prepare_heads", "register_head"]
