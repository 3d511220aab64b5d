"""The one background worker that trains the tasks added while serving, a task at a time, in a thread of
its own with its own torch thread budget; serving goes on meanwhile.

A task's row is written first, in status "training" (one transaction); the worker learns the task
(``experiments.learn_task``) on models of its own, built from the run's checkpoint over one host it loads
once and lends to each (its weights shared read-only), so it never touches the served model's weights. The
row then becomes "ready" with the embedding, head and held-out score (one transaction), or "failed" with a
detail; the served side reads ready rows per request, and learns a new one between batches. A row deleted
while its task waits or trains is left deleted.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from ..errors import UserError
from .engine import RequestError
from .new_task import NewTask
from .task_store import TaskEntry, TaskRow, TaskStore

log = logging.getLogger("hyperpelt.serve")


def add_row(store: TaskStore, new: NewTask) -> TaskRow:
    """Write the new task's row, in training; a name the store holds is a 409."""
    entry = TaskEntry(new.task, examples_hash=new.examples_hash, k=len(new.examples), status="training")
    try:
        return store.add(entry)
    except UserError:
        raise RequestError(409, "duplicate_task", f"a task named '{new.task.name}' is in the task store "
                           "already (DELETE /v1/tasks/{name} removes an added one)") from None


def train_row(store: TaskStore, row: TaskRow, new: NewTask, run_dir: Path, steps: int | None, hosts=None,
              trust_remote_code: bool = False) -> TaskRow | None:
    """Learn the task of ``row`` (in training) for ``steps`` steps (None: the trainer's default) and make
    it ready, or failed with the error as its detail (then raised again); None if the row was deleted
    meanwhile."""
    from ..experiments.learn_task import DEFAULT_STEPS, learn_task

    try:
        learned = learn_task(run_dir, new.declaration, new.examples, new.seed, steps or DEFAULT_STEPS, hosts,
                             trust_remote_code)
    except Exception as err:
        if _still(store, row):
            store.update(row.name, "failed", detail=" ".join(str(err).split()) or type(err).__name__)
        raise
    if not _still(store, row):
        return None
    return store.update(row.name, "ready", learned.score, learned.embedding, learned.head,
                        detail=f"started from task '{learned.source}'; trained on {learned.trained_on} "
                        f"examples, scored on {learned.held_out} held out; {learned.seconds:.1f} s",
                        head_kind=learned.head_kind)


def _still(store: TaskStore, row: TaskRow) -> bool:
    found = store.find(row.name, ready_only=False)
    return found is not None and found.id == row.id


class TaskWorker:
    """Trains the tasks ``submit`` adds to ``store``, one at a time, on a thread with ``threads`` torch
    threads; at most ``max_pending`` tasks wait or train (429 past it)."""

    def __init__(self, run_dir: Path, store: TaskStore, threads: int, steps: int, max_pending: int,
                 trust_remote_code: bool = False):
        self.run_dir, self.store, self.threads, self.steps = Path(run_dir), store, threads, steps
        self.max_pending, self.trust_remote_code = max_pending, trust_remote_code
        self.pending = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def submit(self, new: NewTask) -> TaskRow:
        """Write the task's row (in training) and queue its training; 409 for a name the store holds, 429
        when ``max_pending`` tasks wait or train."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise RequestError(429, "training_queue_full", f"{self.pending} tasks are waiting or "
                                   "training; retry once one is ready", headers={"Retry-After": "10"})
            row = add_row(self.store, new)
            self.pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="hyperpelt-tasks", daemon=True)
                self._thread.start()
        self._queue.put((row, new))
        return row

    def _work(self) -> None:
        import torch

        from ..transfer import SharedHosts

        torch.set_num_threads(self.threads)  # this thread's budget (OpenMP's is per thread)
        hosts = SharedHosts()
        while True:
            row, new = self._queue.get()
            try:
                if _still(self.store, row):
                    train_row(self.store, row, new, self.run_dir, self.steps, hosts, self.trust_remote_code)
            except Exception as err:  # noqa: BLE001 - the row says it failed; the worker goes on
                log.warning("training task '%s' failed: %s", row.name, err)
            finally:
                with self._lock:
                    self.pending -= 1
