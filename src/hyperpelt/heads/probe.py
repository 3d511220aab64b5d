"""Linear-probe start of the task heads (LP-FT, Kumar et al. 2022), for encoder backbones.

A head initialised at random sees only the batches of its own task; a skewed task with few batches may
not get enough of them for its head to converge. Fitting each head first on the encoder's initial
features (logistic regression; ridge for regression) starts the tuning from a head that already reads
them.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from tqdm.auto import tqdm

from ..tasks.splits import sample_rows

# Penalties tried by 3-fold cross-validation (ridge: leave-one-out): with pair features (4 × d_model) and
# a thousand examples an unregularised probe fits its training sample almost perfectly.
REGULARIZATION = (1.0, 10.0, 100.0, 1000.0)
CV_FOLDS = 3


def _copy_into(head: torch.nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def _logistic(x: np.ndarray, y: np.ndarray, balanced: bool, seed: int):
    """(weight [classes, in], bias [classes], training accuracy) of a cross-validated logistic probe over
    the classes present in ``y``, in sorted order (a binary probe's logit split evenly over two rows)."""
    probe = LogisticRegressionCV(Cs=[1 / a for a in REGULARIZATION], cv=CV_FOLDS,
                                 class_weight="balanced" if balanced else None,
                                 l1_ratios=(0.0,), scoring="neg_log_loss", use_legacy_attributes=False,
                                 max_iter=1000, random_state=seed).fit(x, y)
    weight, bias = probe.coef_, probe.intercept_
    if len(probe.classes_) == 2:  # one binary logit w·x + b, split evenly over the two outputs
        weight, bias = np.concatenate([-weight, weight]) / 2, np.array([-bias[0], bias[0]]) / 2
    return weight, bias, float(accuracy_score(y, probe.predict(x)))


def fit_logistic(
    head: torch.nn.Linear, x: np.ndarray, y: np.ndarray, balanced: bool, seed: int
) -> float | None:
    """Logistic regression into a linear classification head; None (head unchanged) when a class is
    absent from the sample or too rare to be in every cross-validation fold (a small random k-shot sample)."""
    if np.bincount(y, minlength=head.out_features).min() < CV_FOLDS:
        return None
    weight, bias, accuracy = _logistic(x, y, balanced, seed)
    _copy_into(head, weight, bias)
    return accuracy


def fit_answer_probe(
    head: torch.nn.Linear, x: np.ndarray, y: np.ndarray, balanced: bool, seed: int
) -> float | None:
    """Logistic regression into an answer head over the answers present in the sample (labels -1, outside
    the vocabulary, are left out). An absent answer gets zero weights and a bias log(n) below the lowest
    fitted one, as if seen less than once in the n examples; None (head unchanged) with under two answers."""
    keep = y >= 0
    x, y = x[keep], y[keep]
    present = np.unique(y)
    if len(present) < 2:
        return None
    weight, bias, accuracy = _logistic(x, y, balanced, seed)
    full_weight = np.zeros((head.out_features, x.shape[1]))
    full_bias = np.full(head.out_features, bias.min() - np.log(len(y)))
    full_weight[present], full_bias[present] = weight, bias
    _copy_into(head, full_weight, full_bias)
    return accuracy


def fit_ridge(head: torch.nn.Linear, x: np.ndarray, y: np.ndarray) -> float:
    """Ridge regression into a one-output linear head; returns its R² on the sample."""
    probe = RidgeCV(alphas=REGULARIZATION).fit(x, y)
    _copy_into(head, probe.coef_[None, :], np.atleast_1d(probe.intercept_))
    return float(r2_score(y, probe.predict(x)))


@torch.no_grad()
def head_features(heads, collate, encode, task_id: int, features: list[dict], batch_size: int
                  ) -> torch.Tensor:
    """What ``heads`` (``TaskHeads``) read for each of a task's features: batched by ``collate`` (a
    ``Collator``), read by the encoder step ``encode`` (a batch -> its texts' ``Encoded``)."""
    chunks = []
    for batch in collate.batches(task_id, features, batch_size):
        a, b = encode(batch)
        chunks.append(heads.features(task_id, a, b))
    return torch.cat(chunks)


def probe_heads(heads, collate, encode, data, examples: dict[str, int], balanced_classes, batch_size: int,
                seed: int, progress: bool = False) -> dict:
    """Fit each task head on up to ``examples[task]`` training examples (0 or absent keeps the head's start)
    on what it reads of them (``head_features``); returns each probe's score on them (accuracy, or R² for
    regression)."""
    fitted = {}
    for task_data in tqdm(data, desc="probe heads", disable=not progress):
        count = examples.get(task_data.task.name, 0)
        if not count:
            continue
        rows = sample_rows(task_data.features["train"], count, random.Random(seed), keep_order=False)
        x = head_features(heads, collate, encode, task_data.task_id, rows, batch_size).float().cpu().numpy()
        y = np.array([f["label"] for f in rows])
        head = heads.heads[task_data.task_id]
        score = head.fit_probe(x, y, task_data.task.name in balanced_classes, seed)
        if score is not None:
            fitted[task_data.task.name] = score
    return fitted
