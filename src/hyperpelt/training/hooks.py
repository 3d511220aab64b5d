"""Named points of the training loop, where callers hook in (tests kill a run there, see ``faults``)."""

from __future__ import annotations

from collections.abc import Callable

from ..faults import fault

POINTS = ("forward", "step", "validated")
"""After each micro-batch's forward, after each optimizer step, after each validation is logged (before
its checkpoint is kept)."""


class LoopHooks:
    """Calls made at the loop's named points, each with the point's name."""

    def __init__(self):
        self._calls: dict[str, list[Callable[[str], None]]] = {point: [] for point in POINTS}

    def on(self, point: str, call: Callable[[str], None]) -> LoopHooks:
        if point not in self._calls:
            raise ValueError(f"no loop point '{point}'; the points are {', '.join(POINTS)}")
        self._calls[point].append(call)
        return self

    def __call__(self, point: str) -> None:
        for call in self._calls[point]:
            call(point)


def fault_hooks() -> LoopHooks:
    """What ``train`` hooks in by default: ``HYPERPELT_TEST_KILL_AT`` may kill the run at each point."""
    hooks = LoopHooks()
    for point in POINTS:
        hooks.on(point, fault)
    return hooks
