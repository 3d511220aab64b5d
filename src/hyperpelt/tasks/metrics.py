"""Pure metric functions f(targets, predictions) -> {name: value in percent}.

A prediction of None (text that is not a valid label) always counts as wrong: for classification it
becomes 1 - target when all targets are 0/1, else -1; for regression it becomes the end of the 0..5
range farther from the target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def _check(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    if not len(targets):
        raise ValueError("no examples to score")


def _classes(targets: Sequence, predictions: Sequence) -> tuple[np.ndarray, np.ndarray]:
    _check(targets, predictions)
    binary = set(targets) <= {0, 1}
    filled = [(1 - t if binary else -1) if p is None else p for t, p in zip(targets, predictions)]
    return np.asarray(targets, dtype=int), np.asarray(filled, dtype=int)


def _scores(targets: Sequence, predictions: Sequence) -> tuple[np.ndarray, np.ndarray]:
    _check(targets, predictions)
    filled = [(0.0 if t >= 2.5 else 5.0) if p is None else p for t, p in zip(targets, predictions)]
    return np.asarray(targets, dtype=float), np.asarray(filled, dtype=float)


def accuracy(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    t, p = _classes(targets, predictions)
    return {"accuracy": 100.0 * float(np.mean(t == p))}


def f1(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Binary F1 of the positive class 1."""
    t, p = _classes(targets, predictions)
    return {"f1": 100.0 * float(skm.f1_score(t, p, pos_label=1, average="binary", zero_division=0))}


def matthews_corrcoef(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    t, p = _classes(targets, predictions)
    return {"matthews_corrcoef": 100.0 * float(skm.matthews_corrcoef(t, p))}


def _constant(*arrays: np.ndarray) -> bool:
    return any(len(a) < 2 or np.ptp(a) == 0 for a in arrays)


def pearson(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Pearson correlation; 0.0 when either side is constant."""
    t, p = _scores(targets, predictions)
    return {"pearson": 0.0 if _constant(t, p) else 100.0 * float(stats.pearsonr(t, p)[0])}


def spearman(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    """Spearman rank correlation; 0.0 when either side is constant."""
    t, p = _scores(targets, predictions)
    return {"spearman": 0.0 if _constant(t, p) else 100.0 * float(stats.spearmanr(t, p)[0])}


def accuracy_and_f1(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {**accuracy(targets, predictions), **f1(targets, predictions)}


def pearson_and_spearman(targets: Sequence, predictions: Sequence) -> dict[str, float]:
    return {**pearson(targets, predictions), **spearman(targets, predictions)}


# The metrics a task declared in a file may name: name -> (function, the kind of task it scores).
BY_NAME = {
    "accuracy": (accuracy, "classification"),
    "f1": (f1, "classification"),
    "matthews_corrcoef": (matthews_corrcoef, "classification"),
    "pearson": (pearson, "regression"),
    "spearman": (spearman, "regression"),
}
