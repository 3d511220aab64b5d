"""The ``serve`` subcommand's arguments; FastAPI and uvicorn load only when it runs."""

from __future__ import annotations

import argparse
import os
import sys

from ..arguments import add_options, options_from
from ..errors import UserError
from .settings import ServeOptions


def cmd_serve(args) -> int:
    """Serve a trained run over HTTP: every task of the run, requests of any tasks batched together.
    POST /v1/predict, GET /v1/tasks, /health, /ready, /info, /metrics and a playground at /."""
    from ..checkpoint import read_checkpoint_config
    from ..inference import check_trusted, run_config
    from ..run_folders import finished_run

    # a wrong folder, or one asking to run its own code untrusted, fails here: before a port opens
    run_dir = finished_run(args.run_dir)
    check_trusted(run_dir, run_config(run_dir), read_checkpoint_config(run_dir / "best"),
                  args.trust_remote_code)
    from ..devices import resolve_device

    resolve_device(args.device)  # as does a device this machine lacks
    from .served_tasks import STORE_NAME
    from .task_store import TaskStore

    TaskStore.check_file(args.task_store or run_dir / STORE_NAME)  # as does a file that is no task store
    try:
        from .server import serve
    except ImportError as err:
        raise UserError(f"serving needs its extra ({err.name} is missing): pip install -e '.[serve]'") \
            from None
    code = serve(args.run_dir, options_from(ServeOptions, args))
    # Every request is answered and nothing is left to write: skip the interpreter's teardown of torch and
    # the tokenizers, which takes seconds, so a stop ends within the shutdown timeout.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a trained run over HTTP", description=cmd_serve.__doc__)
    p.set_defaults(func=cmd_serve)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder written by 'hyperpelt train'")
    add_options(p, ServeOptions)
