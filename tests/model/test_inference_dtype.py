"""Inference on a chosen device and dtype: ``load_run(run, device, dtype)``, batches on the model's device
(the collator's ``device``), devices this machine lacks refused in one line, and ``TunedModel.to``.

The agreement test loads one float32 MiniLM-L6 run of the demo's five tasks (20 steps, heads started as
probes) twice, in float32 and with its frozen host in bfloat16, and compares the answers on all 197
validation examples: at this writing all 172 class answers agree, and the 25 STS-B scores differ by at most
0.008 (float16: 0.001)."""

import math
import re

import pytest
import torch

from conftest import build_model, examples, perturb, t5_config, train_run
from hyperpelt.checkpoint import WEIGHTS
from hyperpelt.data.batches import Collator, load_task_data
from hyperpelt.devices import resolve_device
from hyperpelt.errors import UserError
from hyperpelt.inference import load_run, run_config
from hyperpelt.tasks import get_task

TASKS = ["rte", "mrpc", "stsb", "cola", "sst2"]  # the demo's
RUN = ["model.name=minilm-l6", "model.max_input_length=32", "method.prefix_length=4", "method.hyper_dim=16",
       "method.task_dim=16", "method.projector_hidden=32", "method.adapter_dim=8",
       f"data.tasks=[{','.join(TASKS)}]", "data.max_train_examples=32", "train.steps=20",
       "train.eval_every=20", "train.batch_size=8", "train.eval_batch_size=32", "train.learning_rate=1e-3",
       "heads.pair_encoding=separate", "heads.pair_head=alignment", "heads.probe_examples=64"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("dtype"), RUN)


def validation_answers(model, run_dir) -> dict[str, list]:
    """Every task's label values on all its validation examples."""
    data = load_task_data(model.tasks, model.encode, run_config(run_dir).data)
    return {d.task.name: model.predict_features(d.task_id, d.features["validation"], 32) for d in data}


# ------------------------------------------------------------------------------------------ dtype


def test_a_float32_run_loaded_in_bfloat16_agrees_with_float32(run_dir):
    full, half = load_run(run_dir, device="cpu"), load_run(run_dir, device="cpu", dtype="bfloat16")
    assert full.model_config.dtype == "float32" and half.model_config.dtype == "bfloat16"
    assert next(full.host.parameters()).dtype == torch.float32
    frozen = [p for p in half.host.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in half.parameters() if p.requires_grad)
    expected, got = validation_answers(full, run_dir), validation_answers(half, run_dir)
    stsb_full, stsb_half = expected.pop("stsb"), got.pop("stsb")
    assert len(stsb_full) == 25
    assert max(abs(a - b) for a, b in zip(stsb_full, stsb_half)) <= 0.05
    pairs = [(a, b) for task in expected for a, b in zip(expected[task], got[task])]
    assert len(pairs) == 172  # rte, mrpc and cola: 24 validation examples each, sst2: 100
    same = sum(a == b for a, b in pairs)
    assert same >= 0.98 * len(pairs), f"{same} of {len(pairs)} answers agree"
    assert sum(len(set(answers)) > 1 for answers in expected.values()) >= 3  # not constant answers


def test_a_torch_dtype_is_taken_as_its_name(run_dir):
    model = load_run(run_dir, device="cpu", dtype=torch.bfloat16)
    assert model.model_config.dtype == "bfloat16"
    with pytest.raises(UserError, match="unknown dtype 'float64'; give one of float32, bfloat16, float16"):
        load_run(run_dir, dtype="float64")


def test_float16_on_the_cpu_answers(run_dir):
    model = load_run(run_dir, device="cpu", dtype="float16")
    answers = model.predict("rte", examples("rte", 4, "validation")) + model.predict(
        "stsb", examples("stsb", 4, "validation"))
    assert answers[:4] and all(a in get_task("rte").label_names for a in answers[:4])
    scores = answers[4:]
    assert len(scores) == 4 and all(isinstance(a, float) and math.isfinite(a) for a in scores)


# ------------------------------------------------------------------------------------------ device


@pytest.mark.parametrize("device, says", [
    ("cuda", "CUDA is not available on this machine"), ("cuda:7", "CUDA is not available"),
    ("mps", "MPS (Apple silicon) is not available"), ("cdua", "unknown device 'cdua'"),
    ("meta", "device 'meta' is not supported"),
])
def test_a_device_this_machine_lacks_is_one_line(monkeypatch, device, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UserError, match=re.escape(says)) as err:
        resolve_device(device)
    assert "\n" not in str(err.value)


def test_a_cuda_index_past_the_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UserError, match="'cuda:7': this machine has 1 CUDA device"):
        resolve_device("cuda:7")


def test_the_default_device_is_cuda_when_available_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")


def test_load_run_refuses_a_missing_device_before_loading(run_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (run_dir / "best" / WEIGHTS).rename(run_dir / "best" / "moved")  # a load would fail on it
    try:
        with pytest.raises(UserError, match="CUDA is not available"):
            load_run(run_dir, device="cuda")
    finally:
        (run_dir / "best" / "moved").rename(run_dir / "best" / WEIGHTS)


def test_the_collator_puts_every_batch_tensor_on_its_device():
    model = build_model(t5_config())
    features = model.encode(get_task("rte"), examples("rte", 3))
    features[1]["image_id"] = "a"
    lookup = {"a": torch.ones(4, 3)}
    here = Collator(model.backbone, model.tokenizer, lookup)([*features], [0, 0, 0])
    there = Collator(model.backbone, model.tokenizer, lookup, device="meta")([*features], [0, 0, 0])
    assert set(here) == set(there) >= {"input_ids", "task_ids", "image_features", "labels"}
    assert all(t.device.type == "cpu" for t in here.values())
    assert all(t.device.type == "meta" and t.dtype == here[k].dtype for k, t in there.items())
    assert model.collator.device == model.device
    assert model.collator.with_images(lookup).device == model.device


def test_moving_the_model_makes_the_weight_table_again():
    model = build_model(t5_config(), tasks=("rte", "mrpc"))
    perturb(model)
    rows = examples("rte", 3, "validation")
    before = model.predict("rte", rows)
    assert model.weight_table_builds == 1
    moved = model.to("cpu")
    assert moved is model and model.device == torch.device("cpu")
    assert model.predict("rte", rows) == before
    assert model.weight_table_builds == 2  # made again after the move, not read from the old device
    model.to(torch.float64)  # every tensor the table held is now of another dtype
    assert model.predict("rte", rows) == before
    assert model.weight_table_builds == 3
