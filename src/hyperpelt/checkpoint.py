"""Checkpoints hold only the trained weights (safetensors) and the JSON config to rebuild the model.

``load_checkpoint`` builds the base model from its config, injects the method, and loads the weights:
the base model plus this folder restore the tuned model exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import fresh_tmp, publish, recover, saving
from .config import ModelConfig
from .errors import UserError
from .faults import fault
from .heads import HeadsConfig
from .methods import method_config, method_options
from .model import TunedModel
from .moved_keys import move_old_keys
from .options import from_dict
from .tasks.declared import declare_all
from .tasks.registry import TaskRegistry
from .textfiles import read_json

WEIGHTS = "method.safetensors"
CONFIG = "checkpoint.json"
LEGACY_CONFIG = "method_config.json"  # the name before the file also held model, heads, tasks and seed


def save_checkpoint(model: TunedModel, folder: str | Path, seed: int | None = None,
                    registry: TaskRegistry | None = None) -> Path:
    """Write the trained weights and config atomically: ``folder`` always holds a complete checkpoint, the
    old one until the new one replaces it in one step (see ``atomic``). ``registry`` (the run's,
    ``config.data.registry``) gives the declarations of the model's declared tasks; none: it has none."""
    registry = TaskRegistry() if registry is None else registry
    undeclared = [name for name in model.task_names if name not in registry.names()]
    if undeclared:
        raise ValueError(f"task '{undeclared[0]}' is not in the registry given; pass the run's "
                         f"(config.data.registry), so that the checkpoint holds its declaration")
    folder = Path(folder)
    with saving(folder, "the checkpoint", f"{folder.name}/ keeps the one before"):
        return _write_checkpoint(model, folder, seed, registry)


