"""A copy of a model serving one task, its generated weights frozen into static tensors."""

from __future__ import annotations

import copy

import torch

from ..errors import UserError
from ..methods import StaticWeights


def export_static(model, task: str):
    """A copy of ``model`` (a ``TunedModel``) serving ``task`` with the weights the method generates for
    it frozen into static tensors; refused for methods that change the inputs or read images."""
    method = model.method
    if method.changes_inputs or method.reads_images:
        raise UserError(f"method '{method.name}' changes the inputs or reads images; it has no "
                        f"fixed weights to export")
    with torch.no_grad():
        method.condition(torch.tensor([model.task_id(task)], device=model.device), model.state)
    model.cast_generated()  # stored as a half host reads them: no cast per batch
    prefix, adapters = model.state.prefix, dict(model.state.adapters)
    model.state.clear()
    static = copy.deepcopy(model)
    static.method = StaticWeights(static.method, prefix, adapters)
    return static
