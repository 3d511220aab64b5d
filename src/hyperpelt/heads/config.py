"""The ``heads:`` config section: how encoder backbones read their output for each task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import UserError
from ..options import changed_fields
from .task_heads import head_kinds


@dataclass
class HeadsConfig:
    """Options of the task heads of encoder backbones; text-to-text backbones (T5) have no heads, and
    setting any of these for one is an error."""

    pair_encoding: Literal["cross", "separate"] = "cross"
    """Tasks with two texts: cross (one sequence, [CLS] a [SEP] b) or separate (each text encoded alone, as
    sentence-embedding models were trained; ``pair_head`` says what the head reads). Default cross."""
    pair_head: Literal["features", "cosine", "alignment"] = "features"
    """Separately encoded pairs: the head reads features ([u, v, |u-v|, u*v] of the pooled outputs), cosine
    (cos(u, v) alone) or alignment (that cosine with BERTScore-style token-matching precision and recall).
    Default features."""
    pooling: Literal["mean", "first"] = "mean"
    """What a head reads of a text: the mean of the last hidden states over its tokens, or the first token
    ([CLS]). Default mean."""
    normalize_pooled: bool = False
    """Scale the pooled output to unit length (times sqrt(d_model)), as sentence-embedding models
    normalise. Default false."""
    kinds: dict = field(default_factory=dict)
    """Head kind per task name ({task: kind}), from the registered kinds; default: classification for tasks
    with label names, regression for scored tasks."""
    probe_examples: int = 0
    """Before training, fit each head as a linear probe on this many training examples of its task
    (linear-probe start, LP-FT); 0 keeps the random start. Default 0."""
    probe_examples_by_task: dict = field(default_factory=dict)
    """Probe examples per task ({task: n}), replacing probe_examples for the tasks named; names outside
    data.tasks are ignored, so a recipe stays valid when data.tasks is overridden. Default {}."""
    learning_rate: float | None = None
    """Learning rate of the heads, which start new; null uses train.learning_rate. Default null."""
    balanced_classes: list[str] = field(default_factory=list)
    """Classification tasks whose loss weights each class by inverse training frequency (scikit-learn's
    "balanced"), e.g. a skewed task scored by Matthews correlation. Default []."""
    answer_min_count: int = 1
    """Open-answer tasks (VQA): the answer head's vocabulary keeps the training answers seen at least this
    many times (VL-T5 and LXMERT keep those seen 9 times in VQA); other answers get no loss. Default 1."""

    def __post_init__(self):
        if self.probe_examples < 0:
            raise UserError("heads.probe_examples must be >= 0")
        if self.answer_min_count < 1:
            raise UserError("heads.answer_min_count must be >= 1")
        for task, count in self.probe_examples_by_task.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise UserError(
                    f"heads.probe_examples_by_task.{task} must be a whole number >= 0, got {count!r}"
                )
        for task, kind in self.kinds.items():
            if kind not in head_kinds():
                raise UserError(
                    f"heads.kinds.{task}: unknown head kind '{kind}'; known: {', '.join(head_kinds())}"
                )

    def check_tasks(self, known: list[str]) -> None:
        """Refuse a task name outside ``known`` (the run's task names) in probe_examples_by_task or kinds."""
        for key, tasks in (("heads.probe_examples_by_task", self.probe_examples_by_task),
                           ("heads.kinds", self.kinds)):
            unknown = [task for task in tasks if task not in known]
            if unknown:
                raise UserError(f"{key} names unknown task '{unknown[0]}'; known tasks: {', '.join(known)}")

    def probe_counts(self, tasks: list[str]) -> dict[str, int]:
        """Probe examples for each of ``tasks``."""
        return {task: self.probe_examples_by_task.get(task, self.probe_examples) for task in tasks}

    def check_applies(self, generative: bool, model_name: str) -> None:
        """Refuse head options for a text-to-text backbone, naming the first one set."""
        changed = changed_fields(self)
        if generative and changed:
            raise UserError(f"heads.{changed[0]} applies to encoder backbones with task heads, not to the "
                            f"text-to-text model {model_name}; leave the heads section out")
