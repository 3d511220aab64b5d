"""How a benchmark's worker process hands back its result: one line ``RESULT {json}`` on its stdout."""

from __future__ import annotations

import json
import subprocess

PREFIX = "RESULT "


def print_result(result: dict) -> None:
    print(PREFIX + json.dumps(result), flush=True)


def run_worker_process(command: list[str], name: str, **options) -> dict:
    """Run a worker's ``command`` (``options`` go to subprocess.run) and return its result; a RuntimeError
    with the end of its stderr if it failed or printed none."""
    done = subprocess.run(command, capture_output=True, text=True, **options)
    lines = [line for line in done.stdout.splitlines() if line.startswith(PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(PREFIX):])
