"""Few-shot transfer from a trained multi-task run to a task it never saw (HyperPELT §4.4, Hyperformer §3.2).

Every (mode, k, seed) is one cell: k training examples of the task drawn by the seed (balanced over the
classes unless ``sample`` says random), the model of the mode (``transfer.grow``: the run grown by the
task, its new rows copied from the source task; or the run's backbone with a baseline method), trained by
the one training loop on those examples alone, the best validation checkpoint scored on the task's test
split. Modes: ``taskembed`` (the new task embedding alone), the run's own method (e.g. ``hyperpelt``: the
hypernetworks and every hyper-embedding; ``hyperformer++``), and baselines trained afresh on the run's
backbone (``prompt``, with as many soft-token weights as the run's task embedding, ``adapters-shared``,
``full``, any method without a task embedding); a baseline that is the run's own method grows the run, one
given a run of its method (``--from MODE=RUN_DIR``, ``fewshot_modes``) grows that run.

Each cell is a run folder under ``cells/`` (its checkpoint removed once scored, its new task embedding
kept, its training states removed), finished when its cell.json is written: a rerun skips finished cells
and continues an interrupted one from its newest training state. The cells of one process share one
loaded host and tokenizer (``transfer.SharedHosts``): a cell's results do not depend on the cells before it.
fewshot.json, fewshot.md and fewshot.png give the mean ± standard deviation over seeds per mode and k.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..backbones import get_backbone
from ..checkpoint import read_checkpoint_config
from ..config import TrainConfig, apply_overrides, run_config
from ..errors import UserError
from ..evaluation.plots import mean_std, plot_scores
from ..heads.probe import CV_FOLDS
from ..inference import check_trusted
from ..run_folders import finished_run
from ..tasks import Task, load_task_splits
from ..training.sweep import finished_results
from ..transfer import TASKEMBED
from .fewshot_modes import check_modes, settled, start_records, start_runs
from .fewshot_summary import render_markdown

# The most similar source task (Hyperformer §3.2, HyperPELT §4.4): the first of these the run trained.
SOURCES = {
    "cb": ("mnli", "rte"), "scitail": ("mnli", "rte"), "trec": ("mnli", "rte"), "boolq": ("qnli",),
    "imdb": ("sst2",), "yelp_polarity": ("sst2",), "paws": ("qqp", "mrpc"),
}
# Our few-shot schedule (the papers give none): the run's own steps are a multi-task schedule.
TRAIN_DEFAULTS = ("train.steps=300", "train.eval_every=50", "train.log_every=10")
# A baseline trained afresh keeps the run's schedule but takes the learning rate its kind of tuning needs
# (those the 150-step comparisons used): full fine-tuning far below a PEFT rate (its heads keep the run's
# rate), prompt tuning far above. --set train.learning_rate=... overrides them.
MODE_LEARNING_RATES = {"full": 5.0e-5, "prompt": 3.0e-2}
SETTINGS = "settings.json"


@dataclass
class FewShot:
    """A checked few-shot grid and where it writes (``plan`` makes one)."""

    run_dir: Path
    task: str
    ks: list[int]
    seeds: list[int]
    modes: list[str]
    source: str
    sample: str
    out: Path
    overrides: list[str] = field(default_factory=list)
    method: str = ""
    run: dict = field(default_factory=dict)
    spec: Task | None = None
    """The task ``task`` names, from the run's config with the overrides (a task file declares it there)."""
    starts: dict[str, Path] = field(default_factory=dict)
    """The run folder each mode that grows a run grows (``fewshot_modes.start_runs``)."""

    @property
    def grid(self) -> list[tuple[str, int, int]]:
        return [(mode, k, seed) for mode in self.modes for k in self.ks for seed in self.seeds]

    def cell_dir(self, mode: str, k: int, seed: int) -> Path:
        return self.out / "cells" / mode / f"k{k}-seed{seed}"


