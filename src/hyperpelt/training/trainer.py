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
from accelerate.utils import broadcast_object_list, set_seed
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
from ..heads import prepare_heads
from ..model import TunedModel
from ..provenance import code_version, machine, today
from ..vision.cache import optional_features
from .accelerator import make_accelerator
from .hooks import LoopHooks, fault_hooks
from .lock import run_lock
from .optim import optimizer_and_schedule
from .signals import StopSignals, TrainingStopped
from .state import States


def train(config: RunConfig, run_dir: Path, quiet: bool = False, model: TunedModel | None = None,
          resume: Path | None = None, hooks: LoopHooks | None = None) -> dict:
    """Train, select the best-average checkpoint on validation, and return its test results. ``model``
    (e.g. a trained run grown by a new task, see ``hyperpelt.transfer``) is trained instead of a model
    built from the config; ``config.data.tasks`` names the tasks it trains on, and it ends holding the best
    checkpoint. ``resume``: a training state of ``run_dir`` to continue from (see `state.resume_point`).
    ``hooks``: calls at the loop's named points (default: `fault_hooks`). SIGINT or SIGTERM stops the run
    after its step with the state saved: `TrainingStopped`. The main process holds the run folder's lock
    (see `lock`) while it trains: a second process that trains the same run is refused."""
    with contextlib.ExitStack() as lock:
        if resume is not None and os.environ.get("RANK", "0") == "0":
            lock.enter_context(run_lock(Path(run_dir)))  # before anything loads
        return _train(config, run_dir, quiet, model, resume, hooks, lock)


def _train(config: RunConfig, run_dir: Path, quiet: bool, model: TunedModel | None, resume: Path | None,
           hooks: LoopHooks | None, lock: contextlib.ExitStack) -> dict:
    version = code_version()  # before training: the code may change in the checkout while this runs
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    model, data = _model_and_data(config, model, world)
    accelerator = make_accelerator(world, config.train.precision)
    run_dir = Path(broadcast_object_list([str(run_dir)])[0])  # one folder for all processes
    # every process fits the same probe starts from the same examples
    probes = prepare_heads(model.heads, model.collator, model.encode_batch, data, config.heads,
                           config.train.eval_batch_size, config.train.seed,
                           progress=accelerator.is_main_process and not quiet)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=resume is not None)
        if resume is None:
            lock.enter_context(run_lock(run_dir))
        write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    accelerator.wait_for_everyone()
    loop = _Loop(config, run_dir, model, data, accelerator, fault_hooks() if hooks is None else hooks)
    loop.start(resume, probes)
    steps = config.train.steps
    progress = tqdm(range(loop.done["step"] + 1, steps + 1), disable=quiet or not loop.main, desc="train",
                    initial=loop.done["step"], total=steps)
    with StopSignals() as stop, loop.logs:
        for step in progress:
            loss = loop.step(step)
            loop.report(step, loss, progress)
            loop.keep(step, stop.requested)
    accelerator.wait_for_everyone()
    seconds, cpu_seconds = loop.spent()
    load_checkpoint(loop.best_dir, loop.core)
    best = loop.done["best"]
    return finish(loop.core, data, config, run_dir, best_step=best["step"], validation=best, write=loop.main,
                  train_seconds=seconds, train_cpu_seconds=cpu_seconds, version=version,
                  processes=accelerator)


def _model_and_data(config: RunConfig, model: TunedModel | None, world: int):
    """The model (built from the config unless given) with the run's image features, and its encoded
    task data."""
    tasks = [config.data.registry.get(name) for name in config.data.tasks]
    # a batch that does not split over the ``world`` processes fails here, before any model loads;
    # creating accelerate's state this early would fix it to one process
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
    return model, load_task_data(model.tasks, model.encode, config.data)


