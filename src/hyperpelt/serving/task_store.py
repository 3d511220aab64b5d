"""The task store: every task a served model knows, a row each in an SQLite file.

A row holds what serving a task needs (its name, kind, input fields, labels or answer vocabulary,
metrics), its task embedding (the bytes of a float32 tensor and its shape), its head's tensors where the
backbone needs one (safetensors bytes), how it was made (which run, which examples: a hash and k, when)
and a status: "ready", "training" or "failed". Only ready rows are served.

Every write is one transaction (``synchronous=FULL``, WAL journal): a crash loses no row written before
it. A store belongs to one run (its name and its checkpoint's hash): the first opening for the run writes
the run's own tasks as its first rows, in the transaction that creates it. Each thread reads through a
connection of its own.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .task_rows import FIELDS, TaskEntry, TaskRow, embedding_bytes, head_bytes, metric_name, row_of

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1
APPLICATION_ID = 0x4850_5453  # "HPTS": a hyperpelt task store
STATUSES = ("ready", "training", "failed")
SCHEMA = f"""
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    inputs TEXT NOT NULL,           -- JSON [[shown, key], ...]
    labels TEXT,                    -- JSON [name, ...], or null for a score or an open answer
    answers TEXT,                   -- JSON [answer, ...]: an encoder's answer vocabulary, or null
    metrics TEXT NOT NULL,          -- JSON [metric name, ...]
    prefix TEXT NOT NULL,
    round_scores INTEGER NOT NULL,
    head_kind TEXT,                 -- the head's kind (heads.task_heads), null without a head
    run TEXT NOT NULL,
    examples_hash TEXT,             -- null for the run's own tasks
    k INTEGER,
    created TEXT NOT NULL,          -- ISO 8601, UTC
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    score REAL,
    detail TEXT,
    embedding BLOB,                 -- float32, C order, or null for a method without task embeddings
    embedding_shape TEXT,           -- JSON [sizes]
    head BLOB                       -- safetensors
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""
COLUMNS = (*FIELDS, "embedding", "embedding_shape", "head")


