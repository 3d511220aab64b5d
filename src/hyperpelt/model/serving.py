"""What a server asks of a ``TunedModel`` beyond predicting: a weight cache within a byte budget, fed by
task embeddings from elsewhere (a task store), tasks added after training, and each task's trained parts."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..heads import head_kind
from ..methods import CacheStats, WeightTable


class Serving:
    """``TunedModel``'s serving methods (it inherits them)."""

    def serve_weights(self, budget_bytes: int | None,
                      embeddings_of: Callable[[list[int]], torch.Tensor] | None = None) -> None:
        """Keep the generated weights of at most ``budget_bytes`` of tasks (None: no bound); with
        ``embeddings_of`` (task ids -> their embeddings, [M, *row shape]) a task's weights are generated
        from the embedding it gives rather than from the method's own rows, which training uses."""
        if embeddings_of is not None and self.method.task_embedding_name is None:
            raise ValueError(f"method '{self.method.name}' has no task embedding to generate weights from")
        self.weight_table = WeightTable(self.method, budget_bytes, embeddings_of)

    @property
    def weight_cache_stats(self) -> CacheStats:
        """Hits, misses, evictions, generation time, and the tasks and bytes cached now."""
        return self.weight_table.stats

    def task_embeddings(self) -> torch.Tensor | None:
        """The method's trained task embedding, a row per task of the run (None for a method without one)."""
        name = self.method.task_embedding_name
        return None if name is None else getattr(self.method, name).detach()

    def task_head(self, index: int) -> tuple[str | None, dict | None]:
        """A task's head: its kind and its tensors (None, None on a text-to-text backbone)."""
        if self.heads is None:
            return None, None
        head = self.heads.heads[index]
        return head_kind(head), {name: t.detach() for name, t in head.state_dict().items()}

    def add_task(self, task, head: dict | None = None, kind: str | None = None,
                 answers: list[str] | None = None) -> int:
        """Serve one more task, after the run's (its id returned): on an encoder its head of ``kind`` holds
        the tensors ``head`` and, for an open-answer task, classifies over ``answers``. Its prefixes and
        adapters come from its embedding (``serve_weights``' ``embeddings_of``)."""
        if self.heads is not None:
            if answers is not None:
                self.answer_vocabularies[task.name] = list(answers)
            separate = self.heads_config.pair_encoding == "separate" and len(task.input_fields) > 1
            module = self.heads.add(task, separate, kind, answers)
            if head is not None:
                module.load_state_dict(head)
            module.to(self.device).eval()
        self.tasks.append(task)
        return len(self.tasks) - 1

    def forget_task(self, index: int) -> None:
        """Stop serving task ``index`` (added by ``add_task``): its generated weights leave the cache. Its id
        is not reused; its head (a few KB, on an encoder) stays in the model."""
        self.weight_table.drop(index)
