"""The shipped recipes parse with the documented values, and the paper recipe trains at tiny scale."""

import json
from pathlib import Path

import pytest

from hyperpelt import load_config, train
from hyperpelt.training.trainer import new_run_dir

ROOT = Path(__file__).resolve().parents[1]
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]


def test_demo_config():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config.model.name == "minilm-l6" and config.model.max_input_length == 64
    assert config.model.pair_encoding == "separate"
    assert config.model.pair_head == "alignment"
    assert config.method == {"name": "hyperpelt", "prefix_length": 16, "hyper_dim": 32, "task_dim": 128,
                             "projector_hidden": 128, "adapter_dim": 8}
    assert config.data.tasks == ["rte", "mrpc", "stsb", "cola", "sst2"]
    assert config.data.source == "local" and config.data.temperature == 2.0
    assert config.data.max_eval_examples is None
    t = config.train
    assert (t.steps, t.batch_size, t.eval_batch_size, t.learning_rate, t.head_learning_rate, t.eval_every,
            t.output_dir, t.seed) == (
        400, 32, 128, 1e-3, 3e-4, 200, "runs", 42)
    assert t.probe_heads == 1000 and t.probe_examples == {"cola": 8551} and t.balanced_classes == ["cola"]


def test_glue_t5_base_config_is_the_paper_recipe():
    config = load_config(ROOT / "configs" / "glue_t5_base.yaml")
    assert config.model.name == "t5-base" and config.model.pretrained
    assert config.method["name"] == "hyperpelt"
    assert config.method["prefix_length"] == 49 and config.method["hyper_dim"] == 64
    assert config.method.get("task_dim") is None  # d_tau = d_model
    assert config.data.tasks == GLUE and config.data.source == "hub" and config.data.temperature == 2.0
    t = config.train
    assert (t.steps, t.batch_size, t.learning_rate, t.schedule, t.eval_every) == (
        262144, 128, 1e-3, "constant", 1000)


def test_glue_t5_base_recipe_trains_at_tiny_scale(tmp_path):
    config = load_config(ROOT / "configs" / "glue_t5_base.yaml", [
        "model.name=t5-tiny", "model.pretrained=false", "data.source=local", "data.tasks=[rte,stsb]",
        "data.max_train_examples=16", "data.max_eval_examples=8", "train.steps=2", "train.eval_every=2",
        "train.batch_size=4", "train.eval_batch_size=8", "method.prefix_length=4",
        f"train.output_dir={tmp_path}",
    ])
    run_dir = new_run_dir(config, "glue_t5_base")
    results = train(config, run_dir, quiet=True)
    written = json.loads((run_dir / "results.json").read_text())
    assert set(written["tasks"]) == {"rte", "stsb"} == set(results["tasks"])
    assert written["best_step"] == 2


def test_probe_examples_replace_probe_heads_for_the_tasks_they_name():
    from hyperpelt.errors import UserError

    config = load_config(None, ["data.tasks=[rte, cola]", "train.probe_heads=10",
                                "train.probe_examples={cola: 100}"])
    assert config.train.probe_counts(config.data.tasks) == {"rte": 10, "cola": 100}
    # its probe_examples name cola
    demo_on_rte = load_config(ROOT / "configs" / "demo.yaml", ["data.tasks=[rte]"])
    assert demo_on_rte.train.probe_counts(demo_on_rte.data.tasks) == {"rte": 1000}
    with pytest.raises(UserError, match="demo.yaml: train.probe_examples names unknown task 'cloa'"):
        load_config(ROOT / "configs" / "demo.yaml", ["train.probe_examples={cloa: 5}"])
    with pytest.raises(UserError, match="train.probe_examples.rte must be a whole number"):
        load_config(None, ["train.probe_examples={rte: -1}"])


@pytest.mark.parametrize("override, named", [("train.steps=0", "train.steps"),
                                             ("train.schedule=cosine", "train.schedule"),
                                             ("train.probe_heads=-1", "train.probe_heads")])
def test_train_options_out_of_range_are_refused(override, named):
    from hyperpelt.errors import UserError

    with pytest.raises(UserError, match=named):
        load_config(None, [override])
