"""Run folders: a new one for each training run (never an existing one), and loading a finished one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..config import RunConfig, load_config
from ..errors import UserError


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


def run_to_train(config_file: str | None, overrides: list[str], resume: str | None, check: bool = True):
    """``(config, run folder, state)`` for `hyperpelt train`: a new run of ``config_file`` (state None), or,
    with ``resume``, that run folder and its newest valid training state (see `state.resume_point`)."""
    if resume and config_file and "=" in config_file:  # `train --resume RUN key=value`: no config file
        config_file, overrides = None, [config_file, *overrides]
    if resume:
        from .state import resume_point

        config, state = resume_point(resume, config_file, overrides)
        return config, Path(resume), state
    if not config_file:
        raise UserError("train needs a CONFIG, or --resume RUN_DIR")
    config = load_config(config_file, overrides)
    return config, new_run_dir(config, Path(config_file).stem, check=check), None


def finished_run(path: str | Path) -> Path:
    """A run folder that holds its config and best checkpoint (a best-checkpoint swap that a crash cut
    short is finished or undone first)."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    if any((run_dir / f"best{suffix}").exists() for suffix in (".tmp", ".old")):
        from ..checkpoint import recover_checkpoint

        recover_checkpoint(run_dir / "best")
    for needed in ("config.yaml", "best"):
        if not (run_dir / needed).exists():
            raise UserError(f"{run_dir} is not a finished run folder: {needed} is missing")
    return run_dir


def run_config(run_dir: str | Path, overrides: list[str] = ()) -> RunConfig:
    """A finished run's resolved config, with overrides."""
    return load_config(finished_run(run_dir) / "config.yaml", list(overrides))


def image_cache(data_config):
    """The run's image-feature cache (``data.image_features``), or None."""
    if data_config.image_features is None:
        return None
    from ..vision.cache import load_features

    return load_features(data_config.image_features)


def load_run(run_dir: str | Path, config: RunConfig | None = None):
    """The best checkpoint of a finished run on its base model, ready for inference (with the image features
    of ``config``, by default the run's own, if it reads any); a best/ made for another model than the
    config's is refused."""
    from ..checkpoint import check_fits, load_checkpoint, read_checkpoint_config

    config = config or run_config(run_dir)
    best = finished_run(run_dir) / "best"
    check_fits(read_checkpoint_config(best), best, config.model, config.to_dict()["method"],
               config.data.tasks, str(Path(run_dir) / "config.yaml"))
    model = load_checkpoint(best).eval()
    model.use_image_features(image_cache(config.data))
    return model


def evaluate_run(run_dir: str | Path, split: str, overrides: list[str] = (),
                 other_images: bool = False) -> tuple[dict, Path]:
    """Score a finished run's best checkpoint on ``split``; writes (only) RUN_DIR/eval_<split>.json. With
    ``other_images``, every question is paired with another image of the split (``with_other_images``;
    written to eval_<split>_other_images.json): how much of the score the images carry."""
    from ..data.features import load_task_data, with_other_images
    from ..evaluation.evaluator import evaluate

    config = run_config(run_dir, overrides)
    model = load_run(run_dir, config)
    data = load_task_data(model, config.data)
    if other_images:
        for task_data in data:
            task_data.features[split] = with_other_images(task_data.features[split], config.data.split_seed)
    scores = evaluate(model, data, split, config.train.eval_batch_size, config.train.num_beams,
                      config.eval.average)
    results = {**scores, "split": split, "average_kind": config.eval.average, "other_images": other_images}
    out = Path(run_dir) / f"eval_{split}{'_other_images' if other_images else ''}.json"
    out.write_text(json.dumps(results, indent=2))
    return results, out