def default_source(task: str, run_tasks: list[str]) -> str:
    for name in SOURCES.get(task, ()):
        if name in run_tasks:
            return name
    wanted = f" (the papers start {task} from {' or '.join(SOURCES[task])})" if task in SOURCES else ""
    raise UserError(f"no source task for '{task}' among the run's tasks ({', '.join(run_tasks)}){wanted}: "
                    f"name one with --source")


def plan(run_dir, task: str, ks: list[int], seeds: int, modes: list[str], source: str | None = None,
         sample: str = "balanced", out=None, overrides: list[str] = (), trust_remote_code: bool = False,
         from_runs: list[tuple[str, str]] = ()) -> FewShot:
    """Check everything a few-shot grid needs before anything trains; one-line errors name what is wrong.
    A run whose model ships its own code needs ``trust_remote_code`` (``inference.check_trusted``).
    ``from_runs``: (MODE, RUN_DIR) pairs, each mode's cells grown from that run (``fewshot_modes``)."""
    run_dir = finished_run(run_dir)
    meta = read_checkpoint_config(run_dir / "best")
    run = (run_dir / "config.yaml").read_text()
    # bad overrides fail here; a task file among them (data.task_files) declares the task first
    config = _config(run, [*TRAIN_DEFAULTS, *overrides, f"data.train_sample={sample}"])
    check_trusted(run_dir, config, meta, trust_remote_code)
    spec = config.data.registry.get(task)
    if task in meta["tasks"]:
        raise UserError(f"task '{task}' is already one of the run's tasks ({', '.join(meta['tasks'])}); "
                        f"few-shot transfer is to a task the run never saw")
    method = meta["method"]["name"]
    from_modes = [mode for mode, _ in from_runs]
    check_modes(list(modes), method, from_modes)
    source = source or default_source(task, meta["tasks"])
    if source not in meta["tasks"]:
        raise UserError(f"source task '{source}' is not one of the run's tasks: {', '.join(meta['tasks'])}")
    starts = start_runs(run_dir, meta, list(modes), list(from_runs), task, source)
    if seeds < 1 or not ks or min(ks) < 1:
        raise UserError("--seeds and every --k must be >= 1")
    data = config.data
    train = load_task_splits(spec, data.data_dir, data.split_seed, data.source,
                             carve_from=data.carve_from).train
    if max(ks) > len(train):
        raise UserError(f"k={max(ks)} is more than the {len(train)} training examples of task '{task}'")
    folder = Path(out) if out is not None else run_dir / f"fewshot-{task}"
    settings = settled(folder / SETTINGS, {
        "run": str(run_dir.resolve()), "task": task, "source": source, "sample": sample,
        "overrides": list(overrides), "starts": start_records(list(modes), starts)}, from_modes)
    return FewShot(run_dir, task, list(ks), list(range(seeds)), list(modes), source, sample, folder,
                   list(overrides), method, {"config": run, "meta": meta, "settings": settings}, spec, starts)


def _config(text: str, overrides: list[str]):
    import yaml

    return run_config(apply_overrides(yaml.safe_load(text), overrides))


