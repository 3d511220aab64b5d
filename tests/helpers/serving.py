"""A served run in this process (uvicorn on a thread, on a free loopback port) and a real HTTP client."""

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import uvicorn

from conftest import ROOT, free_port
from hyperpelt.serving.app import create_app
from hyperpelt.serving.server import uvicorn_config
from hyperpelt.serving.service import Service
from hyperpelt.serving.settings import ServeOptions

# A tiny MiniLM-L6 run of three tasks (two steps), served by the serving tests
TASKS = ["rte", "sst2", "stsb"]
RUN = ["model.name=minilm-l6", "model.max_input_length=32", "method.prefix_length=4", "method.hyper_dim=16",
       "method.task_dim=16", "method.projector_hidden=32", "method.adapter_dim=8",
       f"data.tasks=[{','.join(TASKS)}]",
       "data.max_train_examples=16", "data.max_eval_examples=8", "train.steps=2", "train.eval_every=2",
       "train.batch_size=4", "train.eval_batch_size=8", "heads.pair_encoding=separate",
       "heads.pair_head=alignment"]


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


def started_server(run_dir, *options: str, timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """A ``hyperpelt serve run_dir *options`` process on a free port and one torch thread, once /ready
    answers 200: (the process, its base URL). The caller stops it."""
    base = f"http://127.0.0.1:{free_port()}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "hyperpelt", "serve", str(run_dir), "--port", base.rsplit(":", 1)[1],
               *options]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if call(base + "/ready")[0] == 200:
                    return process, base
            except urllib.error.URLError:
                pass
            assert time.monotonic() < deadline, f"the server was not ready within {timeout_s} s"
            time.sleep(0.1)
    except BaseException:
        process.kill()
        process.wait(10)
        raise


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


def raw_exchange(base: str, head: bytes, parts=(), pause_s: float = 0.0, timeout_s: float = 30.0):
    """(status, parsed JSON body or text, headers) of a request written by hand on a socket: ``head`` (the
    request line and headers, through the blank line), then each of ``parts``, ``pause_s`` apart. The
    writing stops once the server answers or cuts the connection; the answer is read whatever came of it."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        try:
            sock.sendall(head)
            for part in parts:
                if select.select([sock], [], [], pause_s)[0]:  # answered (or closed) before the body ended
                    break
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(sock)
        response.begin()
        payload = response.read()
    try:
        return response.status, json.loads(payload), response.headers
    except json.JSONDecodeError:
        return response.status, payload.decode(), response.headers


def chunked(data: bytes, size: int):
    """``data`` as the chunks of a chunked body (``size`` bytes each), its last, empty chunk included."""
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
