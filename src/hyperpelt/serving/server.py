"""``hyperpelt serve``: a run behind uvicorn, with a graceful stop.

The first SIGTERM or SIGINT turns /ready and new requests to 503, waits (at most --shutdown-timeout-s)
until every accepted request is answered, then stops the server: exit 0; requests still open then (a
client still sending its body) are cut, not waited for again. A second signal stops at once.
If the run cannot be loaded: exit 2. If the inference worker dies: every waiting request gets 503, /health
and /ready say 503, and the server stops with exit 3, for an orchestrator to restart it.

Once warmed up, the process's objects (the model, the libraries' modules) are frozen for the garbage
collector (``gc.freeze``): a full collection would otherwise walk all of them, hundreds of thousands,
while every request waits; frozen, it reads only what requests made since.
"""

from __future__ import annotations

import asyncio
import gc
import logging

import uvicorn

from .app import create_app
from .service import Service
from .settings import ServeOptions

log = logging.getLogger("hyperpelt.serve")
WORKER_DIED = 3  # the exit code after the inference worker died


CONNECTION_FACTOR = 8


def uvicorn_config(app, options: ServeOptions, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's settings for ``app`` under ``options``: the app refuses predict requests past
    ``limit_concurrency`` (``Service.check_capacity``); uvicorn itself, as a backstop against a flood of
    connections, answers 503 (a plain-text body) past ``CONNECTION_FACTOR`` times as many connections and
    requests at once, /health's too; an idle keep-alive connection closes after ``keep_alive_timeout_s``;
    a stop waits at most ``shutdown_timeout_s`` for open connections."""
    return uvicorn.Config(app, host=options.host, port=options.port, log_level=log_level,
                          limit_concurrency=CONNECTION_FACTOR * options.limit_concurrency,
                          timeout_keep_alive=options.keep_alive_timeout_s,
                          timeout_graceful_shutdown=max(1, int(options.shutdown_timeout_s)))


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the stop above; ``exit_code`` says how it ended."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service, self.exit_code = service, 0
        self._draining: asyncio.Task | None = None
        self._signalled = 0

    def handle_exit(self, sig: int, frame) -> None:  # runs in the signal handler: only set flags
        self._signalled += 1
        if self._signalled > 1:
            self.exit_code, self.should_exit, self.force_exit = 128 + sig, True, True

    def fail(self, message: str) -> None:
        """Loading failed (called from the loading thread): say why and stop, exit 2."""
        log.error("cannot serve %s: %s", self.service.run_dir, message)
        self.exit_code, self.should_exit = 2, True

    def died(self, message: str) -> None:
        """The inference worker died (called from its thread; every waiting request has had its 503):
        stop, exit 3."""
        log.error("stopping: %s", message)
        self.exit_code, self.should_exit = WORKER_DIED, True

    async def on_tick(self, counter: int) -> bool:
        if self._signalled and self._draining is None and not self.should_exit:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        answered = await self.service.drain()
        if not answered:  # e.g. a slow client still sending its body: no second wait for its connection
            log.warning("shutdown timeout: %d requests were still being answered", self.service.in_flight)
            self.force_exit = True
        self.should_exit = True


def serve(run_dir: str, options: ServeOptions, make_engine=None) -> int:
    """Serve ``run_dir`` until stopped; the exit code (0 after a graceful stop). ``make_engine(run_dir,
    options)`` builds the engine (default: the run's best checkpoint)."""
    service = Service(run_dir, options, make_engine)
    server = DrainingServer(uvicorn_config(create_app(service), options), service)
    service.on_failure, service.on_death = server.fail, server.died
    service.on_ready = gc.freeze
    service.start()
    server.run()
    if service.batcher is not None:
        service.batcher.stop(timeout_s=1.0)
    return server.exit_code