def cell_config(fs: FewShot, mode: str, k: int, seed: int):
    """The run's config turned to one cell: the task alone, k examples drawn by the seed, the few-shot
    schedule (with the overrides), a batch of at most k, the mode's method."""
    import yaml

    data = yaml.safe_load(fs.run["config"])
    data["data"].update(tasks=[fs.task], max_train_examples=k, train_sample=fs.sample, train_sample_seed=seed)
    heads = data.get("heads", {})
    heads["balanced_classes"] = [t for t in heads.get("balanced_classes", []) if t == fs.task]
    probing = heads.get("probe_examples") or heads.get("probe_examples_by_task")
    if probing and k < CV_FOLDS * fs.spec.num_labels:  # too few per class for the probe
        heads.setdefault("probe_examples_by_task", {})[fs.task] = 0
    mode_rate = []
    if mode not in (TASKEMBED, fs.method):
        start = fs.starts.get(mode)  # a run of the mode's method (--from): its options
        data["method"] = (read_checkpoint_config(start / "best")["method"] if start else
                          {"name": mode, **_prompt_length(fs, mode)})
        if mode in MODE_LEARNING_RATES:
            backbone = get_backbone(data["model"]["name"], data["model"].get("trust_remote_code", False))
            if heads.get("learning_rate") is None and not backbone.generative:
                heads["learning_rate"] = data["train"].get("learning_rate", TrainConfig.learning_rate)
            mode_rate = [f"train.learning_rate={MODE_LEARNING_RATES[mode]}"]
    data["heads"] = heads
    cell = fs.cell_dir(mode, k, seed)
    data = apply_overrides(data, [*TRAIN_DEFAULTS, *mode_rate, *fs.overrides, f"train.seed={seed}",
                                  f"train.output_dir={cell.parent}", f"train.run_name={cell.name}"])
    train = data["train"]
    train["batch_size"] = min(train.get("batch_size", 32), k)
    if train.get("save_every", TrainConfig.save_every) >= train["steps"]:
        train["save_every"] = 0  # its one state would be the last step's, removed a moment later unread
    if train.get("micro_batch_size") and train["batch_size"] % train["micro_batch_size"]:
        train["micro_batch_size"] = None
    return run_config(data)


def _prompt_length(fs: FewShot, mode: str) -> dict:
    from ..transfer import matched_prompt_length

    length = matched_prompt_length(fs.run_dir / "best") if mode == "prompt" else None
    return {} if length is None else {"prompt_length": length}


def cell_model(fs: FewShot, mode: str, config, seed: int, hosts=None):
    """The cell's model: the mode's start grown by the task (the run for taskembed and the run's own method,
    a --from run), or the run's backbone with the baseline method new; its host lent by ``hosts`` (a
    ``transfer.SharedHosts``) or loaded."""
    from ..transfer import fresh, grow, train_for_transfer

    dropout = cell_dropout(fs, config)
    if mode in fs.starts:
        model, grown = grow(fs.starts[mode] / "best", fs.spec, fs.source, seed, hosts, dropout)
        train_for_transfer(model, mode, grown, as_method=fs.starts[mode] != fs.run_dir)
        return model
    return fresh(fs.run_dir / "best", fs.spec, config.to_dict()["method"], seed, hosts, dropout)


def cell_dropout(fs: FewShot, config) -> float | None:
    """The cell's model.dropout: of the model keys a cell may set only that one (a training setting); any
    other that differs from the run's is refused, for a cell's model is the run's."""
    from ..config import ModelConfig, from_dict

    run = from_dict(ModelConfig, read_checkpoint_config(fs.run_dir / "best")["model"], "model").__dict__
    cell = config.model.__dict__
    differ = [key for key in cell if key != "dropout" and cell[key] != run[key]]
    if differ:
        raise UserError(f"--set model.{differ[0]}: a few-shot cell's model is the run's ({differ[0]} "
                        f"{run[differ[0]]!r}); of the model keys a cell may set only model.dropout")
    return config.model.dropout


def run_cell(fs: FewShot, mode: str, k: int, seed: int, hosts=None) -> dict:
    """Train and score one cell; writes its run folder and, last, cell.json. ``hosts`` (a
    ``transfer.SharedHosts``) lends the host and tokenizer (default: the cell loads its own)."""
    from safetensors.torch import save_file

    from ..training.sweep import train_run
    from ..transfer import new_task_embedding

    folder = fs.cell_dir(mode, k, seed)
    config = cell_config(fs, mode, k, seed)
    model = cell_model(fs, mode, config, seed, hosts)
    results = train_run(config, folder, model=model)  # an interrupted cell continues; its states go
    embedding = new_task_embedding(model) if mode in fs.starts else None
    if embedding is not None:
        save_file({fs.task: embedding.contiguous()}, folder / "task_embedding.safetensors")
    shutil.rmtree(folder / "best", ignore_errors=True)  # the scores are kept; the weights would fill disks
    entry = results["tasks"][fs.task]
    record = {"mode": mode, "k": k, "seed": seed, "score": entry["score"], "metrics": entry["metrics"],
              "trainable_params": results["trainable_params"], "best_step": results["best_step"],
              "train_seconds": results["train_seconds"], "source": fs.source}
    tmp = folder / "cell.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(folder / "cell.json")
    if hosts is not None:
        hosts.check()
    return record


