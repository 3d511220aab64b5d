"""Inference without hypernetwork work per batch: every task's generated weights, made once."""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..inject import ConditioningState
from .base import Method

_optimizer_steps = 0  # steps of any torch optimizer in this process, once a table exists
_counting = False


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _count_optimizer_steps() -> None:
    global _counting
    if not _counting:
        register_optimizer_step_post_hook(_count_step)
        _counting = True


def method_version(method: Method) -> tuple:
    """The version of a method's weights: every optimizer step may move them, and whatever else writes
    them (a checkpoint load, a resume, ``load_state_dict``) bumps ``method.weights_version``."""
    return _optimizer_steps, method.weights_version


class WeightTable:
    """The weights a method generates for all its tasks, one row per task id.

    Built on first use and again after any method weight changes (see ``method_version``; moving or
    casting a model counts: ``TunedModel._apply``). A batch then takes views of its rows: any mix of tasks
    costs no hypernetwork work and no new memory. The table holds its tensors in the host's compute dtype
    (cast once, as it is built).
    """

    def __init__(self, method: Method):
        _count_optimizer_steps()
        self.method = method
        self.version: tuple | None = None
        self.prefix = None
        self.adapters: dict = {}
        self.builds = 0  # times the hypernetwork ran for the table

    def _build(self, device: torch.device, dtype: torch.dtype, state: ConditioningState) -> None:
        self.method.condition(torch.arange(self.method.num_tasks, device=device), state)
        if dtype != torch.float32:
            state.cast_weights(dtype)
        self.prefix, self.adapters = state.prefix, dict(state.adapters)
        self.version, self.builds = method_version(self.method), self.builds + 1

    def condition(self, task_ids: torch.Tensor, state: ConditioningState,
                  dtype: torch.dtype = torch.float32) -> None:
        """Fill ``state`` for a batch from the table, in ``dtype`` (the host's compute dtype); the table is
        rebuilt first if a method weight has changed."""
        if self.version != method_version(self.method):
            self._build(task_ids.device, dtype, state)
        tasks = self.method.batch_tasks(task_ids, state)
        if state.rows is None:  # one task: its own row, and the plain-matmul path
            index = slice(int(tasks[0]), int(tasks[0]) + 1)
        else:  # each example reads the row of its task
            index, state.rows = None, task_ids
        state.prefix = None if self.prefix is None else self.prefix.task_rows(index)
        state.adapters = {group: weights.task_rows(index) for group, weights in self.adapters.items()}
