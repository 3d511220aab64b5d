"""One task's generated weights frozen into plain tensors, served with no hypernetwork."""

from __future__ import annotations

from .base import Method


class StaticWeights(Method):
    """Stands in for a method: every batch gets the same prefix and adapter tensors."""

    generates_weights = False

    def __init__(self, method: Method, prefix, adapters: dict):
        super().__init__(method.config, method.dims, method.sites, method.num_tasks, method.block_types)
        self.name, self.prefix, self.adapters = f"{method.name} (static)", prefix, adapters

    @property
    def trains_layer_norms(self) -> bool:
        return False

    def condition(self, task_ids, state) -> None:
        state.task_ids, state.rows = task_ids, None
        state.prefix, state.adapters = self.prefix, dict(self.adapters)
