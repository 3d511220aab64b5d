"""The ``serve`` subcommand's arguments; FastAPI and uvicorn load only when it runs."""

from __future__ import annotations

import argparse
import os
import sys

from ..arguments import positive_int
from ..errors import UserError


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def cmd_serve(args) -> int:
    """Serve a trained run over HTTP: every task of the run, requests of any tasks batched together.
    POST /v1/predict, GET /v1/tasks, /health, /ready, /info, /metrics and a playground at /."""
    from ..run_folders import finished_run

    finished_run(args.run_dir)  # a wrong folder fails here, before anything heavy loads or a port opens
    try:
        from .server import serve
        from .settings import ServeOptions
    except ImportError as err:
        raise UserError(f"serving needs its extra ({err.name} is missing): pip install -e '.[serve]'") \
            from None
    options = ServeOptions(**{key: value for key, value in vars(args).items()
                              if key in ServeOptions.__dataclass_fields__})
    code = serve(args.run_dir, options)
    # Every request is answered and nothing is left to write: skip the interpreter's teardown of torch and
    # the tokenizers, which takes seconds, so a stop ends within the shutdown timeout.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a trained run over HTTP", description=cmd_serve.__doc__)
    p.set_defaults(func=cmd_serve)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--max-batch-size", type=positive_int, default=16, help="instances per forward (16)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=4096,
                   help="instances x longest input per forward (4096)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more after its first instance (5)")
    p.add_argument("--batching", choices=("mixed", "by-task", "off"), default="mixed",
                   help="mixed: any tasks share a batch; by-task: one task per batch; off: one instance")
    p.add_argument("--max-queue", type=positive_int, default=256, help="instances waiting before 429 (256)")
    p.add_argument("--max-client-batch", type=positive_int, default=32,
                   help="instances per request before 413 (32)")
    p.add_argument("--max-body-bytes", type=positive_int, default=16 * 2**20,
                   help="largest request body before 413 (16 MiB)")
    p.add_argument("--request-timeout-s", type=positive_float, default=30.0,
                   help="a request not computed by then gets 504 (30)")
    p.add_argument("--shutdown-timeout-s", type=positive_float, default=30.0,
                   help="time to answer accepted requests after SIGTERM (30)")
    p.add_argument("--image-dir", help="the folder image_path may name files in (VL runs; default: none)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: one process; ray: Ray Serve replicas (pip install -e '.[ray]')")
    p.add_argument("--replicas", type=positive_int, default=1, help="Ray Serve replicas (1)")
