"""Few-shot transfer: a trained run's model serving one more task, and what each transfer mode trains.

``grow`` rebuilds a checkpoint's model with a new task added last: every weight with one row per task
(task embeddings, per-task adapters and layer norms, prompts) gains a row, a copy of the source task's;
every other weight loads as saved, and on an encoder the new task gets a new head. ``train_for_transfer``
then sets what trains: in ``taskembed`` mode the new task's row of the method's task embedding alone, in
the run's own method's mode every weight of the method but the other tasks' rows. Those rows become
frozen buffers, joined to the new task's trained row by a parametrization, so no optimizer touches them
(weight decay included).

``SharedHosts`` loads each host and tokenizer once per process and lends them to every model built with it
(few-shot cells): a model gets a module tree of its own over the loaded host's frozen tensors and copies of
the host weights it trains, and comes out as if it had loaded the host itself.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import parametrize

from .backbones import get_backbone
from .checkpoint import WEIGHTS, build_model, read_checkpoint_config, read_weights
from .config import ModelConfig
from .errors import UserError
from .methods import get_method
from .model import TunedModel
from .model.precision import train_in_float32
from .options import from_dict

TASKEMBED = "taskembed"


class NewRows(nn.Module):
    """Parametrization of a per-task tensor: the old tasks' rows (a frozen buffer), then the new rows."""

    def __init__(self, old: torch.Tensor):
        super().__init__()
        self.register_buffer("old", old.detach().clone())

    def forward(self, new: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.old, new], dim=0)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value[len(self.old):].detach().clone()


def grow(folder: str | Path, task, source: str, seed: int | None = None,
         hosts: SharedHosts | None = None, dropout: float | None = None) -> tuple[TunedModel, list[str]]:
    """The checkpoint's model serving its tasks and ``task`` (last), every per-task weight's new row a copy
    of ``source``'s; returns it and the names of the weights that grew. A seed other than the checkpoint's
    only moves the new head's start (encoders). ``hosts``: where the host comes from (default: loaded);
    ``dropout``: the host's dropout while training (model.dropout; None: the checkpoint's)."""
    folder = Path(folder)
    meta = with_dropout(read_checkpoint_config(folder), dropout)
    if task.name in meta["tasks"]:
        raise UserError(f"task '{task.name}' is already one of the run's tasks ({', '.join(meta['tasks'])}); "
                        f"few-shot transfer is to a task the run never saw")
    if source not in meta["tasks"]:
        raise UserError(f"source task '{source}' is not one of the run's tasks: {', '.join(meta['tasks'])}")
    tasks = [meta["registry"].get(name) for name in meta["tasks"]]
    weights = read_weights(folder / WEIGHTS)
    host_weights = {name.removeprefix("host.") for name in weights if name.startswith("host.")}
    model = _build(meta, [*tasks, task], None if _random_host(meta) else seed, hosts, host_weights)
    params = dict(model.named_parameters())
    row, grown = meta["tasks"].index(source), []
    with torch.no_grad():
        for name, saved in weights.items():
            param = params.get(name)
            if param is not None and param.shape == saved.shape:
                param.copy_(saved)
            elif param is not None and param.shape[1:] == saved.shape[1:] and len(param) == len(saved) + 1:
                param[:-1].copy_(saved)
                param[-1].copy_(saved[row])
                grown.append(name)
            else:
                raise UserError(f"{folder / WEIGHTS}: weight {name} {tuple(saved.shape)} does not fit the "
                                f"model grown by task '{task.name}'")
    return model.eval(), grown


def with_dropout(meta: dict, dropout: float | None) -> dict:
    """A checkpoint config whose model drops with ``dropout`` while training (None: as it is)."""
    return meta if dropout is None else {**meta, "model": {**meta["model"], "dropout": dropout}}


def _random_host(meta: dict) -> bool:
    return not meta["model"].get("pretrained", True)


