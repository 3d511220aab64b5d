"""The batcher: a queue of prepared instances and one inference thread that answers them in batches.

A batch opens with the oldest waiting item and closes when it holds ``max_batch_size`` items, when one
more would pass ``max_batch_tokens`` (items × longest), or ``max_wait_s`` after its first item arrived.
``batching`` says which items may share a batch: "mixed" (any tasks, in arrival order), "by-task" (only
the first item's task) or "off" (one item per forward). Items whose request has timed out or was given
up (its future cancelled) are dropped before compute; a batch that fails is retried one item at a time, so
only the items that fail alone fail. If anything escapes the inference thread's loop, the thread dies:
every waiting item gets 503 at once, later submits too, and ``on_death(reason)`` is called.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from .engine import Prepared, RequestError

BATCHING = ("mixed", "by-task", "off")
log = logging.getLogger("hyperpelt.serve")


def queue_full(queued: int, max_queue: int) -> RequestError:
    return RequestError(429, "queue_full", f"the queue holds {queued} of {max_queue} instances; retry "
                        "shortly", headers={"Retry-After": "1"})


def answer_batch(run, batch: list[Prepared]) -> list:
    """``run``'s answers to a batch; if the batch fails, each item is run alone, and an item that fails
    alone gets a 500 ``RequestError`` in place of its answer."""
    try:
        return run(batch)
    except Exception:  # noqa: BLE001 - any failure of the model: retry item by item
        pass
    answers = []
    for prepared in batch:
        try:
            answers.append(run([prepared])[0])
        except Exception as err:  # noqa: BLE001
            reason = " ".join(str(err).split()) or type(err).__name__
            message = f"the model failed on this instance: {reason}"
            answers.append(RequestError(500, "inference_failed", message))
    return answers


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None elsewhere (looking the C library up runs ``ldconfig``: once)."""
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing):
    batches of every shape leave freed activations in the heap, counted in the server's resident set."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def by_task_and_length(batch: list[Prepared]) -> list[int]:
    """The order that runs a batch's items grouped by task, shortest first within a task."""
    return sorted(range(len(batch)), key=lambda i: (batch[i].task_id, batch[i].length))


