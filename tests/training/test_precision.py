"""Training in mixed precision (train.precision) and over a half-precision host (model.dtype): autocast,
float32 weights and checkpoints, the launcher's choice, fp16's skipped steps, and what is refused."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from hyperpelt.checkpoint import load_checkpoint
from hyperpelt.config import load_config
from hyperpelt.errors import UserError
from hyperpelt.model import TunedModel
from hyperpelt.training import trainer
from hyperpelt.training.accelerator import LAUNCHER_PRECISION, make_accelerator

OVERRIDES = [
    "model.name=t5-tiny", "model.pretrained=false", "model.max_input_length=32", "model.max_target_length=4",
    "method.prefix_length=4", "method.hyper_dim=16", "method.task_dim=16", "method.projector_hidden=32",
    "method.adapter_dim=8", "data.tasks=[rte]", "data.max_train_examples=16", "data.max_eval_examples=4",
    "train.steps=2", "train.eval_every=2", "train.log_every=2", "train.batch_size=4",
    "train.eval_batch_size=4", "train.learning_rate=0.01", "train.run_name=run",
]


def config_of(tmp_path, *overrides):
    return load_config(None, [*OVERRIDES, f"train.output_dir={tmp_path}", *overrides])


def model_of(config) -> TunedModel:
    tasks = [config.data.registry.get(name) for name in config.data.tasks]
    torch.manual_seed(config.train.seed)
    return TunedModel(config.model, config.method, tasks, config.heads, config.data.task_prefix)


def losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_bf16_mixed_precision_trains_under_autocast_with_float32_weights(tmp_path):
    config = config_of(tmp_path, "train.precision=bf16")
    model = model_of(config)
    seen = []  # (autocast on, output dtype) of a host matmul, at each training forward
    query = model.host.encoder.block[0].layer[0].SelfAttention.q
    query.register_forward_hook(
        lambda module, args, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        if torch.is_grad_enabled() else None)
    results = trainer.train(config, tmp_path / "run", quiet=True, model=model)
    assert seen == [(True, torch.bfloat16)] * config.train.steps
    assert all(math.isfinite(loss) for loss in losses(tmp_path / "run")) and math.isfinite(results["average"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    weights = load_file(tmp_path / "run" / "best" / "method.safetensors")
    assert weights and {t.dtype for t in weights.values()} == {torch.float32}


def test_a_bfloat16_host_trains_saves_float32_and_loads_again(tmp_path):
    config = config_of(tmp_path, "model.dtype=bfloat16")
    trainer.train(config, tmp_path / "run", quiet=True)
    assert all(math.isfinite(loss) for loss in losses(tmp_path / "run"))
    best = tmp_path / "run" / "best"
    saved = load_file(best / "method.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
    loaded = load_checkpoint(best)  # built from the checkpoint's config: model.dtype bfloat16
    assert loaded.model_config.dtype == "bfloat16" and loaded.compute_dtype == torch.bfloat16
    assert {p.dtype for p in loaded.parameters() if not p.requires_grad} == {torch.bfloat16}
    trained = loaded.trainable_state_dict()
    assert trained.keys() == saved.keys()
    assert all(torch.equal(trained[name], saved[name]) for name in saved)


def test_fp16_skips_a_step_whose_loss_is_not_finite(tmp_path, monkeypatch):
    """Accelerate's fp16 gradient scaler (a CPU GradScaler here: Accelerate gives one only on a GPU) skips
    the step of a non-finite loss and lowers its scale; the run goes on, the skipped step left out of the
    logged loss. Without a scaler the same loss stops the run (test_training)."""
    config = config_of(tmp_path, "train.steps=3", "train.log_every=3", "train.eval_every=3")
    scalers = []

    def with_scaler(world, precision):
        accelerator = make_accelerator(world, precision)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        scalers.append(accelerator.scaler)
        return accelerator

    monkeypatch.setattr(trainer, "make_accelerator", with_scaler)
    made = []
    optimizer_and_schedule = trainer.optimizer_and_schedule
    monkeypatch.setattr(trainer, "optimizer_and_schedule",
                        lambda *args: made.append(optimizer_and_schedule(*args)) or made[-1])
    model = model_of(config)
    forward, calls = model.forward, []

    def second_step_overflows(*args, **kwargs):
        out = forward(*args, **kwargs)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == 2:
                out.loss = out.loss * math.inf
        return out

    model.forward = second_step_overflows
    trainer.train(config, tmp_path / "run", quiet=True, model=model)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r]
    assert len(logged) == 1 and logged[0]["skipped_steps"] == 1 and math.isfinite(logged[0]["loss"])
    assert scalers[0].get_scale() == 2.0**7  # halved once, at the skipped step
    optimizer, scheduler = made[0]
    assert {int(state["step"]) for state in optimizer.state.values()} == {2}  # stepped at steps 1 and 3
    assert scheduler.last_epoch == 2


def test_precision_no_leaves_mixed_precision_to_the_launcher(monkeypatch):
    monkeypatch.setenv(LAUNCHER_PRECISION, "bf16")
    assert make_accelerator(1, "no").mixed_precision == "bf16"
    assert make_accelerator(1, "bf16").mixed_precision == "bf16"
    monkeypatch.setenv(LAUNCHER_PRECISION, "fp16")
    with pytest.raises(UserError, match="precision is bf16 but the launcher asks for mixed precision fp16"):
        make_accelerator(1, "bf16")
    monkeypatch.delenv(LAUNCHER_PRECISION)
    # one process may train in several precisions, one run after another
    assert make_accelerator(1, "no").mixed_precision == "no"
    assert make_accelerator(1, "bf16").mixed_precision == "bf16"
    assert make_accelerator(1, "no").mixed_precision == "no"


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 mixed precision runs on a GPU")
def test_fp16_on_the_cpu_is_one_line(monkeypatch):
    monkeypatch.delenv(LAUNCHER_PRECISION, raising=False)
    with pytest.raises(UserError, match="fp16 .* needs a GPU") as err:
        make_accelerator(1, "fp16")
    assert "\n" not in str(err.value)
    assert make_accelerator(1, "no").mixed_precision == "no"


def test_precision_and_dtype_are_checked():
    assert load_config(None, ["train.precision=no"]).train.precision == "no"  # YAML reads no as false
    assert load_config(None, ["train.precision=bf16", "model.dtype=bfloat16"]).model.dtype == "bfloat16"
    with pytest.raises(UserError, match="'train.precision' expects one of 'no', 'bf16', 'fp16'"):
        load_config(None, ["train.precision=fp32"])
    with pytest.raises(UserError, match="'model.dtype' expects one of 'float32', 'bfloat16', 'float16'"):
        load_config(None, ["model.dtype=half"])