def train_for_transfer(model: TunedModel, mode: str, grown: list[str], as_method: bool = False) -> None:
    """Set what trains on a model from ``grow``: ``taskembed``, the new task's task-embedding row; any other
    mode (the run's own method), every method weight, the new rows of per-task weights and, for a method
    that trains the backbone, the backbone. On an encoder the new task's head trains too. The other tasks'
    rows are frozen; so are the backbone's layer norms, unless ``as_method``: then the host weights the
    method trains (its layer norms) train too, as in a cell of the method new (a baseline started from a
    run of its method)."""
    embedding = model.method.task_embedding_name
    if mode == TASKEMBED and embedding is None:
        raise UserError(f"mode '{TASKEMBED}' needs a method with a task embedding (hyperpelt, hyperformer, "
                        f"hyperformer++); the run's method is {model.method.name}")
    model.requires_grad_(False)
    if as_method:  # before the per-task weights are parametrized: their new rows keep requires_grad
        model.method.set_trainable(model.host, model.backbone)
    new_rows = {}
    for name in grown:
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        parametrize.register_parametrization(module, attr, NewRows(getattr(module, attr)[:-1]), unsafe=True)
        new_rows[name] = module.parametrizations[attr].original
    if mode == TASKEMBED:
        new_rows[f"method.{embedding}"].requires_grad_(True)
    else:
        model.method.requires_grad_(True)
        for rows in new_rows.values():
            rows.requires_grad_(True)
        if model.method.trains_backbone:
            model.host.requires_grad_(True)
    if model.heads is not None:
        model.heads.heads[len(model.tasks) - 1].requires_grad_(True)
    train_in_float32(model)  # over a half-precision host (model.dtype), what now trains is float32


def new_task_embedding(model: TunedModel) -> torch.Tensor | None:
    """The last task's row of the method's task embedding (None for a method without one)."""
    name = model.method.task_embedding_name
    return None if name is None else getattr(model.method, name)[-1].detach().clone()


def fresh(folder: str | Path, task, method: dict, seed: int, hosts: SharedHosts | None = None,
          dropout: float | None = None) -> TunedModel:
    """The run's base model (backbone, heads options, task prefixes) with a new ``method`` serving ``task``
    alone, initialised by ``seed`` (by the run's seed where the backbone has random weights, so that it is
    the run's backbone). ``hosts``: where the host comes from (default: loaded); ``dropout`` as ``grow``'s."""
    meta = with_dropout(read_checkpoint_config(Path(folder)), dropout)
    return _build({**meta, "method": method, "answer_vocabularies": None}, [task],
                  None if _random_host(meta) else seed, hosts).eval()


def _build(meta: dict, tasks: list, seed: int | None, hosts: SharedHosts | None, loaded=()) -> TunedModel:
    """``build_model``, with copies of its own of the lent host weights it trains or ``loaded`` names."""
    model = build_model(meta, tasks, seed, hosts)
    if hosts is not None:
        hosts.own_trained(model.host, loaded)
    return model


def task_embeddings(folder: str | Path) -> tuple[list[str], torch.Tensor] | None:
    """A checkpoint's task names and its method's task embedding, one row per task (None if it has none)."""
    folder = Path(folder)
    meta = read_checkpoint_config(folder)
    name = get_method(meta["method"]["name"]).module_cls.task_embedding_name
    if name is None:
        return None
    return meta["tasks"], read_weights(folder / WEIGHTS)[f"method.{name}"]


def matched_prompt_length(folder: str | Path) -> int | None:
    """Soft tokens that make prompt tuning train as many weights per task as the run's task embedding (N ×
    d_τ for HyperPELT): its size over d_model, at least 1; None for a method without a task embedding."""
    folder = Path(folder)
    meta = read_checkpoint_config(folder)
    name = get_method(meta["method"]["name"]).module_cls.task_embedding_name
    if name is None:
        return None
    with safe_open(folder / WEIGHTS, "pt") as weights:
        size = torch.Size(weights.get_slice(f"method.{name}").get_shape()[1:]).numel()
    model_config = from_dict(ModelConfig, {**meta["model"], "pretrained": False}, "model")
    backbone = get_backbone(model_config.name, model_config.trust_remote_code)
    with torch.device("meta"):
        d_model = backbone.dims(backbone.load_host(model_config)).d_model
    return max(1, round(size / d_model))


