"""Predict every task's split, score it with the task's metrics, and average over tasks."""

from __future__ import annotations

from ..data.features import TaskData


def evaluate(model, data: list[TaskData], split: str, batch_size: int, num_beams: int = 1) -> dict:
    """``{"tasks": {name: {"metrics": {...}, "score": float, "examples": n}}, "average": float}``.

    The average is over tasks (each task's score being the mean of its own metrics), never over the
    pooled metric values.
    """
    tasks = {}
    for task_data in data:
        features = task_data.features[split]
        predictions = model.predict_features(task_data.task_id, features, batch_size, num_beams)
        targets = [f["label"] for f in features]
        metrics, score = task_data.task.score(targets, predictions)
        tasks[task_data.task.name] = {"metrics": metrics, "score": score, "examples": len(targets)}
    average = sum(t["score"] for t in tasks.values()) / len(tasks)
    return {"tasks": tasks, "average": average}
