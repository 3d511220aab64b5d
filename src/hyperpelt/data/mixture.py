"""Temperature-based sampling of tasks for multi-task training: p_i proportional to N_i ** (1 / T)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def temperature_rates(sizes: Mapping[str, int], temperature: float) -> dict[str, float]:
    """Sampling rate of each task; T=1 is proportional to size, large T tends to uniform."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not sizes:
        raise ValueError("no tasks to sample from")
    bad = [name for name, size in sizes.items() if not size > 0]
    if bad:
        raise ValueError(f"task sizes must be > 0: {', '.join(bad)}")
    names = list(sizes)
    logs = np.log(np.array([sizes[n] for n in names], dtype=float)) / temperature
    weights = np.exp(logs - logs.max())
    weights /= weights.sum()
    return {name: float(w) for name, w in zip(names, weights)}


class TaskSampler:
    """Infinite, seeded stream of task names drawn with `temperature_rates`."""

    def __init__(self, sizes: Mapping[str, int], temperature: float, seed: int):
        self.rates = temperature_rates(sizes, temperature)
        self._names = list(self.rates)
        self._probs = np.array([self.rates[n] for n in self._names])
        self._rng = np.random.default_rng(seed)

    def next_task(self) -> str:
        return self.next_tasks(1)[0]

    def next_tasks(self, n: int) -> list[str]:
        """n independent draws (one per example of a mixed batch)."""
        picks = self._rng.choice(len(self._names), size=n, p=self._probs)
        return [self._names[i] for i in picks]

    def state(self) -> dict:
        """The generator's position (JSON data)."""
        return self._rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self._rng.bit_generator.state = state
