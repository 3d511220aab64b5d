"""The multi-task training loop, on one screen.

Sample a task (temperature p ∝ N^(1/T)), take a global batch (in micro-batches whose gradients
accumulate), step; every ``eval_every`` steps score every task's validation split and keep the single
checkpoint with the best average (``eval.average``: pooled over metric values, or per task); at the end
reload that checkpoint and report its test scores. Everything a run produces lives in its run folder:
the resolved config, metrics as JSON lines, TensorBoard logs, the best checkpoint, results.json and
report.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from ..backbones import get_backbone
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig
from ..data.features import BatchStream, answer_vocabularies, load_task_data, read_splits
from ..evaluation.evaluator import evaluate
from ..evaluation.report import results_table
from ..heads import prepare_heads
from ..model import TunedModel
from ..tasks import get_task
from .run_dir import code_version, image_cache


def _optimizer(model: TunedModel, config, head_learning_rate: float | None):
    heads = {id(p) for p in model.heads.parameters()} if model.heads is not None else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]
    groups = [{"params": params, "lr": config.learning_rate}]
    trained_heads = [p for p in model.heads.parameters() if p.requires_grad] if heads else []
    if trained_heads:
        groups.append({"params": trained_heads, "lr": head_learning_rate or config.learning_rate})
    if config.optimizer == "adafactor":  # constant learning rate, as Raffel et al. (2020) fine-tune T5
        from transformers.optimization import Adafactor

        optimizer = Adafactor(groups, lr=config.learning_rate, scale_parameter=False, relative_step=False,
                              warmup_init=False, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    warmup, steps = config.warmup_steps, config.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 if config.schedule == "constant" else max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(config: RunConfig, run_dir: Path, quiet: bool = False, model: TunedModel | None = None) -> dict:
    """Train, select the best-average checkpoint on validation, and return its test results. ``model``
    (e.g. a trained run grown by a new task, see ``hyperpelt.transfer``) is trained instead of a model
    built from the config; ``config.data.tasks`` names the tasks it trains on, and it ends holding the best
    checkpoint."""
    version = code_version()  # before training: the code may change in the checkout while this runs
    tasks = [get_task(name) for name in config.data.tasks]
    # a batch that does not split fails here (WORLD_SIZE: set by torchrun and accelerate launch), before
    # any model loads; creating accelerate's state this early would fix it to one process
    config.train.accumulation(int(os.environ.get("WORLD_SIZE", "1")))
    splits = read_splits(config.data)  # bad data fails here, before any model loads
    set_seed(config.train.seed)
    if model is None:
        vocabularies = None if get_backbone(config.model.name).generative else answer_vocabularies(
            tasks, splits, config.heads.answer_min_count)
        model = TunedModel(config.model, config.method, tasks, config.heads, config.data.task_prefix,
                           vocabularies)
    model.use_image_features(image_cache(config.data))
    data = load_task_data(model, config.data)

    # A one-task batch leaves the other tasks' heads (separate modules) without gradient in that step.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    accelerator = Accelerator(log_with=None, kwargs_handlers=handlers)
    config.train.accumulation(accelerator.num_processes)
    run_dir = Path(broadcast_object_list([str(run_dir)])[0])  # one folder for all processes
    main = accelerator.is_main_process
    # every process fits the same probe starts from the same examples
    probes = prepare_heads(model, data, config.heads, config.train.eval_batch_size, config.train.seed,
                           progress=main and not quiet)
    if main:
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()
    optimizer, scheduler = _optimizer(model, config.train, config.heads.learning_rate)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    core = accelerator.unwrap_model(model)
    stream = BatchStream(data, core, config.train.batch_size, config.data.temperature,
                         config.data.mixed_batches, config.train.seed, accelerator.process_index,
                         accelerator.num_processes, config.train.micro_batch_size)
    writer = SummaryWriter(run_dir / "tensorboard") if main else None
    metrics_log = (run_dir / "metrics.jsonl").open("a") if main else None
    best_dir, best = run_dir / "best", None

    def log(record: dict) -> None:
        if metrics_log:
            metrics_log.write(json.dumps(record) + "\n")
            metrics_log.flush()

    def validate(step: int) -> None:
        nonlocal best
        results = evaluate(core, data, "validation", config.train.eval_batch_size, config.train.num_beams,
                           config.eval.average)
        log({"step": step, "split": "validation", **results})
        if writer:
            for kind in ("pooled", "per_task"):
                writer.add_scalar(f"validation/average_{kind}", results[f"average_{kind}"], step)
            for name, entry in results["tasks"].items():
                writer.add_scalar(f"validation/{name}", entry["score"], step)
        if best is None or results["average"] > best["average"]:
            best = {"step": step, **results}
            if main:
                save_checkpoint(core, best_dir, seed=config.train.seed)

    if probes:
        log({"step": 0, "probe_train_score": probes})
    model.train()
    started, started_cpu = time.perf_counter(), time.process_time()
    progress = tqdm(range(1, config.train.steps + 1), disable=quiet or not main, desc="train")
    running = 0.0
    for step in progress:
        micro_batches = stream.next()
        loss = 0.0
        for i, (batch, weight) in enumerate(micro_batches):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            last = i == len(micro_batches) - 1  # gradients synchronise across processes once per step
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                micro_loss = model(**batch)["loss"]
                accelerator.backward(micro_loss if weight == 1.0 else micro_loss * weight)
            loss += micro_loss.item() * weight  # the step's mean loss (this process's share of it)
        if config.train.max_grad_norm:
            accelerator.clip_grad_norm_(core.parameters(), config.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        running += loss
        if step % config.train.log_every == 0 or step == config.train.steps:
            count = step % config.train.log_every or config.train.log_every
            log({"step": step, "loss": running / count, "lr": scheduler.get_last_lr()[0]})
            if writer:
                writer.add_scalar("train/loss", running / count, step)
            progress.set_postfix(loss=f"{running / count:.4f}")
            running = 0.0
        if step % config.train.eval_every == 0 or step == config.train.steps:
            validate(step)
    if main:
        metrics_log.close()
        writer.close()
    accelerator.wait_for_everyone()
    # the loop with its validations, not setup or the test; CPU time (all threads) is what the loop consumed,
    # which other jobs on the machine change far less than the wall-clock time
    train_seconds, train_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    load_checkpoint(best_dir, core)
    return finish(core, data, config, run_dir, best_step=best["step"], validation=best, write=main,
                  train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds, version=version)


def finish(model: TunedModel, data, config: RunConfig, run_dir: Path, best_step, validation,
           write: bool = True, train_seconds: float | None = None,
           train_cpu_seconds: float | None = None, version: str | None = None) -> dict:
    """Score the test split with the loaded checkpoint; write results.json and report.md. ``version``: the
    code the run was made with (default: `code_version` now)."""
    results = evaluate(model, data, "test", config.train.eval_batch_size, config.train.num_beams,
                       config.eval.average)
    trainable, total = model.parameter_counts()
    results.update(trainable_params=trainable, total_params=total, backbone_params=model.backbone_params)
    results.update(best_step=best_step, split="test", average_kind=config.eval.average,
                   train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds,
                   code_version=version or code_version())
    if validation is not None:
        results["validation_average"] = validation["average"]
        for kind in ("pooled", "per_task"):
            results[f"validation_average_{kind}"] = validation[f"average_{kind}"]
    if write:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
        title = f"test results of {run_dir} (checkpoint of step {best_step})"
        (run_dir / "report.md").write_text("```\n" + results_table(results, title) + "\n```\n")
    return results