def _write_checkpoint(model: TunedModel, folder: Path, seed: int | None, registry: TaskRegistry) -> Path:
    tmp = fresh_tmp(folder)
    tensors = {name: t.contiguous().cpu() for name, t in model.trainable_state_dict().items()}
    save_file(tensors, tmp / WEIGHTS)
    fault("best-write")
    meta = {
        "model": dataclasses.asdict(model.model_config),
        "method": model.method_options,
        "heads": dataclasses.asdict(model.heads_config),
        "task_prefix": model.task_prefix,
        "tasks": model.task_names,
        # the tasks declared in files or configs, so the model loads where those are not
        "task_definitions": [d for d in map(registry.declaration, model.task_names) if d is not None],
        "answer_vocabularies": model.answer_vocabularies,  # the answer heads' classes, from training
        "image_extractor": model.image_extractor,  # what made the image features, for new image files
        "seed": seed,  # rebuilds a randomly initialised base model (model.pretrained: false) identically
    }
    (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
    return publish(tmp, folder, "best")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a damaged file is a UserError naming it."""
    try:
        return load_file(path)
    except SafetensorError as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def valid_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a complete checkpoint: its config parses and its weights load."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CONFIG).read_text())
        load_file(folder / WEIGHTS)
    except (OSError, ValueError, SafetensorError):
        return False
    return isinstance(meta, dict) and {"model", "method", "tasks"} <= set(meta)


def recover_checkpoint(folder: str | Path) -> None:
    """Finish or undo a best-checkpoint swap that a crash cut short (see ``atomic.recover``)."""
    recover(Path(folder), valid_checkpoint)


def read_checkpoint_config(folder: str | Path) -> dict:
    """The checkpoint's config, with its declared tasks in a registry of its own under "registry" (not a key
    of the file), so its task names resolve; one written before the heads section had the head options
    under model."""
    folder = Path(folder)
    path = folder / CONFIG if (folder / CONFIG).is_file() else folder / LEGACY_CONFIG
    if not path.is_file():
        raise UserError(f"no checkpoint in {folder}: {CONFIG} is missing")
    meta = read_json(path)
    kinds = {"model": dict, "method": dict, "tasks": list}
    if not (isinstance(meta, dict) and all(isinstance(meta.get(k), kind) for k, kind in kinds.items())):
        raise UserError(f"{path}: not a checkpoint config (a JSON object with model, method and tasks)")
    meta = move_old_keys(meta, warn=False)
    meta.setdefault("heads", {})
    meta["registry"] = TaskRegistry()
    declare_all(None, meta.get("task_definitions"), f"{path}: task_definitions", into=meta["registry"])
    return meta


def build_model(meta: dict, tasks: list | None = None, seed: int | None = None, hosts=None) -> TunedModel:
    """The untrained model a checkpoint config describes (serving ``tasks``, by default its own), built
    after ``torch.manual_seed`` of ``seed``, by default the checkpoint's: a randomly initialised base model
    (model.pretrained: false) comes out as the run's. ``hosts`` (a ``transfer.SharedHosts``) lends the host
    and tokenizer instead of loading them; the model comes out the same."""
    seed = meta.get("seed") if seed is None else seed
    if seed is not None:
        torch.manual_seed(seed)
    model_config = from_dict(ModelConfig, meta["model"], "model")
    host = tokenizer = None
    if hosts is not None:  # where loading would draw the host from the RNG, the RNG ends as loading leaves it
        host, tokenizer = hosts.host(model_config), hosts.tokenizer(model_config)
    registry = meta.get("registry") or TaskRegistry()
    heads = from_dict(HeadsConfig, meta["heads"], "heads")
    heads.check_tasks(registry.names())
    model = TunedModel(model_config, meta["method"], tasks or [registry.get(t) for t in meta["tasks"]], heads,
                       meta.get("task_prefix", True), meta.get("answer_vocabularies"), host, tokenizer)
    model.image_extractor = meta.get("image_extractor")
    return model


def check_fits(meta: dict, folder: Path, model: ModelConfig, method: dict, tasks: list[str], here: str):
    """Refuse a checkpoint (its config ``meta``) made for another base model, method or task list than
    ``here`` describes, naming each difference."""
    theirs = _identity(from_dict(ModelConfig, meta["model"], "model"), meta["method"], meta["tasks"])
    ours = _identity(model, method, tasks)
    differ = [f"{key} is {theirs.get(key)} there, {ours.get(key)} in {here}"
              for key in dict.fromkeys([*theirs, *ours]) if theirs.get(key) != ours.get(key)]
    if differ:
        raise UserError(f"{folder} is a checkpoint of another model: {'; '.join(differ)}")


def _identity(model: ModelConfig, method: dict, tasks: list[str]) -> dict:
    options = method_options(method_config(method))
    return {"model.name": model.name, "model.pretrained": model.pretrained, "tasks": ", ".join(tasks),
            **{f"method.{key}": value for key, value in options.items()}}


def load_checkpoint(folder: str | Path, model: TunedModel | None = None, dtype: str | None = None,
                    trust_remote_code: bool = False) -> TunedModel:
    """Load the trained weights onto ``model`` (or onto a freshly built base model from the saved config,
    its frozen host in ``dtype`` (a model.dtype name) if given, else in the saved model.dtype); a checkpoint
    of another base model, method or task list than ``model``'s is refused. The trained weights load as
    saved (float32). A saved config whose model.trust_remote_code is true builds only with
    ``trust_remote_code``: the folder's word alone runs no code."""
    folder = Path(folder)
    meta = read_checkpoint_config(folder)
    if model is None:
        if meta["model"].get("trust_remote_code") and not trust_remote_code:
            raise UserError(f"{folder}: its model runs code it ships with it (model.trust_remote_code); "
                            f"pass --trust-remote-code if you trust it")
        if dtype is not None:
            meta["model"] = {**meta["model"], "dtype": dtype}
        model = build_model(meta)
    else:
        check_fits(meta, folder, model.model_config, model.method_options, model.task_names, "this model")
    weights = read_weights(folder / WEIGHTS)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise UserError(f"{folder / WEIGHTS}: weights that the model does not have: {', '.join(unknown[:5])}")
    missing = sorted(set(model.trainable_state_dict()) - set(weights))
    if missing:
        raise UserError(
            f"{folder / WEIGHTS}: trained weights missing from the checkpoint: {', '.join(missing[:5])}"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    model.method.weights_changed()
    return model
