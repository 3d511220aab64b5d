"""The tasks an engine serves: the task store's ready rows, the run's own tasks first, looked up per request.

A task is known to requests by its key: its row's id in the store (without a store, its index among the
model's tasks). ``find`` reads the store for every request, so a row that is added, made ready, or no
longer ready is served or refused from the next request on. The model learns a task (its head, on an
encoder) only on the inference thread (``model_task``), between batches; the weight cache reads each
task's embedding from its row on a miss, so thousands of tasks need not be held in memory.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from ..checkpoint import WEIGHTS
from .task_store import TaskEntry, TaskStore

STORE_NAME = "tasks.sqlite"  # the default store, beside the run


def run_entries(model) -> list[TaskEntry]:
    """The run's own tasks as a store's first rows: their trained embeddings and heads, ready."""
    embeddings = model.task_embeddings()
    entries = []
    for index, task in enumerate(model.tasks):
        kind, head = model.task_head(index)
        entries.append(TaskEntry(task, None if embeddings is None else embeddings[index], head, kind,
                                 model.answer_vocabularies.get(task.name), status="ready"))
    return entries


def checkpoint_hash(run_dir: Path) -> str:
    """The SHA-256 of the run's best weights: a store's rows fit them alone."""
    digest = hashlib.sha256()
    with open(run_dir / "best" / WEIGHTS, "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_run_store(path: str | Path | None, run_dir: Path, model) -> TaskStore:
    """The task store of a served run (by default ``RUN_DIR/tasks.sqlite``), created with the run's tasks."""
    run_dir = Path(run_dir)
    path = run_dir / STORE_NAME if path is None else Path(path)
    return TaskStore.open(path, run_dir.name, checkpoint_hash(run_dir), lambda: run_entries(model))


def fail_interrupted(store: TaskStore) -> list[str]:
    """Mark failed every row left in training (its trainer died with the server that ran it: a crash, a
    kill -9), so that it is never served; their names."""
    names = [row.name for row in store.rows("training")]
    for name in names:
        store.update(name, "failed", detail="interrupted: the server stopped while it trained")
    return names


class ServedTasks:
    """The tasks ``model`` serves from ``store`` (None: its own tasks, fixed). Rows other than the run's own
    are served only by methods with a task embedding, from which their weights are generated."""

    def __init__(self, model, store: TaskStore | None = None):
        self.model, self.store = model, store
        self.from_embeddings = store is not None and model.method.task_embedding_name is not None
        self._lock = threading.Lock()
        self._tasks: dict[int, object] = {}  # key -> its Task, built once per row
        self._model_ids: dict[int, int] = {}  # key -> the model's task id (inference thread)
        self._keys: list[int | None] = [None] * len(model.tasks)  # the model's task id -> key
        self._forgotten: set[int] = set()  # keys of rows deleted, to forget between batches
        for index, task in enumerate(model.tasks):
            row = None if store is None else store.find(task.name)
            key = index if store is None else None if row is None or not row.of_the_run else row.id
            if key is not None:
                self._tasks[key], self._model_ids[key], self._keys[index] = task, index, key
        self.run_keys = [key for key in self._keys if key is not None]  # the run's own tasks' keys

    def embeddings(self, task_ids: list[int]):
        """(Inference thread) the embeddings of the model's tasks ``task_ids``, read from their rows."""
        return self.store.embeddings([self._keys[i] for i in task_ids])

    # ------------------------------------------------------------------------------------ requests

    def find(self, name: str) -> tuple[int, object] | None:
        """(Any thread) the key and task of the ready task called ``name``, or None."""
        if self.store is None:
            names = self.model.task_names
            return (names.index(name), self.model.tasks[names.index(name)]) if name in names else None
        row = self.store.find(name)
        if row is None:
            return None
        task = self._tasks.get(row.id)
        if task is None:
            if not self.from_embeddings:
                return None  # a method without task embeddings serves its run's tasks alone
            with self._lock:
                task = self._tasks.setdefault(row.id, row.task())
        return row.id, task

    def tasks(self) -> list:
        """Every task served now, in the store's order."""
        if self.store is None:
            return list(self.model.tasks)
        return [self._tasks.get(row.id) or row.task() for row in self.store.rows()
                if row.id in self._tasks or self.from_embeddings]

    def names(self) -> list[str]:
        """The served tasks' names, read from the rows alone (no task is built: a refused request's message
        lists them, and a store may hold thousands)."""
        if self.store is None:
            return list(self.model.task_names)
        return [row.name for row in self.store.rows() if row.id in self._tasks or self.from_embeddings]

    def forget(self, key: int) -> None:
        """(Any thread) task ``key``'s row was deleted: forget it at the next batch (``drop_forgotten``)."""
        with self._lock:
            self._forgotten.add(key)

    def drop_forgotten(self) -> None:
        """(Inference thread, between batches) forget the deleted tasks: their keys, and their weights in
        the model's cache; a request for one is refused from now on."""
        with self._lock:
            keys, self._forgotten = self._forgotten, set()
            for key in keys:
                self._tasks.pop(key, None)
        for key in keys:
            index = self._model_ids.pop(key, None)
            if index is not None:
                self._keys[index] = None
                self.model.forget_task(index)

    def model_task(self, key: int) -> int:
        """(Inference thread, between batches) the model's task id of ``key``, the task added to the model
        (with its head) the first time."""
        index = self._model_ids.get(key)
        if index is None:
            row = self.store.row(key)
            if row is None:
                raise LookupError(f"task row {key} left the task store")
            task = self._tasks.get(key) or row.task()
            index = self.model.add_task(task, self.store.head(key), row.head_kind, row.answers)
            self._keys.append(key)
            self._model_ids[key] = index
        return index
