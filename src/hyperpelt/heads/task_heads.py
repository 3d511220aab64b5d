"""Task heads of encoder backbones: one small module per task on what the encoder gives.

A head kind is one ``TaskHead`` subclass registered by name with ``register_head``. Each task gets the
kind its config names (``heads.kinds``), else ``regression`` for tasks with a score and
``classification`` for tasks with label names, ``answer`` for open-answer tasks (VQA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .features import PAIR_READERS, Encoded

REGRESSION_SCALE = 5.0  # regression heads predict label / 5 (STS-B scores span 0–5)


class TaskHead(nn.Module):
    """One task's head: per-example loss and prediction from the features it reads.

    Subclasses are built as ``cls(in_features, task)`` (with ``uses_vocabulary``: ``cls(in_features, task,
    vocabulary)``, the task's answers) and implement ``forward``; ``start`` (from the training labels) and
    ``fit_probe`` (a linear-probe start) are optional.
    """

    uses_vocabulary = False

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None):
        """(losses [B] or None, predictions [B]: a class index or a label value per example)."""
        raise NotImplementedError

    def start(self, labels: list, balanced: bool) -> None:
        """Prepare from the task's training labels before training (default: nothing)."""

    def fit_probe(self, x, y, balanced: bool, seed: int) -> float | None:
        """Fit the head to features ``x`` and labels ``y`` (numpy); returns the fit's training score, or
        None when this head has no probe start."""
        return None


class ClassificationHead(nn.Linear, TaskHead):
    """A linear map to the task's class logits; cross-entropy, optionally weighted by class."""

    def __init__(self, in_features: int, task):
        nn.Linear.__init__(self, in_features, task.num_labels)
        self.class_weight: torch.Tensor | None = None  # training only: not part of a checkpoint

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return nn.Linear.forward(self, features)

    def forward(self, features, labels=None):
        logits = self.logits(features)
        predictions = logits.argmax(-1)
        if labels is None:
            return None, predictions
        weight = None if self.class_weight is None else self.class_weight.to(logits.device)
        return F.cross_entropy(logits, labels.long(), weight=weight, reduction="none"), predictions

    def start(self, labels, balanced):
        """With ``balanced``, weight the loss by inverse class frequency, n / (classes · n_c), as
        scikit-learn's class_weight="balanced": the weighted classes count equally."""
        if balanced:
            counts = torch.bincount(
                torch.tensor(labels, dtype=torch.long), minlength=self.out_features
            ).float()
            self.class_weight = counts.sum() / (len(counts) * counts.clamp(min=1.0))

    def fit_probe(self, x, y, balanced, seed):
        from .probe import fit_logistic

        return fit_logistic(self, x, y.astype(int), balanced, seed)


class MLPClassificationHead(ClassificationHead):
    """Class logits through one hidden layer (Linear, GELU, LayerNorm, then the linear map), the answer
    head of LXMERT and VisualBERT. A linear head cannot read whether two things the pooled vector holds
    are equal (is the question's colour the image's?); this one can, so training has a reason to keep
    both. No linear-probe start."""

    def __init__(self, in_features: int, task):
        super().__init__(2 * in_features, task)
        self.hidden = nn.Linear(in_features, 2 * in_features)
        self.norm = nn.LayerNorm(2 * in_features)

    def logits(self, features):
        return super().logits(self.norm(F.gelu(self.hidden(features))))

    def fit_probe(self, x, y, balanced, seed):
        return None


class RegressionHead(nn.Linear, TaskHead):
    """One output predicting label / REGRESSION_SCALE; mean squared error."""

    def __init__(self, in_features: int, task):
        nn.Linear.__init__(self, in_features, 1)

    def forward(self, features, labels=None):
        scores = nn.Linear.forward(self, features).squeeze(-1)
        predictions = scores.detach() * REGRESSION_SCALE
        if labels is None:
            return None, predictions
        return F.mse_loss(scores, labels / REGRESSION_SCALE, reduction="none"), predictions

    def start(self, labels, balanced):
        """Start the output at the mean training label: from an output near 0, far below every STS-B
        label, the first steps fit the offset along the mean feature, which for pairs follows |u-v|, so
        the scores come out anti-correlated with the labels for many steps."""
        with torch.no_grad():
            self.bias.fill_(sum(labels) / len(labels) / REGRESSION_SCALE)

    def fit_probe(self, x, y, balanced, seed):
        from .probe import fit_ridge

        return fit_ridge(self, x, y / REGRESSION_SCALE)


class AnswerHead(nn.Linear, TaskHead):
    """Open-answer tasks (VQA) on an encoder: a linear classifier over the answer vocabulary built from the
    training split. Labels are vocabulary indices; an answer outside it (index -1) gets no loss."""

    uses_vocabulary = True

    def __init__(self, in_features: int, task, vocabulary):
        nn.Linear.__init__(self, in_features, len(vocabulary))
        self.vocabulary = tuple(vocabulary)

    def forward(self, features, labels=None):
        logits = nn.Linear.forward(self, features)
        predictions = logits.argmax(-1)
        if labels is None:
            return None, predictions
        return F.cross_entropy(logits, labels.long(), ignore_index=-1, reduction="none"), predictions

    def fit_probe(self, x, y, balanced, seed):
        from .probe import fit_answer_probe

        return fit_answer_probe(self, x, y.astype(int), balanced, seed)


_HEADS: dict[str, type] = {}


def register_head(name: str, cls: type) -> None:
    """Make a head kind available to ``heads.kinds`` by name; each name is registered once."""
    if name in _HEADS:
        raise ValueError(f"head kind '{name}' is already registered")
    _HEADS[name] = cls


def head_kinds() -> list[str]:
    return sorted(_HEADS)


def head_kind(head: TaskHead) -> str:
    """The name a head's kind is registered under."""
    return next(name for name, cls in _HEADS.items() if type(head) is cls)


register_head("classification", ClassificationHead)
register_head("classification-mlp", MLPClassificationHead)
register_head("regression", RegressionHead)
register_head("answer", AnswerHead)


def default_kind(task) -> str:
    if task.kind == "answer":
        return "answer"
    if task.is_open:
        raise UserError(f"task '{task.name}' answers in free text ({task.kind}); encoder backbones have no "
                        f"head for it yet: use a text-to-text backbone (T5)")
    return "regression" if task.is_regression else "classification"


def _build_head(cls: type, width: int, task, vocabularies: dict):
    if not getattr(cls, "uses_vocabulary", False):
        return cls(width, task)
    vocabulary = vocabularies.get(task.name)
    if not vocabulary:
        raise UserError(f"task '{task.name}' answers in free text: an encoder's answer head needs the task's "
                        f"answer vocabulary (the trainer builds it from the training split)")
    return cls(width, task, vocabulary)


class TaskHeads(nn.Module):
    """One head per task on the pooled encoder output (or, for separately encoded pairs, on what
    ``pair_head`` reads of the two texts: see ``features.PAIR_READERS``)."""

    def __init__(self, d_model: int, tasks: list, separate_pairs: list[bool], pair_head: str = "features",
                 kinds: dict[str, str] | None = None, vocabularies: dict[str, list[str]] | None = None):
        super().__init__()
        self.separate_pairs, self.pair_head = separate_pairs, pair_head
        read_pair, pair_width = PAIR_READERS[pair_head]
        self.read_pair, self.d_model, self.pair_width = read_pair, d_model, pair_width
        kinds, vocabularies = kinds or {}, vocabularies or {}
        self.heads = nn.ModuleList(
            _build_head(_HEADS[kinds.get(task.name) or default_kind(task)],
                        pair_width(d_model) if pair else d_model, task, vocabularies)
            for task, pair in zip(tasks, separate_pairs)
        )

    def add(self, task, separate_pair: bool, kind: str | None = None, vocabulary=None) -> TaskHead:
        """A head for one more task, last (a task served after training); returns it."""
        width = self.pair_width(self.d_model) if separate_pair else self.d_model
        head = _build_head(_HEADS[kind or default_kind(task)], width, task, {task.name: vocabulary})
        self.heads.append(head)
        self.separate_pairs = [*self.separate_pairs, separate_pair]
        return head

    def features(self, task: int, a: Encoded, b: Encoded | None) -> torch.Tensor:
        """What the task's head reads."""
        return self.read_pair(a, b) if self.separate_pairs[task] else a.pooled

    def forward(self, a: Encoded, b: Encoded | None, task_ids: torch.Tensor, labels):
        """Mean loss over the batch (None without labels) and per-example predictions."""
        losses = a.pooled.new_zeros(len(task_ids))
        predictions = a.pooled.new_zeros(len(task_ids))
        for task in task_ids.unique().tolist():
            rows = (task_ids == task).nonzero(as_tuple=True)[0]
            features = self.features(task, a.rows(rows), None if b is None else b.rows(rows))
            task_losses, task_predictions = self.heads[task](
                features, None if labels is None else labels[rows]
            )
            predictions[rows] = task_predictions.to(predictions.dtype)
            if task_losses is not None:
                losses[rows] = task_losses
        return (losses.mean() if labels is not None else None), predictions
