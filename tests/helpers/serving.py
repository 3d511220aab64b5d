"""A served run in this process (uvicorn on a thread, on a free loopback port) and a real HTTP client."""

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import uvicorn

from hyperpelt.serving.app import create_app
from hyperpelt.serving.server import uvicorn_config
from hyperpelt.serving.service import Service
from hyperpelt.serving.settings import ServeOptions


@contextmanager
def in_process_server(run_dir, **options):
    """(the service, its base URL) once ready, serving ``run_dir`` with ``ServeOptions(**options)``."""
    service = Service(run_dir, ServeOptions(port=0, **options))
    server = uvicorn.Server(uvicorn_config(create_app(service), service.options, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    service.start()
    thread.start()
    while not server.started or service.status in ("loading", "warming"):
        assert thread.is_alive()
        time.sleep(0.05)
    assert service.status == "ready", service.error
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield service, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        service.batcher.stop(5)


def call(url: str, body=None, method: str | None = None, raw: bytes | None = None):
    """(status, parsed JSON body or text, headers) of one request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload, headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        status, payload, headers = err.code, err.read(), err.headers
    try:
        return status, json.loads(payload), headers
    except json.JSONDecodeError:
        return status, payload.decode(), headers
