"""Linear-probe start of the task heads (LP-FT, Kumar et al. 2022), for encoder backbones.

A head initialised at random sees only the batches of its own task; with five tasks and a few hundred
steps a skewed task such as CoLA gets too few of them for its head to converge, and the head is what
limits its score. Fitting each head first on the model's initial features (logistic regression, ridge
for regression) starts the tuning from a head that already reads them.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import accuracy_score, r2_score
from tqdm.auto import tqdm

from ..data.features import make_batch
from ..model import REGRESSION_SCALE, TunedModel


# Penalties tried by 3-fold cross-validation (ridge: leave-one-out): with pair features (4 × d_model) and
# a thousand examples an unregularised probe fits its training sample almost perfectly.
REGULARIZATION = (1.0, 10.0, 100.0, 1000.0)


def task_features(model: TunedModel, task_data, rows: list[dict], batch_size: int) -> np.ndarray:
    chunks = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = make_batch(model, chunk, [task_data.task_id] * len(chunk))
        batch.pop("labels", None)
        chunks.append(model.head_features(**batch))
    return torch.cat(chunks).float().numpy()


def probe_heads(model: TunedModel, data, examples: int | dict[str, int], balanced_classes, batch_size: int,
                seed: int, progress: bool = False) -> dict:
    """Fit each task head on up to ``examples`` training examples (a number for every task, or one per task
    name; 0 keeps the head's random start); returns each probe's score on them (accuracy, or R² for
    regression)."""
    was_training = model.training
    model.eval()
    fitted = {}
    for task_data in tqdm(data, desc="probe heads", disable=not progress):
        count = examples.get(task_data.task.name, 0) if isinstance(examples, dict) else examples
        if not count:
            continue
        train = task_data.features["train"]
        rows = random.Random(seed).sample(train, min(count, len(train)))
        x = task_features(model, task_data, rows, batch_size)
        y = np.array([f["label"] for f in rows])
        head = model.heads.heads[task_data.task_id]
        if task_data.task.is_regression:
            probe = RidgeCV(alphas=REGULARIZATION).fit(x, y / REGRESSION_SCALE)
            weight, bias = probe.coef_[None, :], np.atleast_1d(probe.intercept_)
        else:
            if len(np.unique(y)) < head.out_features:
                continue  # a class absent from the sample: keep the random start
            balanced = "balanced" if task_data.task.name in balanced_classes else None
            probe = LogisticRegressionCV(Cs=[1 / a for a in REGULARIZATION], cv=3, class_weight=balanced,
                                         l1_ratios=(0.0,), scoring="neg_log_loss", use_legacy_attributes=False,
                                         max_iter=1000, random_state=seed).fit(x, y.astype(int))
            weight, bias = probe.coef_, probe.intercept_
            if head.out_features == 2:  # one binary logit w·x + b, split evenly over the two outputs
                weight, bias = np.concatenate([-weight, weight]) / 2, np.array([-bias[0], bias[0]]) / 2
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        predicted = probe.predict(x)
        fitted[task_data.task.name] = float(
            r2_score(y / REGRESSION_SCALE, predicted) if task_data.task.is_regression else accuracy_score(y.astype(int), predicted))
    model.train(was_training)
    return fitted
