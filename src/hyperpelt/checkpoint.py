"""Checkpoints hold only the trained weights (safetensors) and the JSON config to rebuild the model.

``load_checkpoint`` builds the base model from its config, injects the method, and loads the weights:
the base model plus this folder restore the tuned model exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig, from_dict
from .errors import UserError
from .model import TunedModel
from .tasks import get_task

WEIGHTS = "method.safetensors"
CONFIG = "method_config.json"


def save_checkpoint(model: TunedModel, folder: str | Path, seed: int | None = None) -> Path:
    """Write the trained weights and config atomically (a crash never leaves a half-written checkpoint)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.contiguous().cpu() for name, t in model.trainable_state_dict().items()}
    save_file(tensors, tmp / WEIGHTS)
    meta = {
        "model": vars(model.model_config),
        "method": model.method_options,
        "tasks": model.task_names,
        "seed": seed,  # rebuilds a randomly initialised base model (model.pretrained: false) identically
    }
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        os.replace(folder, old)
        os.replace(tmp, folder)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, folder)
    return folder


def read_checkpoint_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise UserError(f"no checkpoint in {folder}: {CONFIG} is missing")
    return json.loads(path.read_text())


def load_checkpoint(folder: str | Path, model: TunedModel | None = None) -> TunedModel:
    """Load the trained weights onto ``model`` (or onto a freshly built base model from the saved config)."""
    folder = Path(folder)
    meta = read_checkpoint_config(folder)
    if model is None:
        if meta.get("seed") is not None:
            torch.manual_seed(meta["seed"])
        model = TunedModel(from_dict(ModelConfig, meta["model"], "model"), meta["method"], [get_task(t) for t in meta["tasks"]])
    weights = load_file(folder / WEIGHTS)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise UserError(f"{folder / WEIGHTS}: weights that the model does not have: {', '.join(unknown[:5])}")
    missing = sorted(set(model.trainable_state_dict()) - set(weights))
    if missing:
        raise UserError(f"{folder / WEIGHTS}: trained weights missing from the checkpoint: {', '.join(missing[:5])}")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    return model
