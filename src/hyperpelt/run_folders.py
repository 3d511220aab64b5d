"""Run folders: a new one for each training run (never an existing one), and a finished one to load."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .config import RunConfig
from .errors import UserError


def new_run_dir(config: RunConfig, config_name: str, check: bool = True) -> Path:
    """A fresh run folder; an existing one is never overwritten.

    Only the main process checks (``check``): the others take its folder once training starts, and a
    late one must not mistake the folder the main process has just made for an old run.
    """
    name = config.train.run_name or f"{config_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(config.train.output_dir)
    run_dir = out / name
    if check and run_dir.exists():
        raise UserError(f"run folder {run_dir} already exists; choose another train.run_name")
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())  # what the run folder goes in
    if check and not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(f"train.output_dir {out}: {existing} is not a folder this process can write in")
    return run_dir


def finished_run(path: str | Path) -> Path:
    """A run folder that holds its config and best checkpoint (a best-checkpoint swap that a crash cut
    short is finished or undone first)."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    if any((run_dir / f"best{suffix}").exists() for suffix in (".tmp", ".old")):
        from .checkpoint import recover_checkpoint

        recover_checkpoint(run_dir / "best")
    for needed in ("config.yaml", "best"):
        if not (run_dir / needed).exists():
            raise UserError(f"{run_dir} is not a finished run folder: {needed} is missing")
    return run_dir
