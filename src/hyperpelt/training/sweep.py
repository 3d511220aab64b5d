"""One run of a sweep (compare, lowresource, fewshot): an interrupted run continues from its newest
training state, and starts afresh only where it has no state to continue; once its results are written its
states are removed, so a grid of many runs keeps only their results and best checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import RunConfig
from ..errors import UserError
from ..textfiles import read_json
from .state import STATES, check_resumable, latest_state


def train_run(config: RunConfig, run_dir: Path, quiet: bool = True, model=None) -> dict:
    """Train ``config`` in ``run_dir`` (continuing what an interrupted sweep left there); its results."""
    from . import trainer

    state = state_to_resume(config, run_dir)
    if state is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    results = trainer.train(config, run_dir, quiet=quiet, model=model, resume=state)
    drop_states(run_dir)
    return results


def state_to_resume(config: RunConfig, run_dir: Path) -> Path | None:
    """The newest valid state of ``run_dir`` that ``config`` may continue, or None (said, when the folder
    exists: why it starts afresh)."""
    if not run_dir.is_dir():
        return None
    try:
        folder = latest_state(run_dir)  # warns of each newer state that is corrupt
        check_resumable(run_dir, folder, config)
    except UserError as err:
        print(f"{err}; starting it again", flush=True)
        return None
    print(f"resuming {run_dir} from {folder.name}", flush=True)
    return folder


def drop_states(run_dir: Path) -> None:
    """Remove a finished run's training states (they are only for continuing it)."""
    shutil.rmtree(run_dir / STATES, ignore_errors=True)


def finished_results(path: Path) -> dict:
    """A finished run's results (results.json, or a few-shot cell's cell.json). They are written atomically,
    so one that does not read is damaged: a UserError naming it."""
    try:
        results = read_json(path)
    except UserError as err:
        raise UserError(f"{err}; remove it to train that run again") from None
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a JSON object of results; remove it to train that run again")
    return results
