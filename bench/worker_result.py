"""How a benchmark's worker process hands back its result: one line ``RESULT {json}`` on its stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def write_report(module: str, argv: list[str] | None, results: dict, markdown, report: str,
                 json_path: str | None = None) -> str:
    """A benchmark's end: ``markdown(results, command)`` (the command that ran ``module`` with ``argv``,
    default this process's) written to ``report``, the figures as JSON to ``json_path`` if given; printed."""
    command = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(results, command.strip())
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(text)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))
    print(text)
    return text
