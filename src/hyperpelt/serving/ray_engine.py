"""``--engine ray``: the same routes and checks, with the forwards done by Ray Serve replicas.

The HTTP process checks and encodes each instance as the local engine does, then hands it to a Ray Serve
deployment. Each replica holds the whole model (every task: no routing affinity is needed), warms up
before it counts as healthy, and batches the calls it receives with ``@serve.batch``: instances of any
tasks, sorted by task and length, in one forward over its weight table. Its health check fails if the
weight table has been rebuilt since warm-up. Needs ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import time
from pathlib import Path

from ray import serve

from .batcher import answer_batch, by_task_and_length
from .engine import Prepared, RequestError
from .settings import ServeOptions, load_engine

DEPLOYMENT = "hyperpelt"


@serve.deployment(name=DEPLOYMENT)
class Replica:
    """One model copy in a Ray Serve replica."""

    def __init__(self, run_dir: str, options: ServeOptions):
        self.engine = load_engine(Path(run_dir), options)
        for batch in self.engine.warm_up_items():
            self.engine.run(batch)
        self.answer.set_max_batch_size(options.max_batch_size)
        self.answer.set_batch_wait_timeout_s(options.max_wait_ms / 1000)

    @serve.batch
    async def answer(self, calls: list[tuple[Prepared, float]]) -> list:
        """Answers (or RequestErrors) for a batch of (instance, deadline as wall-clock time) calls."""
        now = time.time()
        live = [i for i, (_, deadline) in enumerate(calls) if deadline >= now]
        answers: list = [RequestError(504, "timeout", "the request waited past its timeout")] * len(calls)
        batch = [calls[i][0] for i in live]
        order = by_task_and_length(batch)
        for position, answer in zip(order, answer_batch(self.engine.run, [batch[i] for i in order])):
            answers[live[position]] = answer
        return answers

    def check_health(self) -> None:
        if self.engine.table_builds != 1:
            raise RuntimeError(f"the weight table was built {self.engine.table_builds} times, not once")


class RayBatcher:
    """The service's batcher interface over a Ray Serve deployment handle."""

    def __init__(self, handle, options: ServeOptions):
        self.handle, self.options = handle, options
        self.closed, self.waiting = False, 0

    @classmethod
    def deploy(cls, run_dir: Path, options: ServeOptions) -> RayBatcher:
        import ray

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        serve.start(proxy_location="Disabled")  # requests come through this process's server, not Ray's
        deployment = Replica.options(
            num_replicas=options.replicas, max_ongoing_requests=2 * options.max_batch_size,
            max_queued_requests=options.max_queue, health_check_period_s=10,
            graceful_shutdown_timeout_s=options.shutdown_timeout_s)
        handle = serve.run(deployment.bind(str(run_dir), options), name=DEPLOYMENT, route_prefix=None)
        return cls(handle, options)

    def submit(self, prepared: list[Prepared], timeout_s: float) -> list:
        if self.closed:
            raise RequestError(503, "draining", "the server is shutting down")
        deadline = time.time() + timeout_s
        return [self._answer(p, deadline) for p in prepared]

    async def _answer(self, prepared: Prepared, deadline: float):
        self.waiting += 1
        try:
            return await self.handle.answer.remote((prepared, deadline))
        finally:
            self.waiting -= 1

    @property
    def pending(self) -> int:
        return self.waiting

    queued = pending  # the admission check's count (Ray queues and runs them)

    def close(self) -> None:
        self.closed = True

    def stop(self, timeout_s: float | None = None) -> None:
        """Remove the deployment and disconnect (a Ray started here stops with it)."""
        import ray

        self.closed = True
        serve.delete(DEPLOYMENT)
        ray.shutdown()
