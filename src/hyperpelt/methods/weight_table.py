"""Inference without hypernetwork work per batch: the weights a method generates per task, kept in a cache
with a byte budget and generated on demand."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..inject import ConditioningState
from .base import Method

# on each parameter, once a table exists: the optimizer steps that held it
STEPS = "_hyperpelt_optimizer_steps"
_counting = False
MIN_SLOTS = 8  # the cache's first allocation, in tasks (it doubles as it fills, up to its budget)


def _count_step(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            setattr(param, STEPS, getattr(param, STEPS, 0) + 1)


def _count_optimizer_steps() -> None:
    global _counting
    if not _counting:
        register_optimizer_step_post_hook(_count_step)
        _counting = True


def method_version(method: Method) -> tuple:
    """The version of a method's weights: every step of an optimizer holding one of them may move them (a
    model trained beside, such as a new task's, does not), and whatever else writes them (a checkpoint
    load, a resume, ``load_state_dict``) bumps ``method.weights_version``."""
    return sum(getattr(param, STEPS, 0) for param in method.parameters()), method.weights_version


@dataclass
class CacheStats:
    """What the cache has done since it was made (the counts survive a rebuild)."""

    hits: int = 0  # a batch's tasks whose weights were cached
    misses: int = 0  # a batch's tasks whose weights were generated for it
    evictions: int = 0  # tasks dropped to stay within the budget
    generations: int = 0  # calls of the hypernetwork (one per batch with misses)
    generation_seconds: float = 0.0
    tasks: int = 0  # tasks cached now
    bytes: int = 0  # what their weights take now


def _per_task(weights):
    """The weights whose row tensors hold one row per task (shared weights serve every task as they are)."""
    return weights is not None and not weights.shared


def _row_tensors(prefix, adapters: dict) -> list[torch.Tensor]:
    """Every per-task row tensor of a set of weights, in a fixed order."""
    return [getattr(w, name) for w in (prefix, *adapters.values()) if _per_task(w)
            for name in w.row_fields if getattr(w, name) is not None]


def _mapped(prefix, adapters: dict, make: Callable[[torch.Tensor], torch.Tensor]):
    """(prefix, adapters) with ``make`` applied to each per-task row tensor."""
    def each(w):
        if not _per_task(w):
            return w
        return dataclasses.replace(w, **{name: make(getattr(w, name)) for name in w.row_fields
                                         if getattr(w, name) is not None})
    return each(prefix), {group: each(w) for group, w in adapters.items()}


class WeightTable:
    """The weights a method generates per task, kept for inference within ``budget_bytes`` (None: no bound).

    A batch's tasks that are not cached are generated together, in one call of the method: from the
    embeddings ``embeddings_of(task ids)`` gives (served tasks that are no rows of the method's
    parameter), else from the method's own rows (``condition``). Past the budget the least recently used
    tasks are evicted, never one the batch needs; a batch whose tasks alone pass the budget is answered
    from weights generated for it, and the cache keeps what fits. The cached weights lie in one tensor per
    weight, a row (slot) per task, so a batch takes views of its rows: any mix of cached tasks costs no
    hypernetwork work and no new memory. The cache is emptied after any method weight changes (see
    ``method_version``; moving or casting a model counts: ``TunedModel._apply``). It holds its tensors in
    the host's compute dtype (cast once, as they are generated).
    """

    def __init__(self, method: Method, budget_bytes: int | None = None,
                 embeddings_of: Callable[[list[int]], torch.Tensor] | None = None):
        _count_optimizer_steps()
        self.method, self.budget_bytes, self.embeddings_of = method, budget_bytes, embeddings_of
        self.version: tuple | None = None
        self.builds = 0  # times the cache was started on new method weights
        self.stats = CacheStats()
        self._empty()

    def _empty(self) -> None:
        self.prefix, self.adapters = None, {}  # [slots, ...] per weight, once a task was generated
        self.slots: OrderedDict[int, int] = OrderedDict()  # task id -> slot, least recently used first
        self.free: list[int] = []
        self.size = 0  # slots allocated
        self.task_bytes = 0  # one task's weights

    @property
    def capacity(self) -> float:
        """How many tasks fit in the budget."""
        if self.budget_bytes is None or not self.task_bytes:
            return math.inf
        return self.budget_bytes // self.task_bytes

    def condition(self, task_ids: torch.Tensor, state: ConditioningState,
                  dtype: torch.dtype = torch.float32) -> None:
        """Fill ``state`` for a batch, in ``dtype`` (the host's compute dtype): cached tasks as they are, the
        missing ones generated in one call; the cache is started afresh first if a method weight changed."""
        if self.version != method_version(self.method):
            self._empty()
            self.version, self.builds = method_version(self.method), self.builds + 1
        tasks = self.method.batch_tasks(task_ids, state)
        keys = tasks.tolist()
        missing = [key for key in keys if key not in self.slots]
        for key in keys:
            if key in self.slots:
                self.slots.move_to_end(key)
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        if missing and self.budget_bytes is None and self.embeddings_of is None:
            # unbounded, over the method's own tasks (training's evaluation, predict): all of them in one
            # call, as the table always was, so that no row's bits depend on which tasks a batch held
            missing = [key for key in range(self.method.num_tasks) if key not in self.slots]
        generated = self._generate(missing, tasks.device, dtype) if missing else None
        if missing:
            self._keep(missing, generated, set(keys))
        if all(key in self.slots for key in keys):
            slots = [self.slots[key] for key in keys]
            if state.rows is None:  # one task: its own row, and the plain-matmul path
                index = slice(slots[0], slots[0] + 1)
            else:  # each example reads the row of its task
                index, state.rows = None, torch.tensor(slots, device=tasks.device)[state.rows]
            state.prefix = None if self.prefix is None else self.prefix.task_rows(index)
            state.adapters = {group: w.task_rows(index) for group, w in self.adapters.items()}
        else:  # more tasks than the budget holds: the batch's own weights, rows as batch_tasks set them
            state.prefix, state.adapters = self._batch_weights(keys, missing, generated)
        self.stats.tasks, self.stats.bytes = len(self.slots), len(self.slots) * self.task_bytes

    def drop(self, key: int) -> None:
        """Forget task ``key``'s weights (a task no longer served); its slot is free again."""
        slot = self.slots.pop(key, None)
        if slot is not None:
            self.free.append(slot)
            self.stats.tasks, self.stats.bytes = len(self.slots), len(self.slots) * self.task_bytes

    def _generate(self, missing: list[int], device: torch.device, dtype: torch.dtype) -> tuple:
        """The weights of the ``missing`` tasks (sorted ids), one row each, from one call of the method."""
        start = time.perf_counter()
        scratch = ConditioningState()
        if self.embeddings_of is None:
            self.method.condition(torch.tensor(missing, device=device), scratch)
        else:
            self.method.condition_embeddings(self.embeddings_of(missing).to(device), scratch)
        if dtype != torch.float32:
            scratch.cast_weights(dtype)
        self.stats.generations += 1
        self.stats.generation_seconds += time.perf_counter() - start
        return scratch.prefix, dict(scratch.adapters)

    def _keep(self, missing: list[int], generated: tuple, needed: set[int]) -> None:
        """Cache as many of the generated tasks as the budget holds, evicting others than ``needed``."""
        if not self.task_bytes:
            self.task_bytes = sum(t[0].numel() * t.element_size() for t in _row_tensors(*generated))
        kept, rows = [], []
        for row, key in enumerate(missing):
            slot = self._free_slot(generated, needed)
            if slot is None:
                break
            self.slots[key] = slot
            kept.append(slot)
            rows.append(row)
        if kept:
            slots, rows = torch.tensor(kept), torch.tensor(rows)
            for cached, new in zip(_row_tensors(self.prefix, self.adapters), _row_tensors(*generated)):
                cached[slots.to(cached.device)] = new[rows.to(new.device)]
            self.prefix = generated[0] if not _per_task(generated[0]) else self.prefix
            self.adapters = {group: new if not _per_task(new) else self.adapters[group]
                             for group, new in generated[1].items()}

    def _free_slot(self, generated: tuple, needed: set[int]) -> int | None:
        """A slot for one more task: a free one, a new one within the budget, or the least recently used
        task's not ``needed`` by the batch; None when none is left."""
        if not self.free and self.size < self.capacity:
            self._grow(generated)
        if self.free:
            return self.free.pop()
        evicted = next((key for key in self.slots if key not in needed), None)
        if evicted is None:
            return None
        self.stats.evictions += 1
        return self.slots.pop(evicted)

    def _grow(self, generated: tuple) -> None:
        """Double the slots (at least MIN_SLOTS), within the budget; the cached rows are copied over."""
        size = int(min(self.capacity, max(2 * self.size, MIN_SLOTS)))
        old = _row_tensors(self.prefix, self.adapters) if self.size else []
        self.prefix, self.adapters = _mapped(*generated, lambda t: t.new_empty((size, *t.shape[1:])))
        for cached, new in zip(old, _row_tensors(self.prefix, self.adapters)):
            new[:self.size] = cached
        self.free += range(size - 1, self.size - 1, -1)  # popped from the end: lowest slots first
        self.size = size

    def _batch_weights(self, keys: list[int], missing: list[int], generated: tuple) -> tuple:
        """The batch's weights in one row per task (``keys``' order): cached rows copied, missing ones as
        generated."""
        new_keys = set(missing)
        cached = [(i, self.slots[key]) for i, key in enumerate(keys) if key not in new_keys]
        if not cached:
            return generated
        hit_rows = torch.tensor([i for i, _ in cached])
        slots = torch.tensor([slot for _, slot in cached])
        miss_rows = torch.tensor([i for i, key in enumerate(keys) if key in new_keys])
        parts = iter(_row_tensors(self.prefix, self.adapters))

        def combined(new: torch.Tensor) -> torch.Tensor:
            out = new.new_empty((len(keys), *new.shape[1:]))
            out[miss_rows.to(new.device)] = new
            out[hit_rows.to(new.device)] = next(parts)[slots.to(new.device)]
            return out

        return _mapped(*generated, combined)
