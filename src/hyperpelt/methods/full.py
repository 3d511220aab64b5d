"""Full fine-tuning: every backbone weight trains; nothing is injected."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method


@dataclass
class FullConfig:
    pass


class FullFineTuning(Method):
    trains_backbone = True