class _Loop:
    """One run's steps: the prepared model, optimizer and batch stream, the loop's bookkeeping (``done``:
    saved with each state) and its logs (metrics.jsonl and TensorBoard, on the main process)."""

    def __init__(self, config: RunConfig, run_dir: Path, model: TunedModel, data, accelerator,
                 hooks: LoopHooks):
        self.config, self.run_dir, self.data, self.hooks = config, run_dir, data, hooks
        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.optimizer, self.scheduler = optimizer_and_schedule(model, config.train,
                                                                config.heads.learning_rate)
        # the scheduler stays ours: Accelerate's wrapper would step it once per process at each optimizer step
        self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        self.core = accelerator.unwrap_model(self.model)
        self.stream = BatchStream(data, self.core.collator, config.train.batch_size,
                                  config.data.temperature, config.data.mixed_batches, config.train.seed,
                                  accelerator.process_index, accelerator.num_processes,
                                  config.train.micro_batch_size)
        self.states = States(run_dir, config, self.core, self.optimizer, self.scheduler, self.stream,
                             accelerator)
        self.done = {"step": 0, "best": None, "running": 0.0, "metrics": [], "seconds": 0.0,
                     "cpu_seconds": 0.0}
        self.best_dir, self.logs = run_dir / "best", contextlib.ExitStack()
        self.writer = self.metrics_log = None

    def start(self, resume: Path | None, probes) -> None:
        """Load the state to resume from (if any), open the logs, and start the clocks."""
        if resume is not None:
            self.done = self.states.load(resume)
            if self.main:
                write_text(self.run_dir / "metrics.jsonl",
                           "".join(json.dumps(r) + "\n" for r in self.done["metrics"]))
        if self.main:
            self.writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.done["step"] + 1)
            self.logs.callback(self.writer.close)
            self.metrics_log = self.logs.enter_context((self.run_dir / "metrics.jsonl").open("a"))
        if probes and resume is None:
            self.log({"step": 0, "probe_train_score": probes})
        self.model.train()
        self.started, self.started_cpu = time.perf_counter(), time.process_time()

    def step(self, step: int) -> float:
        """One optimizer step over the global batch (its micro-batches' gradients accumulated); returns
        the batch's mean loss."""
        micro_batches, loss, accelerator = self.stream.next(), 0.0, self.accelerator
        for i, (batch, weight) in enumerate(micro_batches):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            last = i == len(micro_batches) - 1  # gradients synchronise across processes once per step
            with contextlib.nullcontext() if last else accelerator.no_sync(self.model):
                micro_loss = self.model(**batch)["loss"]
                self.hooks("forward")
                accelerator.backward(micro_loss if weight == 1.0 else micro_loss * weight)
            loss += micro_loss.item() * weight  # this process's share of the step's mean loss
        loss = _mean(accelerator, loss)  # the global batch's; not finite if any process's is not
        # before the step: the weights stay good; under fp16 the gradient scaler skips the step instead
        if not math.isfinite(loss) and accelerator.scaler is None:
            raise _non_finite(loss, step, self.core, micro_batches, self.run_dir, self.states.last,
                              self.done["best"])
        if self.config.train.max_grad_norm:
            accelerator.clip_grad_norm_(self.core.parameters(), self.config.train.max_grad_norm)
        self.optimizer.step()
        if not self.optimizer.step_was_skipped:  # as Accelerate's scheduler: no step where fp16 skipped one
            self.scheduler.step()
        self.optimizer.zero_grad()
        self.hooks("step")
        return loss

    def report(self, step: int, loss: float, progress) -> None:
        """Log the mean loss every ``log_every`` steps (and at the end); validate every ``eval_every``."""
        train, steps = self.config.train, self.config.train.steps
        if math.isfinite(loss):
            self.done["running"] += loss
        else:  # a step the fp16 gradient scaler skipped (see step)
            self.done["skipped"] = self.done.get("skipped", 0) + 1
        if step % train.log_every == 0 or step == steps:
            skipped = self.done.pop("skipped", 0)
            counted = (step % train.log_every or train.log_every) - skipped
            mean = self.done["running"] / counted if counted else math.nan
            self.log({"step": step, "loss": mean, "lr": self.scheduler.get_last_lr()[0],
                      **({"skipped_steps": skipped} if skipped else {})})
            if self.writer:
                self.writer.add_scalar("train/loss", mean, step)
            progress.set_postfix(loss=f"{mean:.4f}")
            self.done["running"] = 0.0
        if step % train.eval_every == 0 or step == steps:
            self.validate(step)

    def validate(self, step: int) -> None:
        """Score the validation split; a better average than any before becomes best/."""
        train = self.config.train
        results = evaluate(self.core.predict_features, self.data, "validation", train.eval_batch_size,
                           train.num_beams, self.config.eval.average, self.accelerator)
        self.log({"step": step, "split": "validation", **results})
        if self.writer:
            for kind in ("pooled", "per_task"):
                self.writer.add_scalar(f"validation/average_{kind}", results[f"average_{kind}"], step)
            for name, entry in results["tasks"].items():
                self.writer.add_scalar(f"validation/{name}", entry["score"], step)
        self.hooks("validated")
        if self.done["best"] is None or results["average"] > self.done["best"]["average"]:
            self.done["best"] = {"step": step, **results}
            if self.main:
                save_checkpoint(self.core, self.best_dir, seed=train.seed, registry=self.config.data.registry)

    def keep(self, step: int, stop_requested: bool) -> None:
        """Save the training state every ``save_every`` steps, at the end, and when any process was asked
        to stop (then stop: `TrainingStopped`)."""
        steps, every = self.config.train.steps, self.config.train.save_every
        stopping = _any_process(self.accelerator, stop_requested)
        if stopping or (every and (step % every == 0 or step == steps)):
            seconds, cpu_seconds = self.spent()
            self.states.save({**self.done, "step": step, "seconds": seconds, "cpu_seconds": cpu_seconds})
        if stopping:
            raise TrainingStopped(f"stopped after step {step} of {steps}, state saved; resume with: "
                                  f"hyperpelt train --resume {self.run_dir}")

    def log(self, record: dict) -> None:
        self.done["metrics"].append(record)
        if self.metrics_log:
            self.metrics_log.write(json.dumps(record) + "\n")
            self.metrics_log.flush()

    def spent(self) -> tuple[float, float]:
        """The loop's wall-clock and CPU seconds (all threads) so far, over every segment of the run: what
        the loop consumed with its validations, not setup or the test; other jobs on the machine change
        the CPU time far less than the wall-clock time."""
        return (self.done["seconds"] + time.perf_counter() - self.started,
                self.done["cpu_seconds"] + time.process_time() - self.started_cpu)


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
