"""A task store's rows: what a row says of a task (``TaskRow``), what writing one takes (``TaskEntry``),
and how their fields and tensors become SQLite values and back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError
from ..tasks.metrics import BY_NAME
from ..tasks.registry import Task

if TYPE_CHECKING:
    import torch

FIELDS = ("id", "name", "kind", "inputs", "labels", "answers", "metrics", "prefix", "round_scores",
          "head_kind", "run", "examples_hash", "k", "created", "status", "score", "detail")


@dataclass(frozen=True)
class TaskRow:
    """A task as the store holds it, without its tensors (``TaskStore.embeddings``, ``TaskStore.head``)."""

    id: int
    name: str
    kind: str
    inputs: tuple[tuple[str, str], ...]
    labels: tuple[str, ...] | None
    answers: tuple[str, ...] | None
    metrics: tuple[str, ...]
    prefix: str
    round_scores: bool
    head_kind: str | None
    run: str
    examples_hash: str | None
    k: int | None
    created: str
    status: str
    score: float | None
    detail: str | None

    @property
    def of_the_run(self) -> bool:
        """Trained with the run (one of its own tasks), not learned later from examples."""
        return self.examples_hash is None

    def task(self) -> Task:
        """The task this row declares, as serving reads it."""
        unknown = [name for name in self.metrics if name not in BY_NAME]
        if unknown:
            raise UserError(f"task store row '{self.name}': unknown metric '{unknown[0]}'")
        return Task(self.name, self.inputs, self.labels, tuple(BY_NAME[m][0] for m in self.metrics),
                    prefix=self.prefix, kind=self.kind, round_scores=self.round_scores)


@dataclass
class TaskEntry:
    """A task to write: its declaration (``task``) and what was trained for it."""

    task: Task
    embedding: torch.Tensor | None = None
    head: dict | None = None  # the head's state dict
    head_kind: str | None = None
    answers: list[str] | None = None
    examples_hash: str | None = None
    k: int | None = None
    status: str = "training"
    score: float | None = None


def metric_name(metric) -> str:
    return next((name for name, (function, _) in BY_NAME.items() if function is metric), metric.__name__)


def embedding_bytes(embedding) -> tuple[bytes | None, str | None]:
    import torch

    if embedding is None:
        return None, None
    array = embedding.detach().to("cpu", torch.float32).contiguous()
    return array.numpy().tobytes(), json.dumps(list(array.shape))


def head_bytes(head: dict | None) -> bytes | None:
    from safetensors.torch import save

    return None if head is None else save({k: v.detach().cpu().contiguous() for k, v in head.items()})



def row_of(values: tuple) -> TaskRow:
    fields = dict(zip(FIELDS, values))
    listed = {key: None if fields[key] is None else tuple(json.loads(fields[key]))
              for key in ("labels", "answers", "metrics")}
    inputs = tuple(tuple(pair) for pair in json.loads(fields["inputs"]))
    return TaskRow(**{**fields, **listed, "inputs": inputs, "round_scores": bool(fields["round_scores"])})
