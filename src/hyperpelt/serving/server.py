"""``hyperpelt serve``: a run behind uvicorn, with a graceful stop.

The first SIGTERM or SIGINT turns /ready and new requests to 503, waits (at most --shutdown-timeout-s)
until every accepted request is answered, then stops the server: exit 0. A second signal stops at once.

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

    async def on_tick(self, counter: int) -> bool:
        if self._signalled and self._draining is None and not self.should_exit:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return await super().on_tick(counter)

    async def _drain(self) -> None:
        answered = await self.service.drain()
        if not answered:
            log.warning("shutdown timeout: %d requests were still being answered", self.service.in_flight)
        self.should_exit = True


def serve(run_dir: str, options: ServeOptions, make_engine=None) -> int:
    """Serve ``run_dir`` until stopped; the exit code (0 after a graceful stop). ``make_engine(run_dir,
    options)`` builds the engine (default: the run's best checkpoint)."""
    service = Service(run_dir, options, make_engine)
    config = uvicorn.Config(create_app(service), host=options.host, port=options.port, log_level="warning",
                            timeout_graceful_shutdown=max(1, int(options.shutdown_timeout_s)))
    server = DrainingServer(config, service)
    service.on_failure = server.fail
    service.on_ready = gc.freeze
    service.start()
    server.run()
    if service.batcher is not None:
        service.batcher.stop(timeout_s=1.0)
    return server.exit_code