class TaskStore:
    """The task store at ``path`` (see the module's doc); ``open`` creates or checks it for a run."""

    def __init__(self, path: str | Path, run: str):
        self.path, self.run = Path(path), run
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, run: str, checkpoint: str, run_entries) -> TaskStore:
        """The store at ``path`` for run ``run`` whose checkpoint hashes to ``checkpoint``: created if new,
        with ``run_entries()`` (a list of ``TaskEntry``) as its first rows, in one transaction; a store of
        another run or checkpoint, or a file that is no task store, is a UserError naming the file."""
        store = cls(path, run)
        with store._transaction() as db:
            if not store._check(db):
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.executemany("INSERT INTO meta VALUES (?, ?)", [("run", run), ("checkpoint", checkpoint)])
                for entry in run_entries():
                    store._insert(db, entry)
            meta = dict(db.execute("SELECT key, value FROM meta"))
        if (meta.get("run"), meta.get("checkpoint")) != (run, checkpoint):
            raise UserError(f"{store.path}: the task store of run '{meta.get('run')}' (checkpoint "
                            f"{str(meta.get('checkpoint'))[:12]}), not of run '{run}' (checkpoint "
                            f"{checkpoint[:12]}); name another with --task-store")
        return store

    @classmethod
    def check_file(cls, path: str | Path) -> None:
        """Refuse (UserError) a file at ``path`` that is no task store; a missing or empty file passes."""
        if not Path(path).exists():
            return
        store = cls(path, "")
        try:
            store._check(store._db())
        finally:
            store.close()

    # ------------------------------------------------------------------------------------ connections

    def _db(self) -> sqlite3.Connection:
        """The calling thread's connection (autocommit: writes open their own transactions)."""
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.DatabaseError as err:
                raise self._refused(err) from None
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def _refused(self, err: sqlite3.Error) -> UserError:
        if isinstance(err, sqlite3.OperationalError) and "unable to open" in str(err):
            return UserError(f"{self.path}: cannot open the task store ({err}); name another with "
                             f"--task-store")
        return UserError(f"{self.path}: not a task store: not an SQLite file ({err})")

    @contextmanager
    def _transaction(self):
        """The calling thread's connection inside one transaction, committed unless an exception leaves it."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as err:
            raise self._refused(err) from None
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _check(self, db: sqlite3.Connection) -> bool:
        """Whether the file holds a store (False: it is empty); a UserError if it holds anything else."""
        try:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return False
            found = (db.execute("PRAGMA application_id").fetchone()[0],
                     db.execute("PRAGMA user_version").fetchone()[0],
                     tuple(row[1] for row in db.execute("PRAGMA table_info(tasks)")))
        except sqlite3.DatabaseError as err:
            raise self._refused(err) from None
        if found != (APPLICATION_ID, SCHEMA_VERSION, COLUMNS) or "meta" not in tables:
            raise UserError(f"{self.path}: not a task store of schema {SCHEMA_VERSION} (an SQLite file with "
                            f"other tables or columns); name another with --task-store")
        return True

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # ------------------------------------------------------------------------------------ writes

    def _insert(self, db: sqlite3.Connection, entry: TaskEntry) -> int:
        task = entry.task
        if entry.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {entry.status!r}")
        embedding, shape = embedding_bytes(entry.embedding)
        values = {
            "name": task.name, "kind": task.kind, "inputs": json.dumps([list(f) for f in task.input_fields]),
            "labels": None if task.label_names is None else json.dumps(list(task.label_names)),
            "answers": None if entry.answers is None else json.dumps(list(entry.answers)),
            "metrics": json.dumps([metric_name(m) for m in task.metrics]), "prefix": task.prefix,
            "round_scores": int(task.round_scores), "head_kind": entry.head_kind, "run": self.run,
            "examples_hash": entry.examples_hash, "k": entry.k,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": entry.status,
            "score": entry.score, "detail": None, "embedding": embedding, "embedding_shape": shape,
            "head": head_bytes(entry.head)}
        try:
            cursor = db.execute(f"INSERT INTO tasks ({', '.join(values)}) VALUES "
                                f"({', '.join('?' * len(values))})", list(values.values()))
        except sqlite3.IntegrityError:
            raise UserError(f"{self.path}: a task named '{task.name}' is in the store already") from None
        return cursor.lastrowid

    def add(self, entry: TaskEntry) -> TaskRow:
        """Write a new row (one transaction); a name the store holds already is a UserError."""
        with self._transaction() as db:
            key = self._insert(db, entry)
        return self.row(key)

    def update(self, name: str, status: str, score: float | None = None, embedding=None,
               head: dict | None = None, detail: str | None = None, head_kind: str | None = None) -> TaskRow:
        """Set a row's status (and its score, detail, and trained embedding and head, of ``head_kind``, where
        given), in one transaction: how a task in training becomes ready or failed."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        changes = {"status": status, "score": score, "detail": detail}
        if embedding is not None:
            changes["embedding"], changes["embedding_shape"] = embedding_bytes(embedding)
        if head is not None:
            changes["head"], changes["head_kind"] = head_bytes(head), head_kind
        with self._transaction() as db:
            cursor = db.execute(f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in changes)} WHERE name = ?",
                                [*changes.values(), name])
        if not cursor.rowcount:
            raise UserError(f"{self.path}: no task named '{name}'")
        return self.find(name, ready_only=False)

    def remove(self, name: str) -> bool:
        """Delete a row (one transaction); whether there was one."""
        with self._transaction() as db:
            return db.execute("DELETE FROM tasks WHERE name = ?", (name,)).rowcount > 0

    # ------------------------------------------------------------------------------------ reads

    def _rows(self, where: str, args=()) -> list[TaskRow]:
        cursor = self._db().execute(f"SELECT {', '.join(FIELDS)} FROM tasks WHERE {where} ORDER BY id", args)
        return [row_of(values) for values in cursor]

    def rows(self, status: str | None = "ready") -> list[TaskRow]:
        """Every row of ``status`` (None: all), in the order they were written."""
        return self._rows("1") if status is None else self._rows("status = ?", (status,))

    def find(self, name: str, ready_only: bool = True) -> TaskRow | None:
        """The row named ``name`` (with ``ready_only``, only if it is ready), or None (also for a name that
        is no Unicode text, such as a client's lone surrogate: SQLite cannot take it, and no row has it)."""
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            return None
        rows = self._rows("name = ?" + (" AND status = 'ready'" if ready_only else ""), (name,))
        return rows[0] if rows else None

    def row(self, key: int) -> TaskRow | None:
        """The row with id ``key``, whatever its status, or None."""
        rows = self._rows("id = ?", (key,))
        return rows[0] if rows else None

    def embeddings(self, keys: list[int]) -> torch.Tensor:
        """The task embeddings of rows ``keys``, stacked in that order: [len(keys), *shape], float32."""
        import torch

        marks = ", ".join("?" * len(keys))
        found = {key: (blob, shape) for key, blob, shape in self._db().execute(
            f"SELECT id, embedding, embedding_shape FROM tasks WHERE id IN ({marks})", keys)}
        missing = [key for key in keys if found.get(key, (None,))[0] is None]
        if missing:
            raise UserError(f"{self.path}: task row {missing[0]} has no embedding (or is gone)")
        return torch.stack([torch.frombuffer(bytearray(found[key][0]), dtype=torch.float32)
                            .reshape(json.loads(found[key][1])) for key in keys])

    def head(self, key: int) -> dict | None:
        """The head's tensors of row ``key`` (None without a head)."""
        from safetensors.torch import load

        found = self._db().execute("SELECT head FROM tasks WHERE id = ?", (key,)).fetchone()
        return None if found is None or found[0] is None else load(found[0])
