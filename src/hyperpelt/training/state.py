"""Training states: what a run saves to continue exactly where it stopped (``hyperpelt train --resume``).

A state is the folder ``states/step-<step>`` of the run folder, apart from the best checkpoint (best/):

- ``weights.safetensors``: the trainable weights; ``optimizer.safetensors``: the optimizer's tensors;
- ``state.json``: the step, the optimizer's other entries, the LR scheduler, the batch stream's position
  (task sampler and each task's pass), every process's RNG states (Python, NumPy, torch CPU and CUDA), the
  metrics so far, the best validation result so far and the run's config;
- ``best/``: the best checkpoint as it stood (hard links to best/'s files), so that a best/ written after
  this state, by steps that a resume replays, is put back;
- ``manifest.json``, written last: every file's SHA-256; a state whose files do not match is corrupt.

Nothing is pickled. A state is written atomically (see ``atomic``); the newest ``train.keep_states`` stay.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from ..atomic import fresh_tmp, publish, saving, sibling
from ..checkpoint import recover_checkpoint, valid_checkpoint
from ..config import RunConfig, load_config
from ..errors import UserError
from ..faults import fault
from ..run_folders import new_run_dir

STATES, STATE, MANIFEST = "states", "state.json", "manifest.json"
WEIGHTS, OPTIMIZER, BEST = "weights.safetensors", "optimizer.safetensors", "best"
NAME = re.compile(r"step-(\d+)")
# keys a resume may change: they extend the run or say where it is kept, not what its steps compute
RESUMABLE = ("train.steps", "train.save_every", "train.keep_states", "train.output_dir", "train.run_name")


def rng_state() -> dict:
    """This process's RNG states, as JSON data."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state().tolist(),
             "numpy": [kind, keys.tolist(), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _split_optimizer(state_dict: dict) -> tuple[dict, dict]:
    """An optimizer's state dict as tensors (safetensors) and the rest (JSON)."""
    tensors, other = {}, {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                other.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def _join_optimizer(tensors: dict, other: dict) -> dict:
    state = {int(index): dict(entries) for index, entries in other["state"].items()}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    return {"state": state, "param_groups": other["param_groups"]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class States:
    """Saves and loads the training states of one run; ``save`` and ``load`` run on every process."""

    def __init__(self, run_dir: Path, config: RunConfig, model, optimizer, scheduler, stream, accelerator):
        self.folder, self.config, self.model = run_dir / STATES, config, model
        self.optimizer, self.scheduler, self.stream = optimizer, scheduler, stream
        self.accelerator = accelerator
        self.best_dir, self.last = run_dir / BEST, None  # last: the step of the newest state saved or loaded

    def save(self, progress: dict) -> None:
        """Write the state after ``progress["step"]`` (the loop's bookkeeping, JSON data)."""
        rngs = gather_object([rng_state()])
        if self.accelerator.is_main_process:
            self._write(progress, rngs)
        self.accelerator.wait_for_everyone()
        self.last = progress["step"]

    def _write(self, progress: dict, rngs: list[dict]) -> None:
        folder, run_dir = self.folder / f"step-{progress['step']:08d}", self.folder.parent
        kept = f"the states before it and best/ are kept: free space, then hyperpelt train --resume {run_dir}"
        with saving(folder, f"the training state of step {progress['step']}", kept):
            self._write_state(folder, progress, rngs)
        fault("state-published")
        for old in state_folders(self.folder.parent)[self.config.train.keep_states:]:
            os.replace(old, sibling(old, ".del"))  # renamed first: no half-removed state is ever listed
        for leftover in [*self.folder.glob("*.del"), *self.folder.glob("*.tmp")]:  # also a crash's
            shutil.rmtree(leftover)

    def _write_state(self, folder: Path, progress: dict, rngs: list[dict]) -> None:
        tmp = fresh_tmp(folder)
        weights = {name: t.contiguous().cpu() for name, t in self.model.trainable_state_dict().items()}
        save_file(weights, tmp / WEIGHTS)
        tensors, optimizer = _split_optimizer(self.optimizer.state_dict())
        save_file(tensors, tmp / OPTIMIZER)
        fault("state-write")
        if progress["best"] is not None:  # best/ holds the checkpoint of progress["best"]
            (tmp / BEST).mkdir()
            for path in self.best_dir.iterdir():
                _link_or_copy(path, tmp / BEST / path.name)
        state = {"progress": progress, "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                 "stream": self.stream.state(), "rng": rngs, "config": _plain(self.config.to_dict())}
        (tmp / STATE).write_text(json.dumps(state))
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        (tmp / MANIFEST).write_text(json.dumps({name: _sha256(tmp / name) for name in files}, indent=1))
        publish(tmp, folder, "state")

    def load(self, folder: Path) -> dict:
        """Restore the model, optimizer, scheduler, data position and RNG states of the state in ``folder``
        (and, on the main process, best/ as it stood); returns the loop's bookkeeping."""
        state = json.loads((folder / STATE).read_text())
        if len(state["rng"]) != self.accelerator.num_processes:
            raise UserError(f"{folder} was saved by {len(state['rng'])} processes; resume it with as many "
                            f"(now {self.accelerator.num_processes})")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in load_file(folder / WEIGHTS).items():
                params[name].copy_(tensor)
        self.model.method.weights_changed()
        self.optimizer.load_state_dict(_join_optimizer(load_file(folder / OPTIMIZER), state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.stream.restore(state["stream"])
        set_rng_state(state["rng"][self.accelerator.process_index])
        if self.accelerator.is_main_process:
            restore_best(folder, self.best_dir)
        self.accelerator.wait_for_everyone()
        self.last = state["progress"]["step"]
        return state["progress"]


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # best/'s files are replaced, never rewritten: a link keeps their content
    except OSError:
        shutil.copy2(source, target)


def _plain(data):
    """``data`` as JSON reads it back (tuples as lists), so configs compare equal across a save."""
    return json.loads(json.dumps(data))


def restore_best(folder: Path, best_dir: Path) -> None:
    """Make best/ the best checkpoint the state in ``folder`` knew (none: best/ stays as it is, for the
    replayed steps to overwrite)."""
    recover_checkpoint(best_dir)
    kept = folder / BEST
    if not kept.is_dir():
        return
    same = valid_checkpoint(best_dir) and all(
        _sha256(best_dir / p.name) == _sha256(p) for p in kept.iterdir())
    if not same:
        tmp = fresh_tmp(best_dir)
        for path in kept.iterdir():
            shutil.copy2(path, tmp / path.name)
        publish(tmp, best_dir, "best")


def valid_state(folder: Path) -> bool:
    """Whether every file the state's manifest lists is there with its SHA-256, and the manifest lists the
    files a state needs."""
    return state_problem(folder) is None


def state_problem(folder: Path) -> str | None:
    """Why the state in ``folder`` cannot be resumed from (its manifest unreadable or not a mapping of the
    state's files to their SHA-256, a file missing or changed); None when it can."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError) as err:
        return f"{MANIFEST} cannot be read: {' '.join(str(err).split())[:80]}"
    if not (isinstance(manifest, dict) and all(isinstance(v, str) for v in manifest.values())
            and {STATE, WEIGHTS, OPTIMIZER} <= set(manifest)):
        return f"{MANIFEST} is not a mapping of the state's files ({STATE}, {WEIGHTS}, {OPTIMIZER}) to hashes"
    for name, digest in manifest.items():
        file = folder / name
        try:
            if not file.resolve().is_relative_to(folder.resolve()) or _sha256(file) != digest:
                return f"{name} does not match {MANIFEST}"
        except OSError:
            return f"{name}, listed in {MANIFEST}, cannot be read"
    return None


def state_folders(run_dir: Path) -> list[Path]:
    """The run's state folders, newest first (unchecked)."""
    folders = [p for p in (run_dir / STATES).glob("step-*") if NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(folders, key=lambda p: int(NAME.fullmatch(p.name).group(1)), reverse=True)


def latest_state(run_dir: Path) -> Path:
    """The newest valid state; each newer one that is corrupt or incomplete is skipped with a warning."""
    for folder in state_folders(run_dir):
        problem = state_problem(folder)
        if problem is None:
            return folder
        warnings.warn(f"training state {folder} is corrupt or incomplete ({problem}); trying the one before",
                      stacklevel=2)
    raise UserError(f"{run_dir} holds no valid training state (states/step-*) to resume from")


def run_to_train(config_file: str | None, overrides: list[str], resume: str | None, check: bool = True):
    """``(config, run folder, state)`` for `hyperpelt train`: a new run of ``config_file`` (state None), or,
    with ``resume``, that run folder and its newest valid training state (see `resume_point`)."""
    if resume and config_file and "=" in config_file:  # `train --resume RUN key=value`: no config file
        config_file, overrides = None, [config_file, *overrides]
    if resume:
        config, state = resume_point(resume, config_file, overrides)
        return config, Path(resume), state
    if not config_file:
        raise UserError("train needs a CONFIG, or --resume RUN_DIR")
    config = load_config(config_file, overrides)
    return config, new_run_dir(config, Path(config_file).stem, check=check), None


def resume_point(run_dir: str | Path, config_file: str | None, overrides: list[str]
                 ) -> tuple[RunConfig, Path]:
    """The config to resume ``run_dir`` with (its own, or ``config_file``, with ``overrides``) and the state
    to resume from; a config that differs from the run's in a key outside `RESUMABLE` is refused."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    folder = latest_state(run_dir)
    config = load_config(config_file or run_dir / "config.yaml", overrides)
    check_resumable(run_dir, folder, config)
    return config, folder


def check_resumable(run_dir: Path, folder: Path, config: RunConfig) -> None:
    """Refuse to continue the state in ``folder`` with a config that differs outside `RESUMABLE`."""
    state = json.loads((folder / STATE).read_text())
    saved, new = _flat(state["config"]), _flat(_plain(config.to_dict()))
    changed = sorted(k for k in saved.keys() | new.keys()
                     if saved.get(k) != new.get(k) and k not in RESUMABLE)
    if changed:
        raise UserError(f"cannot resume {run_dir} with a different config: {', '.join(changed)} differ "
                        f"(only {', '.join(RESUMABLE)} may change)")
    step = state["progress"]["step"]
    if config.train.steps < step:
        raise UserError(f"train.steps ({config.train.steps}) is below step {step}, where {run_dir} stands")


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
