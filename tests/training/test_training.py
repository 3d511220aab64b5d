"""One end-to-end training run on t5-tiny, and config validation."""

import json
import math

import pytest
from safetensors.torch import load_file

from hyperpelt.config import load_config
from hyperpelt.errors import UserError
from hyperpelt.provenance import code_version
from hyperpelt.run_folders import new_run_dir
from hyperpelt.training.hooks import POINTS, LoopHooks
from hyperpelt.training.trainer import train

OVERRIDES = [
    "model.name=t5-tiny", "model.pretrained=false", "model.max_input_length=64", "model.max_target_length=4",
    "method.prefix_length=4", "method.hyper_dim=16", "method.task_dim=16", "method.projector_hidden=32",
    "method.adapter_dim=8",
    "data.tasks=[rte, stsb]", "data.max_train_examples=32", "data.max_eval_examples=8",
    "train.steps=10", "train.eval_every=5", "train.log_every=5", "train.batch_size=4",
    "train.eval_batch_size=8",
    "train.learning_rate=0.01", "train.run_name=run",
]


def test_end_to_end_run(tmp_path):
    config = load_config(None, [*OVERRIDES, f"train.output_dir={tmp_path}"])
    assert config.method.prefix_length == 4 and config.data.tasks == ["rte", "stsb"]
    run_dir = new_run_dir(config, "test")
    assert run_dir == tmp_path / "run" and not run_dir.exists()
    hooks, reached = LoopHooks(), []
    for point in POINTS:
        hooks.on(point, reached.append)
    returned = train(config, run_dir, quiet=True, hooks=hooks)
    # one forward per step (no micro-batches), a validation after steps 5 and 10
    assert reached == (["forward", "step"] * 5 + ["validated"]) * 2

    results = json.loads((run_dir / "results.json").read_text())
    assert {"tasks", "average", "trainable_params", "total_params"} <= set(results)
    assert results["code_version"] == code_version() and results["train_cpu_seconds"] > 0
    assert set(results["tasks"]) == {"rte", "stsb"}
    for name, entry in results["tasks"].items():
        assert entry["metrics"], name
        assert isinstance(entry["score"], float) and math.isfinite(entry["score"])
        assert entry["examples"] == 8
    scores = [entry["score"] for entry in results["tasks"].values()]
    values = [v for entry in results["tasks"].values() for v in entry["metrics"].values()]
    assert results["average_per_task"] == pytest.approx(sum(scores) / len(scores))
    assert results["average_pooled"] == pytest.approx(sum(values) / len(values))
    assert results["average_kind"] == "pooled" and results["average"] == results["average_pooled"]
    report = (run_dir / "report.md").read_text()
    assert "average (pooled)" in report and "average (per_task)" in report
    assert 0 < results["trainable_params"] < 0.05 * results["total_params"]
    assert results["average"] == pytest.approx(returned["average"])

    weights = run_dir / "best" / "method.safetensors"
    assert weights.is_file()
    assert all(name.startswith("method.") or "layer_norm" in name for name in load_file(weights))
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.md").is_file()

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if r.get("split") == "validation"]
    assert [r["step"] for r in validation] == [5, 10]
    for record in validation:
        assert set(record["tasks"]) == {"rte", "stsb"}
        assert {"average", "average_pooled", "average_per_task"} <= set(record)
    assert results["best_step"] in (5, 10)
    best = max(validation, key=lambda r: r["average"])
    assert results["validation_average"] == pytest.approx(best["average"])
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [5, 10]
    assert all(math.isfinite(r["loss"]) for r in train_records)

    with pytest.raises(UserError, match="already exists"):
        new_run_dir(config, "test")
    assert new_run_dir(config, "test", check=False) == run_dir  # a non-main process takes the main's folder


def test_unknown_config_key_is_refused():
    with pytest.raises(UserError, match=r"train\.stepz"):
        load_config(None, ["train.stepz=3"])


def test_mistyped_config_value_is_refused():
    with pytest.raises(UserError, match=r"train\.steps"):
        load_config(None, ["train.steps=abc"])
    with pytest.raises(UserError, match=r"method\.prefix_lenght"):
        load_config(None, ["method.prefix_lenght=4"])
