"""Preparing the task heads before training: starts from the training labels, then probe starts."""

from __future__ import annotations

from ..errors import UserError
from .config import HeadsConfig
from .probe import probe_heads


def prepare_heads(heads, collate, encode, data, options: HeadsConfig, batch_size: int, seed: int,
                  progress: bool = False) -> dict:
    """Start every head of ``heads`` (``TaskHeads``, or None: no heads) from its task's training labels
    (regression heads at the mean label; the tasks in ``balanced_classes`` weight their classes), then fit
    the probe starts on what the encoder step ``encode`` reads of batches by ``collate`` (see
    ``probe_heads``); returns the probes' scores."""
    if heads is None:
        return {}
    classification = {d.task.name for d in data if not d.task.is_regression}
    unknown = sorted(set(options.balanced_classes) - classification)
    if unknown:
        raise UserError(
            f"heads.balanced_classes names {', '.join(unknown)}: not a classification task of data.tasks"
        )
    for task_data in data:
        labels = [f["label"] for f in task_data.features["train"]]
        if not task_data.task.is_regression:
            labels = [int(v) for v in labels]
        heads.heads[task_data.task_id].start(labels, task_data.task.name in options.balanced_classes)
    counts = options.probe_counts([d.task.name for d in data])
    if not any(counts.values()):
        return {}
    return probe_heads(heads, collate, encode, data, counts, options.balanced_classes, batch_size, seed,
                       progress)
