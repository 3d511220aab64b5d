"""The multi-task training loop, on one screen.

Sample a task (temperature p ∝ N^(1/T)), take a global batch (in micro-batches whose gradients
accumulate), step; every ``eval_every`` steps score every task's validation split and keep the single
checkpoint with the best average (``eval.average``: pooled over metric values, or per task); at the end
reload that checkpoint and report its test scores. Everything a run produces lives in its run folder:
the resolved config, metrics as JSON lines, TensorBoard logs, the best checkpoint, the training states
(every ``save_every`` steps and at SIGINT/SIGTERM, see ``state``), results.json and report.md. A resumed
run continues from a state exactly: it ends with the weights of the same run uninterrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from ..atomic import write_text
from ..backbones import get_backbone
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig
from ..data.batches import BatchStream, answer_vocabularies, load_task_data, read_splits
from ..errors import UserError
from ..evaluation.evaluator import evaluate
from ..evaluation.report import results_table
from ..faults import fault
from ..heads import prepare_heads
from ..model import TunedModel
from ..provenance import code_version, machine, today
from ..tasks import get_task
from ..vision.cache import optional_features
from .signals import StopSignals, TrainingStopped
from .state import States


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


def train(config: RunConfig, run_dir: Path, quiet: bool = False, model: TunedModel | None = None,
          resume: Path | None = None) -> dict:
    """Train, select the best-average checkpoint on validation, and return its test results. ``model``
    (e.g. a trained run grown by a new task, see ``hyperpelt.transfer``) is trained instead of a model
    built from the config; ``config.data.tasks`` names the tasks it trains on, and it ends holding the best
    checkpoint. ``resume``: a training state of ``run_dir`` to continue from (see `state.resume_point`).
    SIGINT or SIGTERM stops the run after its step with the state saved: `TrainingStopped`."""
    version = code_version()  # before training: the code may change in the checkout while this runs
    tasks = [get_task(name) for name in config.data.tasks]
    # a batch that does not split fails here (WORLD_SIZE: set by torchrun and accelerate launch), before
    # any model loads; creating accelerate's state this early would fix it to one process
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config.train.accumulation(world)
    splits = read_splits(config.data)  # bad data fails here, before any model loads
    set_seed(config.train.seed)
    if model is None:
        backbone = get_backbone(config.model.name, config.model.trust_remote_code)
        vocabularies = None if backbone.generative else answer_vocabularies(
            tasks, splits, config.heads.answer_min_count)
        model = TunedModel(config.model, config.method, tasks, config.heads, config.data.task_prefix,
                           vocabularies)
    model.use_feature_cache(optional_features(config.data.feature_cache))
    data = load_task_data(model.tasks, model.encode, config.data)

    # A one-task batch leaves the other tasks' heads (separate modules) without gradient in that step.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    # without a GPU, Accelerate joins the processes torchrun starts only when told to use the CPU
    accelerator = Accelerator(log_with=None, kwargs_handlers=handlers,
                              cpu=world > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != world:
        raise UserError(f"{world} processes were launched (WORLD_SIZE) but Accelerate joined "
                        f"{accelerator.num_processes}: check the launcher (accelerate launch, torchrun)")
    run_dir = Path(broadcast_object_list([str(run_dir)])[0])  # one folder for all processes
    main = accelerator.is_main_process
    # every process fits the same probe starts from the same examples
    probes = prepare_heads(model.heads, model.collator, model.encode_batch, data, config.heads,
                           config.train.eval_batch_size, config.train.seed, progress=main and not quiet)
    if main:
        run_dir.mkdir(parents=True, exist_ok=resume is not None)
        write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()
    optimizer, scheduler = _optimizer(model, config.train, config.heads.learning_rate)
    # the scheduler stays ours: Accelerate's wrapper would step it once per process at each optimizer step
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    stream = BatchStream(data, core.collator, config.train.batch_size, config.data.temperature,
                         config.data.mixed_batches, config.train.seed, accelerator.process_index,
                         accelerator.num_processes, config.train.micro_batch_size)
    states = States(run_dir, config, core, optimizer, scheduler, stream, accelerator)
    # the loop's bookkeeping, saved with each state: validation results, the loss since the last log
    done = {"step": 0, "best": None, "running": 0.0, "metrics": [], "seconds": 0.0, "cpu_seconds": 0.0}
    if resume is not None:
        done = states.load(resume)
        if main:
            write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in done["metrics"]))
    writer = SummaryWriter(run_dir / "tensorboard", purge_step=done["step"] + 1) if main else None
    metrics_log = (run_dir / "metrics.jsonl").open("a") if main else None
    best_dir = run_dir / "best"

    def log(record: dict) -> None:
        done["metrics"].append(record)
        if metrics_log:
            metrics_log.write(json.dumps(record) + "\n")
            metrics_log.flush()

    def validate(step: int) -> None:
        results = evaluate(core.predict_features, data, "validation", config.train.eval_batch_size,
                           config.train.num_beams, config.eval.average, accelerator)
        log({"step": step, "split": "validation", **results})
        if writer:
            for kind in ("pooled", "per_task"):
                writer.add_scalar(f"validation/average_{kind}", results[f"average_{kind}"], step)
            for name, entry in results["tasks"].items():
                writer.add_scalar(f"validation/{name}", entry["score"], step)
        fault("validated")
        if done["best"] is None or results["average"] > done["best"]["average"]:
            done["best"] = {"step": step, **results}
            if main:
                save_checkpoint(core, best_dir, seed=config.train.seed)

    def save_state(step: int) -> None:
        spent = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - started_cpu}
        states.save({**done, "step": step, **{k: done[k] + v for k, v in spent.items()}})

    if probes and resume is None:
        log({"step": 0, "probe_train_score": probes})
    model.train()
    started, started_cpu = time.perf_counter(), time.process_time()
    steps, every = config.train.steps, config.train.save_every
    progress = tqdm(range(done["step"] + 1, steps + 1), disable=quiet or not main, desc="train",
                    initial=done["step"], total=steps)
    with StopSignals() as stop, contextlib.ExitStack() as logs:
        if main:
            logs.callback(writer.close)
            logs.enter_context(metrics_log)
        for step in progress:
            micro_batches = stream.next()
            loss = 0.0
            for i, (batch, weight) in enumerate(micro_batches):
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                last = i == len(micro_batches) - 1  # gradients synchronise across processes once per step
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    micro_loss = model(**batch)["loss"]
                    fault("forward")
                    accelerator.backward(micro_loss if weight == 1.0 else micro_loss * weight)
                loss += micro_loss.item() * weight  # this process's share of the step's mean loss
            loss = _mean(accelerator, loss)  # the global batch's; not finite if any process's is not
            if not math.isfinite(loss):  # before the step: the weights stay good
                raise _non_finite(loss, step, core, micro_batches, run_dir, states.last, done["best"])
            if config.train.max_grad_norm:
                accelerator.clip_grad_norm_(core.parameters(), config.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            fault("step")
            done["running"] += loss
            if step % config.train.log_every == 0 or step == steps:
                count = step % config.train.log_every or config.train.log_every
                log({"step": step, "loss": done["running"] / count, "lr": scheduler.get_last_lr()[0]})
                if writer:
                    writer.add_scalar("train/loss", done["running"] / count, step)
                progress.set_postfix(loss=f"{done['running'] / count:.4f}")
                done["running"] = 0.0
            if step % config.train.eval_every == 0 or step == steps:
                validate(step)
            stopping = _any_process(accelerator, stop.requested)
            if stopping or (every and (step % every == 0 or step == steps)):
                save_state(step)
            if stopping:
                raise TrainingStopped(f"stopped after step {step} of {steps}, state saved; resume with: "
                                      f"hyperpelt train --resume {run_dir}")
    accelerator.wait_for_everyone()
    # the loop with its validations, not setup or the test; CPU time (all threads) is what the loop consumed,
    # which other jobs on the machine change far less than the wall-clock time
    train_seconds = done["seconds"] + time.perf_counter() - started
    train_cpu_seconds = done["cpu_seconds"] + time.process_time() - started_cpu
    load_checkpoint(best_dir, core)
    best = done["best"]
    return finish(core, data, config, run_dir, best_step=best["step"], validation=best, write=main,
                  train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds, version=version,
                  processes=accelerator)


def _mean(accelerator, value: float) -> float:
    """The mean of ``value`` over the processes."""
    if accelerator.num_processes == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(total, "mean").item()


def _any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (all of them agree, so they stop together)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), "sum").item())


def _non_finite(loss: float, step: int, model: TunedModel, micro_batches, run_dir: Path, last: int | None,
                best: dict | None):
    """The one-line error for a step whose loss is not finite, naming the tasks of its batch, the best
    checkpoint kept (if a validation made one) and the state to resume from (if one was saved)."""
    ids = sorted({int(i) for batch, _ in micro_batches for i in batch["task_ids"]})
    names = ", ".join(model.tasks[i].name for i in ids)
    kept = f"best/ (step {best['step']}) is kept" if best else "no best/ yet (no validation ran)"
    resume = (f"resume from the state of step {last} with: hyperpelt train --resume {run_dir}"
              if last is not None else "no training state was saved")
    return UserError(f"non-finite loss ({loss}) at step {step}, on a batch of task {names}; {kept}, {resume}")


def finish(model: TunedModel, data, config: RunConfig, run_dir: Path, best_step, validation,
           write: bool = True, train_seconds: float | None = None,
           train_cpu_seconds: float | None = None, version: str | None = None, processes=None) -> dict:
    """Score the test split with the loaded checkpoint; write results.json and report.md. ``version``: the
    code the run was made with (default: `code_version` now); ``processes``: see `evaluate`."""
    results = evaluate(model.predict_features, data, "test", config.train.eval_batch_size,
                       config.train.num_beams, config.eval.average, processes)
    trainable, total = model.parameter_counts()
    results.update(trainable_params=trainable, total_params=total, backbone_params=model.backbone_params)
    results.update(best_step=best_step, split="test", average_kind=config.eval.average,
                   train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds,
                   code_version=version or code_version(), machine=machine(), date=today())
    if validation is not None:
        results["validation_average"] = validation["average"]
        for kind in ("pooled", "per_task"):
            results[f"validation_average_{kind}"] = validation[f"average_{kind}"]
    if write:
        title = f"test results of {run_dir} (checkpoint of step {best_step})"
        write_text(run_dir / "report.md", "```\n" + results_table(results, title) + "\n```\n")
        write_text(run_dir / "results.json", json.dumps(results, indent=2))  # last: the run is finished
    return results
