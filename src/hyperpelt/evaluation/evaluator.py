"""Predict every task's split, score it with the task's metrics, and average over tasks."""

from __future__ import annotations

import torch

from ..data.features import TaskData, eval_batches


@torch.no_grad()
def evaluate(model, data: list[TaskData], split: str, batch_size: int, num_beams: int = 1) -> dict:
    """``{"tasks": {name: {"metrics": {...}, "score": float}}, "average": float}``.

    The average is over tasks (each task's score being the mean of its own metrics), never over the
    pooled metric values.
    """
    was_training = model.training
    model.eval()
    tasks = {}
    for task_data in data:
        targets, predictions = [], []
        for batch, labels in eval_batches(model, task_data, split, batch_size):
            task_ids = batch.pop("task_ids")
            predictions += model.predict(
                task_ids, max_new_tokens=model.model_config.max_target_length, num_beams=num_beams, **batch
            )
            targets += labels
        metrics, score = task_data.task.score(targets, predictions)
        tasks[task_data.task.name] = {"metrics": metrics, "score": score, "examples": len(targets)}
    model.train(was_training)
    average = sum(t["score"] for t in tasks.values()) / len(tasks)
    return {"tasks": tasks, "average": average}
