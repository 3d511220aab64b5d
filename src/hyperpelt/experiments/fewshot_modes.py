"""Few-shot modes: which there are, where each one's cells start, and the record of it that a rerun must
match.

A mode grows a trained run by the task (``transfer.grow``): ``taskembed`` and the run's own method grow the
run itself, a mode named by ``--from MODE=RUN_DIR`` grows RUN_DIR, a finished run of that method on the
run's backbone (Hyperformer's Table 2 starts Adapters† and full fine-tuning from the GLUE-trained model).
Every other mode trains its method new on the run's backbone. settings.json records each mode's start (the
run folder and the SHA-256 of its best checkpoint's weights, or null for new), so that a rerun that would
start a mode elsewhere is refused while more modes can still be added.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from ..checkpoint import WEIGHTS, read_checkpoint_config
from ..config import ModelConfig
from ..errors import UserError
from ..methods import get_method, method_names
from ..options import from_dict
from ..run_folders import finished_run
from ..textfiles import read_json
from ..transfer import TASKEMBED


def baseline_modes() -> list[str]:
    """Methods a few-shot baseline can train afresh: those without a task embedding or images."""
    return [name for name in method_names() if get_method(name).module_cls.task_embedding_name is None
            and get_method(name).module_cls.reads_images is False]


def check_modes(modes: list[str], method: str, from_modes=()) -> None:
    """Refuse a mode that is not ``taskembed``, the run's own ``method``, a baseline or a method that a
    --from run gives (``from_modes``)."""
    if not modes:
        raise UserError("--mode needs at least one mode")
    for mode in modes:
        if mode in (TASKEMBED, method) or mode in baseline_modes():
            continue
        if mode in method_names():
            if mode in from_modes:
                continue
            raise UserError(f"mode '{mode}' transfers a trained {mode} run; this run trained {method}, whose "
                            f"own mode is '{method}' (name a {mode} run with --from {mode}=RUN_DIR)")
        raise UserError(f"unknown mode '{mode}'; modes: {TASKEMBED}, {method} (the run's own method), or a "
                        f"baseline trained afresh: {', '.join(baseline_modes())}")
    if TASKEMBED in modes and get_method(method).module_cls.task_embedding_name is None:
        raise UserError(f"mode '{TASKEMBED}' needs a run whose method has a task embedding (hyperpelt, "
                        f"hyperformer, hyperformer++); this run trained {method}")


def start_runs(run_dir: Path, meta: dict, modes: list[str], from_runs: list[tuple[str, str]], task: str,
               source: str) -> dict[str, Path]:
    """The run folder each mode that grows a run grows: the run itself for ``taskembed`` and its own
    method, each ``from_runs`` (MODE, RUN_DIR) pair's after checking it; one-line errors name what is
    wrong."""
    method = meta["method"]["name"]
    starts = {mode: run_dir for mode in modes if mode in (TASKEMBED, method)}
    for mode, path in from_runs:
        where = f"--from {mode}={path}"
        if mode in (TASKEMBED, method):
            raise UserError(f"{where}: mode '{mode}' grows the run itself ({run_dir})")
        if mode in starts:
            raise UserError(f"{where}: --from names mode '{mode}' twice")
        if mode not in modes:
            raise UserError(f"{where}: --mode does not list '{mode}'")
        try:
            folder = finished_run(path)
            theirs = read_checkpoint_config(folder / "best")
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        if theirs["method"]["name"] != mode:
            raise UserError(f"{where}: that run trained {theirs['method']['name']}, not {mode}")
        if get_method(mode).module_cls.reads_images:
            raise UserError(f"{where}: {mode} reads images; few-shot transfer is to a text task")
        _check_backbone(where, theirs, meta, run_dir)
        if task in theirs["tasks"]:
            raise UserError(f"{where}: that run trained task '{task}' already; few-shot transfer is to a "
                            f"task it never saw")
        if source not in theirs["tasks"]:
            raise UserError(f"{where}: the source task '{source}' is not one of that run's tasks: "
                            f"{', '.join(theirs['tasks'])}")
        starts[mode] = folder
    return starts


def _check_backbone(where: str, theirs: dict, ours: dict, run_dir: Path) -> None:
    """Refuse a run on another model than the run's (backbone, tokenizer, lengths, dtype, dropout), or,
    where the backbone is drawn at random, drawn by another seed."""
    a, b = (dataclasses.asdict(from_dict(ModelConfig, m["model"], "model")) for m in (theirs, ours))
    differ = [f"model.{key} is {a[key]} there, {b[key]} in the run" for key in b if a[key] != b[key]]
    if not differ and not b["pretrained"] and theirs.get("seed") != ours.get("seed"):
        differ.append(f"its random backbone (model.pretrained: false) is drawn by seed {theirs.get('seed')} "
                      f"there, {ours.get('seed')} in the run")
    if differ:
        raise UserError(f"{where}: that run's model is not the one of {run_dir}: {'; '.join(differ)}")


def start_records(modes: list[str], starts: dict[str, Path]) -> dict[str, dict | None]:
    """Each mode's start as settings.json records it: the run folder it grows and its best checkpoint's
    weights' SHA-256, or None where the mode's method is new on the run's backbone."""
    hashes = {folder: _sha256(folder / "best" / WEIGHTS) for folder in set(starts.values())}
    return {mode: {"run": str(starts[mode].resolve()), "checkpoint_sha256": hashes[starts[mode]]}
            if mode in starts else None for mode in modes}


def _sha256(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def settled(path: Path, settings: dict, from_modes: list[str]) -> dict:
    """``settings`` (with this call's ``starts``) as the grid's settings.json must then say: refused where
    that file holds other settings or another start of one of this call's modes; the starts it records for
    other modes kept. A file from before starts were recorded: a mode with cells there started as it does
    without --from."""
    if not path.is_file():
        return settings
    stored = read_json(path)
    recorded = stored.pop("starts", None) if isinstance(stored, dict) else None
    if stored != {key: value for key, value in settings.items() if key != "starts"}:
        raise UserError(f"{path.parent} holds a few-shot grid made with other settings ({path}); "
                        f"choose another --out")
    starts = settings["starts"]
    if recorded is None:
        recorded = {mode: None if mode in from_modes else start for mode, start in starts.items()
                    if (path.parent / "cells" / mode).is_dir()}
    for mode, start in starts.items():
        if mode in recorded and recorded[mode] != start:
            raise UserError(f"{path.parent}: its {mode} cells started from {describe(recorded[mode])}; this "
                            f"call starts them from {describe(start)} ({path}); choose another --out")
    return {**settings, "starts": {**recorded, **starts}}


def describe(start: dict | None) -> str:
    """A mode's start in words: the run it grows (and its weights' hash), or new on the run's backbone."""
    if start is None:
        return "the method new on the run's backbone"
    return f"{start['run']} (best checkpoint sha256 {start['checkpoint_sha256'][:12]})"