@dataclass
class _Loaded:
    host: nn.Module
    drawn_from: torch.Tensor | None  # the RNG state it was drawn from (random weights), else None
    drawn_to: torch.Tensor | None  # the RNG state drawing it left
    versions: list[int]  # each weight's version counter at loading: a write moves it
    storages: set[int]  # where its weights' tensors lie, which every host lent from it shares


class SharedHosts:
    """Each host and tokenizer that a process's models need, loaded once and lent to every model built with
    it (``build_model(..., hosts=)``): few-shot cells, one after another in one process.

    A lent host is a module tree of its own (the method wraps its modules, sets which weights train, sets
    its attention) over the loaded host's tensors, which stay frozen and shared: the model built on it takes
    copies of the host weights it trains (``own_trained``), before anything writes them, and ``check``
    raises if a shared weight was written all the same. A host drawn from the RNG (``model.pretrained:
    false``) is lent only where the RNG stands as it stood when that host was drawn, and the RNG is then
    moved on as drawing it would: every model comes out as if it had loaded its host itself.
    """

    def __init__(self):
        self._hosts: dict[str, list[_Loaded]] = {}
        self._tokenizers: dict[str, object] = {}

    def host(self, model_config) -> nn.Module:
        """A host of ``model_config`` as loading one now would give it: lent where it can be, else loaded
        (and kept); the RNG ends where loading would leave it."""
        key = _key(model_config)
        state = torch.get_rng_state()
        for loaded in self._hosts.get(key, []):
            if loaded.drawn_from is None or torch.equal(loaded.drawn_from, state):
                if loaded.drawn_to is not None:
                    torch.set_rng_state(loaded.drawn_to)
                return _lend(loaded.host)
        host = get_backbone(model_config.name, model_config.trust_remote_code).load_host(model_config)
        after = torch.get_rng_state()
        drawn = not torch.equal(state, after)
        params = list(host.parameters())
        self._hosts.setdefault(key, []).append(_Loaded(
            host, state if drawn else None, after if drawn else None, [p._version for p in params],
            {p.untyped_storage().data_ptr() for p in params}))
        return _lend(host)

    def tokenizer(self, model_config):
        key = _key(model_config)
        if key not in self._tokenizers:
            backbone = get_backbone(model_config.name, model_config.trust_remote_code)
            self._tokenizers[key] = backbone.load_tokenizer(model_config)
        return self._tokenizers[key]

    def own_trained(self, host: nn.Module, also=()) -> None:
        """Give every weight of a lent ``host`` that trains, and those named in ``also`` (e.g. to be loaded
        from a checkpoint), a copy of its own (tied weights stay tied)."""
        shared = set().union(*(loaded.storages for entries in self._hosts.values() for loaded in entries))
        owned = {id(p) for name, p in host.named_parameters()
                 if (p.requires_grad or name in also) and p.untyped_storage().data_ptr() in shared}
        copies = {}
        for module in host.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                if id(param) in owned:
                    if id(param) not in copies:
                        copies[id(param)] = nn.Parameter(param.detach().clone(), param.requires_grad)
                    setattr(module, name, copies[id(param)])

    def check(self) -> None:
        """Raise if a weight of a loaded host was written since it was loaded (a model wrote a weight it
        shares instead of its own copy)."""
        for entries in self._hosts.values():
            for loaded in entries:
                for (name, param), version in zip(loaded.host.named_parameters(), loaded.versions):
                    if param._version != version:
                        raise RuntimeError(f"a model wrote the shared host weight {name}")


def _key(model_config) -> str:
    """What a loaded host depends on: the model config less its dropout (set on each lent copy)."""
    return json.dumps({**dataclasses.asdict(model_config), "dropout": None}, sort_keys=True)


def _lend(host: nn.Module) -> nn.Module:
    """A copy of ``host``'s module tree (config and buffers included) whose weights are new parameters over
    the same tensors."""
    shared = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in host.parameters()}
    return copy.deepcopy(host, shared)
