"""The model: ``TunedModel``, a frozen host with a tuning method injected, and how its host reads texts."""

from .output import TunedOutput
from .tuned import TunedModel

__all__ = ["TunedModel", "TunedOutput"]