@dataclass
class Item:
    prepared: Prepared
    deadline: float
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class Batcher:
    """Feeds an engine's ``run`` from a bounded queue on its own thread; ``submit`` is thread-safe."""

    def __init__(self, run, max_batch_size: int = 16, max_batch_tokens: int = 4096, max_wait_s: float = 0.005,
                 batching: str = "mixed", max_queue: int = 256, observer=None, idle_release_s: float = 1.0,
                 on_death=None):
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        self.run, self.batching, self.max_queue = run, batching, max_queue
        self.max_batch_size = 1 if batching == "off" else max_batch_size
        self.max_batch_tokens, self.max_wait_s = max_batch_tokens, max_wait_s
        self.observer = observer  # gets batch_done(items, seconds) and queue_depth(n)
        self.idle_release_s = idle_release_s  # idle this long after batches: free memory goes back
        self.on_death = on_death  # called with the reason if the inference thread dies
        self.death: str | None = None  # why the inference thread died, once it has
        self._released = True  # no batch since memory was last given back
        self._queue: deque[Item] = deque()
        self._cond = threading.Condition()
        self._busy: list[Item] = []  # items taken off the queue and not yet answered
        self._closed = self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="hyperpelt-inference", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def submit(self, prepared: list[Prepared], timeout_s: float) -> list[Future]:
        """Queue a request's items (all or none): 503 once closed or dead, 429 when the queue is full.
        Cancelling an item's future takes it off the queue."""
        deadline = time.monotonic() + timeout_s
        items = [Item(p, deadline) for p in prepared]
        with self._cond:
            if self.death is not None:
                raise self.dead_error()
            if self._closed:
                raise RequestError(503, "draining", "the server is shutting down")
            if len(self._queue) + len(items) > self.max_queue:
                raise queue_full(len(self._queue), self.max_queue)
            self._queue.extend(items)
            self._observe_depth()
            self._cond.notify()
        for item in items:
            item.future.add_done_callback(functools.partial(self._forget, item))
        return [item.future for item in items]

    def dead_error(self) -> RequestError:
        return RequestError(503, "worker_died", f"the inference worker died: {self.death}")

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        with self._cond:
            return len(self._queue)

    @property
    def pending(self) -> int:
        """Items queued or being answered."""
        with self._cond:
            return len(self._queue) + len(self._busy)

    def close(self) -> None:
        """Refuse new items; those already queued are still answered."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def stop(self, timeout_s: float | None = None) -> None:
        """Close, answer what is queued, and end the inference thread."""
        with self._cond:
            self._closed = self._stopped = True
            self._cond.notify()
        self._thread.join(timeout_s)

    def _forget(self, item: Item, future: Future) -> None:
        """A cancelled item leaves the queue at once, so it holds no room there."""
        if future.cancelled():
            with self._cond:
                if item in self._queue:
                    self._queue.remove(item)
                    self._observe_depth()

    # ------------------------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if not batch:  # idle since the last batch
                    release_free_memory()
                    self._released = True
                    continue
                self._released = False
                self._answer(batch)
        except BaseException as err:  # noqa: BLE001 - whatever kills the thread: answer everyone, report it
            self._die(" ".join(str(err).split()) or type(err).__name__)

    def _die(self, reason: str) -> None:
        log.error("the inference worker died: %s", reason)
        with self._cond:
            self.death, self._closed = reason, True
            busy, queued, self._busy = self._busy, list(self._queue), []
            self._queue.clear()
            self._observe_depth()
        for item in busy:  # running: cannot be cancelled any more; some may be answered already
            if not item.future.done():
                item.future.set_exception(self.dead_error())
        for item in queued:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(self.dead_error())
        if self.on_death is not None:
            self.on_death(reason)

    def _next_batch(self) -> list[Item] | None:
        """The next batch; None once stopped; [] when idle for ``idle_release_s`` after a batch."""
        with self._cond:
            chosen = []
            while not chosen:
                while not self._queue:
                    if self._stopped:
                        return None
                    if not self._cond.wait(None if self._released else self.idle_release_s) \
                            and not self._queue:
                        return []
                chosen = self._take()
            self._busy = chosen
            self._observe_depth()
        return chosen

    def _take(self) -> list[Item]:
        """(Holding the lock) the batch that the oldest item opens, taken off the queue once it is full,
        due or the batcher closed; [] if its items were given up meanwhile."""
        close_at = self._queue[0].arrived + self.max_wait_s
        while True:
            chosen, full = self._choose()
            wait = close_at - time.monotonic()
            if full or wait <= 0 or self._closed:
                break
            self._cond.wait(wait)
            if not self._queue:  # every item was cancelled while the batch waited
                return []
        for item in chosen:
            self._queue.remove(item)
        # from here on a future cannot be cancelled; one cancelled already is dropped
        return [item for item in chosen if item.future.set_running_or_notify_cancel()]

    def _choose(self) -> tuple[list[Item], bool]:
        """The items the next batch would take now, and whether it is full."""
        first_task = self._queue[0].prepared.task_id
        chosen, longest = [], 0
        for item in self._queue:
            if self.batching == "by-task" and item.prepared.task_id != first_task:
                continue
            length = max(longest, item.prepared.length)
            if chosen and (len(chosen) + 1) * length > self.max_batch_tokens:
                return chosen, True
            chosen.append(item)
            longest = length
            if len(chosen) == self.max_batch_size:
                return chosen, True
        return chosen, False

    def _answer(self, batch: list[Item]) -> None:
        now = time.monotonic()
        late = [item for item in batch if item.deadline < now]
        for item in late:
            item.future.set_exception(RequestError(504, "timeout", "the request waited past its timeout"))
        batch = [i for i in batch if i.deadline >= now]
        batch = [batch[i] for i in by_task_and_length([item.prepared for item in batch])]
        if batch:
            self._compute(batch)
        with self._cond:  # not on an escaping exception: the thread dies and answers these items 503
            self._busy = []

    def _compute(self, batch: list[Item]) -> None:
        start = time.monotonic()
        answers = answer_batch(self.run, [item.prepared for item in batch])
        if self.observer is not None:
            self.observer.batch_done([item.arrived for item in batch], start, time.monotonic(),
                                     len({item.prepared.task_id for item in batch}))
        for item, answer in zip(batch, answers):
            if isinstance(answer, Exception):
                item.future.set_exception(answer)
            else:
                item.future.set_result(answer)

    def _observe_depth(self) -> None:
        if self.observer is not None:
            self.observer.queue_depth(len(self._queue))
