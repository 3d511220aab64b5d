"""A served run: its options, loading and warm-up on a thread of their own, readiness, and draining.

A request is admitted before any work is done for it (413 past ``max_client_batch`` instances, 429 when
the instances queued or being prepared would pass ``max_queue``), then its instances are prepared
(checked, tokenized, images decoded) on a pool of ``prepare_workers`` threads, never on the event loop,
queued and answered. Wherever it is, a request ends by ``request_timeout_s`` (504); what it left in the
queue is dropped, and an answer computed after that is ignored.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .batcher import Batcher, queue_full
from .engine import Engine, RequestError
from .metrics import ServerMetrics
from .settings import ServeOptions, load_engine
from .task_worker import TaskWorker


def task_worker(run_dir: Path, engine, options: ServeOptions) -> TaskWorker | None:
    """The worker that trains added tasks, for an engine serving a task store by task embeddings."""
    served = getattr(engine, "served", None)
    if served is None or not served.from_embeddings:
        return None
    return TaskWorker(run_dir, served.store, options.task_training_threads, options.task_training_steps,
                      options.max_tasks_training, options.trust_remote_code)


class Service:
    """One run being served: "loading", then "warming", then "ready"; "draining" after a stop signal;
    "failed" (with ``error``) when the run cannot be loaded or the inference worker died."""

    def __init__(self, run_dir: str | Path, options: ServeOptions, make_engine=None):
        self.run_dir, self.options = Path(run_dir), options
        self.make_engine = make_engine or load_engine  # (run_dir, options) -> an Engine
        self.metrics = ServerMetrics()
        self.status, self.error = "loading", None
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.task_worker = None  # trains the tasks POST /v1/tasks adds (for a method with task embeddings)
        self.in_flight = 0  # predict requests between receipt and answer
        self.preparing = 0  # instances admitted and not yet queued (read and written on the event loop only)
        self.prepare_pool = ThreadPoolExecutor(options.prepare_workers, "hyperpelt-prepare")
        self.on_failure = None  # called (from the loading thread) when loading fails
        self.on_death = None  # called (from the inference thread) when it dies
        self.on_ready = None  # called (from the loading thread) once warmed up, before /ready says 200

    # ------------------------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Load and warm up on a thread, so that /health answers at once and /ready says when it is done."""
        threading.Thread(target=self._load, name="hyperpelt-load", daemon=True).start()

    def _load(self) -> None:
        try:
            self.engine = self.make_engine(self.run_dir, self.options)
            if hasattr(self.engine, "cache_stats"):
                self.metrics.watch_weight_cache(self.engine.cache_stats)
            self.status = "warming"
            o = self.options
            self.task_worker = task_worker(self.run_dir, self.engine, o)
            if o.engine == "ray":  # the replicas load and warm up their own copies
                from .ray_engine import RayBatcher

                self.batcher = RayBatcher.deploy(self.run_dir, o)
            else:
                for batch in self.engine.warm_up_items():  # builds the weight table, once
                    self.engine.run(batch)
                self.batcher = Batcher(self.engine.run, o.max_batch_size, o.max_batch_tokens,
                                       o.max_wait_ms / 1000, o.batching, o.max_queue, self.metrics,
                                       on_death=self._worker_died).start()
            if self.on_ready is not None:
                self.on_ready()
            if self.status == "warming":
                self.status = "ready"
        except Exception as err:  # noqa: BLE001 - reported on /ready and by the serve command
            self.status, self.error = "failed", " ".join(str(err).split()) or type(err).__name__
            if self.on_failure is not None:
                self.on_failure(self.error)

    # ------------------------------------------------------------------------------------ requests

    def _worker_died(self, reason: str) -> None:
        self.status, self.error = "failed", f"the inference worker died: {reason}"
        if self.on_death is not None:
            self.on_death(self.error)

    def check_alive(self) -> None:
        """503 once loading failed or the inference worker died: the process should be restarted."""
        if self.status == "failed":
            raise RequestError(503, "failed", f"the server failed: {self.error}")

    def check_ready(self) -> None:
        if self.status != "ready":
            detail = f": {self.error}" if self.error else ""
            raise RequestError(503, self.status, f"the server is {self.status}{detail}")

    def check_capacity(self) -> None:
        """503 ``overloaded`` (with Retry-After) while ``limit_concurrency`` predict requests are in flight,
        this one counted: refused before its body is read. The probes (/health, /ready) are never counted,
        so an orchestrator sees an overloaded server as alive."""
        if self.in_flight > self.options.limit_concurrency:
            raise RequestError(503, "overloaded", f"{self.options.limit_concurrency} requests are being "
                               "answered; try again", headers={"Retry-After": "1"})

    async def predict(self, instances: list) -> list[dict]:
        """Every instance's answer, in order; the first refused instance raises its ``RequestError``."""
        self.check_ready()
        o = self.options
        if len(instances) > o.max_client_batch:
            raise RequestError(413, "too_many_instances", f"{len(instances)} instances in one request; at "
                               f"most {o.max_client_batch}")
        waiting = self.batcher.queued + self.preparing
        if waiting + len(instances) > o.max_queue:
            raise queue_full(waiting, o.max_queue)
        try:
            return await asyncio.wait_for(self._answer(instances), o.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"the request was not answered within its timeout "
                               f"({o.request_timeout_s:g} s)") from None

    async def _answer(self, instances: list) -> list[dict]:
        deadline = time.monotonic() + self.options.request_timeout_s
        given_up = threading.Event()  # tells the preparing thread to stop at the next instance
        self.preparing += len(instances)
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(
                self.prepare_pool, self._prepare, instances, given_up)
        finally:
            given_up.set()
            self.preparing -= len(instances)
        waits = self.batcher.submit(prepared, max(0.0, deadline - time.monotonic()))
        waits = [asyncio.wrap_future(w) if isinstance(w, Future) else w for w in waits]
        # cancelled (the timeout), the gather cancels each wait: queued items leave the queue
        outcomes = await asyncio.gather(*waits, return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, RequestError):  # raised here, or returned by a Ray replica
                outcome.instance = i
                raise outcome
            if isinstance(outcome, BaseException):
                raise outcome
        return outcomes

    def _prepare(self, instances: list, given_up: threading.Event) -> list | None:
        """(On a prepare thread) the instances prepared in order, or None once the request gave up."""
        prepared = []
        for i, instance in enumerate(instances):
            if given_up.is_set():
                return None
            prepared.append(self.engine.prepare(instance, i))
        return prepared

    # ------------------------------------------------------------------------------------ shutdown

    async def drain(self) -> bool:
        """Refuse new requests (503), answer the accepted ones; True if all were answered in time."""
        self.status = "draining"
        if self.batcher is not None:
            self.batcher.close()
        end = time.monotonic() + self.options.shutdown_timeout_s
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return not self.in_flight

    def info(self) -> dict:
        from .. import __version__
        from ..provenance import code_version

        names = {"model": None, "method": None} if self.engine is None else self.engine.describe()
        return {"run_dir": str(self.run_dir), "status": self.status, **names,
                "tasks": None if self.engine is None else self.engine.task_names,
                "batching": self.options.batching_settings(), "engine": self.options.engine,
                "in_flight": self.in_flight, "queued": None if self.batcher is None else self.batcher.pending,
                "reads_images": None if self.engine is None else self.engine.reads_images,
                **({"device": None, "dtype": None} if self.engine is None else self.engine.placement()),
                "weight_table_builds": None if self.engine is None else self.engine.table_builds,
                "version": __version__, "commit": code_version()}
