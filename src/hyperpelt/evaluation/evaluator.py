"""Predict every task's split, score it with the task's metrics, and average."""

from __future__ import annotations

from ..data.features import TaskData

AVERAGES = ("pooled", "per_task")


def averages(tasks: dict[str, dict], selected: str = "pooled") -> dict[str, float]:
    """The two averages of per-task results ``{name: {"metrics": {...}, "score": float}}``, named.

    ``average_pooled`` is the mean of every metric value of every task, the papers' "Avg" column (a task
    with two metrics, as MRPC, QQP and STS-B, counts twice); ``average_per_task`` is the mean of the task
    scores (each the mean of its own metrics). ``average`` is the ``selected`` one (``eval.average``).
    """
    if selected not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {selected!r}")
    values = [value for entry in tasks.values() for value in entry["metrics"].values()]
    out = {
        "average_pooled": sum(values) / len(values),
        "average_per_task": sum(entry["score"] for entry in tasks.values()) / len(tasks),
    }
    return {"average": out[f"average_{selected}"], **out}


def evaluate(model, data: list[TaskData], split: str, batch_size: int, num_beams: int = 1,
             average: str = "pooled") -> dict:
    """``{"tasks": {name: {"metrics": {...}, "score": float, "examples": n}}, "average": float,
    "average_pooled": float, "average_per_task": float}``; ``average`` is the one selected (see
    `averages`)."""
    tasks = {}
    for task_data in data:
        features = task_data.features[split]
        predictions = model.predict_features(task_data.task_id, features, batch_size, num_beams)
        task = task_data.task
        if task.reference_key == "label" and not task.is_open:  # (an encoder's open labels are indices)
            targets = [f["label"] for f in features]
        else:  # e.g. every human answer of a VQA question, every reference caption
            targets = [task.reference(example) for example in task_data.examples[split]]
        metrics, score = task.score(targets, predictions)
        tasks[task_data.task.name] = {"metrics": metrics, "score": score, "examples": len(targets)}
    return {"tasks": tasks, **averages(tasks, average)}
