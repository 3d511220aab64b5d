"""A mixed batch of three tasks for encoders: one text, a scored pair, a labelled pair."""

import torch

from conftest import encode, examples

TASKS = ["sst2", "stsb", "rte"]  # one text, a scored pair, a labelled pair


def mixed_batch(model) -> tuple[torch.Tensor, dict]:
    """Two examples of each task, tasks interleaved, lengths different (so the padded batch has padding)."""
    features, task_ids = [], []
    for offset in range(2):
        for task_id, task in enumerate(TASKS):
            features += encode(model, task, examples(task, 1, offset=offset))
            task_ids.append(task_id)
    return torch.tensor(task_ids), model.backbone.collate(features, model.tokenizer)
