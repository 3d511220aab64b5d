"""Predict every task's split, score it with the task's metrics, and average."""

from __future__ import annotations

from collections.abc import Callable

from ..data.batches import TaskData

# ``predict(task_id, features, batch_size, num_beams)``: each feature's label value, in order (a model's
# ``predict_features``)
Predict = Callable[[int, list[dict], int, int], list]

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


def evaluate(predict: Predict, data: list[TaskData], split: str, batch_size: int, num_beams: int = 1,
             average: str = "pooled", processes=None) -> dict:
    """Score ``predict``'s predictions of every task's ``split``: ``{"tasks": {name: {"metrics": {...},
    "score": float, "examples": n}}, "average": float, "average_pooled": float, "average_per_task":
    float}``; ``average`` is the one selected (see `averages`). ``processes`` (an Accelerator, or None:
    this process alone): the processes that share the work (see `shared_predictions`); every one returns
    the same results."""
    tasks = {}
    for task_data in data:
        features = task_data.features[split]
        predictions = shared_predictions(predict, task_data.task_id, features, batch_size, num_beams,
                                         processes)
        task = task_data.task
        if task.reference_key == "label" and not task.is_open:  # (an encoder's open labels are indices)
            targets = [f["label"] for f in features]
        else:  # e.g. every human answer of a VQA question, every reference caption
            targets = [task.reference(example) for example in task_data.examples[split]]
        metrics, score = task.score(targets, predictions)
        tasks[task_data.task.name] = {"metrics": metrics, "score": score, "examples": len(targets)}
    return {"tasks": tasks, **averages(tasks, average)}


def shared_predictions(predict: Predict, task_id: int, features: list[dict], batch_size: int,
                       num_beams: int, processes=None) -> list:
    """Every feature's prediction, in order, each made once. With several processes, batch i (of
    ``batch_size`` consecutive features, the last one short) is predicted by process i mod n and the
    predictions gathered, so each batch is the batch one process would predict: nothing is padded or
    repeated, and the predictions are those of one process given the same weights."""
    n = 1 if processes is None else processes.num_processes
    if n == 1:
        return predict(task_id, features, batch_size, num_beams)
    from accelerate.utils import gather_object

    starts = range(processes.process_index * batch_size, len(features), n * batch_size)
    mine = [predict(task_id, features[s:s + batch_size], batch_size, num_beams)
            for s in starts]
    return interleave(gather_object([mine]))


def interleave(per_process: list[list[list]]) -> list:
    """The predictions in feature order, from each process's batches (process p: batches p, p + n, ...)."""
    n = len(per_process)
    batches = [per_process[i % n][i // n] for i in range(sum(map(len, per_process)))]
    return [prediction for batch in batches for prediction in batch]