def run_fewshot(fs: FewShot, progress: bool = True, hosts=None) -> dict:
    """Every cell not finished yet, then the summary files; returns the summary. The cells share one host
    and tokenizer, loaded once: ``hosts`` (a ``transfer.SharedHosts``), by default a new one."""
    from ..transfer import SharedHosts

    hosts = SharedHosts() if hosts is None else hosts
    fs.out.mkdir(parents=True, exist_ok=True)
    (fs.out / SETTINGS).write_text(json.dumps(fs.run["settings"], indent=2))
    cells = {}
    bar = tqdm(fs.grid, desc="fewshot", disable=not progress, unit="cell")
    for mode, k, seed in bar:
        done = fs.cell_dir(mode, k, seed) / "cell.json"
        finished = done.is_file()
        bar.set_postfix_str(f"{mode} k={k} seed={seed}" + (" (done)" if finished else ""))
        cells[mode, k, seed] = finished_results(done) if finished else run_cell(fs, mode, k, seed, hosts)
    summary = summarize(fs, cells, majority_score(fs))
    (fs.out / "fewshot.json").write_text(json.dumps(summary, indent=2))
    (fs.out / "fewshot.md").write_text(render_markdown(summary))
    series = {mode: {int(k): entry["scores"] for k, entry in summary["modes"][mode]["k"].items()}
              for mode in fs.modes}
    plot_scores(series, fs.out / "fewshot.png", f"Few-shot transfer to {fs.task} (from {fs.source}), "
                f"{len(fs.seeds)} seeds", "training examples k (log scale)",
                f"test {_metric_name(fs.spec)}", baseline=_majority_line(summary["majority"]))
    return summary


def _metric_name(task: Task) -> str:
    return " / ".join(metric.__name__ for metric in task.metrics)


def majority_score(fs: FewShot) -> float | None:
    """The test score of always answering the most frequent class of the task's whole training split, on
    the test examples every cell is scored on (None for a task that is not classification): the floor a
    few-shot cell has to clear."""
    from ..data.batches import load_task_data

    if fs.spec.kind != "classification":
        return None
    data = cell_config(fs, fs.modes[0], fs.ks[0], fs.seeds[0]).data
    train = load_task_splits(fs.spec, data.data_dir, data.split_seed, data.source,
                             carve_from=data.carve_from).train
    majority = Counter(row["label"] for row in train).most_common(1)[0][0]
    test = load_task_data([fs.spec], lambda task, rows: rows, data)[0].examples["test"]
    return fs.spec.score([row["label"] for row in test], [majority] * len(test))[1]


def _majority_line(score: float | None) -> tuple[str, float] | None:
    return None if score is None else (f"majority class ({score:.2f})", score)


def summarize(fs: FewShot, cells: dict, majority: float | None = None) -> dict:
    modes = {}
    for mode in fs.modes:
        per_k = {}
        for k in fs.ks:
            scores = [cells[(mode, k, seed)]["score"] for seed in fs.seeds]
            mean, std = mean_std(scores)
            per_k[str(k)] = {"mean": mean, "std": std, "scores": scores}
        params = cells[(mode, fs.ks[0], fs.seeds[0])]["trainable_params"]
        modes[mode] = {"trainable_params": params, "k": per_k}
    return {"run": str(fs.run_dir), "task": fs.task, "source": fs.source, "sample": fs.sample,
            "metric": _metric_name(fs.spec), "ks": fs.ks, "seeds": fs.seeds, "overrides": fs.overrides,
            "majority": majority, "modes": modes,
            "starts": {mode: fs.run["settings"]["starts"][mode] for mode in fs.modes}}
