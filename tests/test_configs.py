"""The shipped recipes parse with the documented values, and the paper recipe trains at tiny scale."""

import json
import warnings
from pathlib import Path

import pytest

from hyperpelt import load_config, train
from hyperpelt.errors import UserError
from hyperpelt.heads import HeadsConfig
from hyperpelt.methods import method_options
from hyperpelt.methods.hyperpelt import HyperPELTConfig
from hyperpelt.run_folders import new_run_dir

ROOT = Path(__file__).resolve().parents[1]
GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
DEMO_METHOD = {"name": "hyperpelt", "prefix_length": 16, "hyper_dim": 32, "task_dim": 128,
               "projector_hidden": 128, "adapter_dim": 8}


def test_demo_config():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config.model.name == "minilm-l6" and config.model.max_input_length == 64
    h = config.heads
    assert h.pair_encoding == "separate" and h.pair_head == "alignment" and h.learning_rate == 3e-4
    assert (h.probe_examples == 1000 and h.probe_examples_by_task == {"cola": 8551}
            and h.balanced_classes == ["cola"])
    method = {k: v for k, v in method_options(config.method).items() if k in DEMO_METHOD}
    assert method == DEMO_METHOD
    assert config.data.tasks == ["rte", "mrpc", "stsb", "cola", "sst2"]
    assert (config.data.source == "auto" and config.data.temperature == 2.0
            and config.data.max_eval_examples is None)
    t = config.train
    assert (t.steps, t.batch_size, t.eval_batch_size, t.learning_rate, t.eval_every, t.output_dir,
            t.seed) == (400, 32, 128, 1e-3, 200, "runs", 42)
    assert (t.optimizer, t.max_grad_norm, t.micro_batch_size) == ("adamw", 1.0, None)  # as before the keys


def test_glue_t5_base_config_is_the_paper_recipe():
    config = load_config(ROOT / "configs" / "glue_t5_base.yaml")
    assert config.model.name == "t5-base" and config.model.pretrained
    assert method_options(config.method)["name"] == "hyperpelt"
    assert config.method.prefix_length == 49 and config.method.hyper_dim == 64
    assert config.method.task_dim is None  # d_tau = d_model
    assert config.data.tasks == GLUE and config.data.source == "hub" and config.data.temperature == 2.0
    t = config.train
    assert (t.steps, t.batch_size, t.learning_rate, t.schedule, t.eval_every) == (
        262144, 128, 1e-3, "constant", 1000)
    assert (t.optimizer, t.max_grad_norm, t.micro_batch_size) == ("adafactor", None, None)
    assert config.data.task_prefix is True and config.eval.average == "pooled"


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


def test_probe_examples_by_task_replace_probe_examples_for_the_tasks_they_name():
    config = load_config(None, ["model.name=minilm-l6", "data.tasks=[rte, cola]", "heads.probe_examples=10",
                                "heads.probe_examples_by_task={cola: 100}"])
    assert config.heads.probe_counts(config.data.tasks) == {"rte": 10, "cola": 100}
    # its by-task probes name cola
    demo_on_rte = load_config(ROOT / "configs" / "demo.yaml", ["data.tasks=[rte]"])
    assert demo_on_rte.heads.probe_counts(demo_on_rte.data.tasks) == {"rte": 1000}
    with pytest.raises(UserError, match="demo.yaml: heads.probe_examples_by_task names unknown task 'cloa'"):
        load_config(ROOT / "configs" / "demo.yaml", ["heads.probe_examples_by_task={cloa: 5}"])
    with pytest.raises(UserError, match="heads.probe_examples_by_task.rte must be a whole number"):
        load_config(None, ["model.name=minilm-l6", "heads.probe_examples_by_task={rte: -1}"])


@pytest.mark.parametrize("override, named", [("train.steps=0", "train.steps"),
                                             ("train.schedule=cosine", "train.schedule"),
                                             ("heads.probe_examples=-1", "heads.probe_examples"),
                                             ("heads.pair_head=align", "heads.pair_head"),
                                             ("method.adapter_activation=swish", "method.adapter_activation"),
                                             ("data.source=web", "data.source")])
def test_options_out_of_range_are_refused(override, named):
    with pytest.raises(UserError, match=named):
        load_config(None, ["model.name=minilm-l6", override])


def test_head_options_on_a_text_to_text_model_are_refused_at_load():
    with pytest.raises(UserError, match="heads.balanced_classes applies to encoder backbones.*t5-tiny"):
        load_config(None, ["model.name=t5-tiny", "heads.balanced_classes=[rte]"])
    demo_on_t5 = load_config(ROOT / "configs" / "demo.yaml", ["model.name=t5-tiny", "heads={}"])
    assert demo_on_t5.heads == HeadsConfig()


def test_a_mistyped_method_key_fails_at_load_naming_it():
    with pytest.raises(UserError, match="method.prefix_lenght"):
        load_config(ROOT / "configs" / "demo.yaml", ["method.prefix_lenght=8"])
    assert load_config(None).method == HyperPELTConfig()  # one default method


def test_glue_t5_base_hyperformer_config_is_hyperformer_plus_plus_recipe():
    config = load_config(ROOT / "configs" / "glue_t5_base_hyperformer.yaml")
    assert config.model.name == "t5-base" and config.model.pretrained
    method = method_options(config.method)
    assert method["name"] == "hyperformer++" and config.method.shared
    sizes = (config.method.reduction_factor, config.method.task_dim, config.method.task_feature_dim)
    assert sizes == (32, 64, 512)
    assert config.data.tasks == GLUE and config.data.source == "hub" and config.data.temperature == 10.0
    assert config.data.task_prefix is False
    t = config.train
    assert (t.steps, t.batch_size, t.learning_rate, t.schedule, t.warmup_steps, t.eval_every) == (
        2**18, 32, 3e-4, "constant", 0, 1000)
    assert (t.optimizer, t.max_grad_norm) == ("adamw", 1.0) and config.eval.average == "pooled"


def test_glue_t5_base_hyperformer_recipe_trains_at_tiny_scale(tmp_path):
    config = load_config(ROOT / "configs" / "glue_t5_base_hyperformer.yaml", [
        "model.name=t5-tiny", "model.pretrained=false", "data.source=local", "data.tasks=[rte,stsb]",
        "data.max_train_examples=16", "data.max_eval_examples=8", "train.steps=2", "train.eval_every=2",
        "train.batch_size=4", "train.eval_batch_size=8", "method.task_dim=8", "method.projector_hidden=16",
        "method.reduction_factor=8", f"train.output_dir={tmp_path}",
    ])
    run_dir = new_run_dir(config, "glue_t5_base_hyperformer")
    results = train(config, run_dir, quiet=True)
    written = json.loads((run_dir / "results.json").read_text())
    assert set(written["tasks"]) == {"rte", "stsb"} == set(results["tasks"])
    assert written["best_step"] == 2 and written["average_kind"] == "pooled"
    assert json.loads((run_dir / "best" / "checkpoint.json").read_text())["task_prefix"] is False


def test_configs_written_before_the_heads_section_still_load():
    old = ["model.name=minilm-l6", "model.pair_encoding=separate", "train.probe_heads=7",
           "train.probe_examples={cola: 9}", "train.head_learning_rate=0.5", "train.balanced_classes=[cola]"]
    with pytest.warns(FutureWarning, match="train.probe_heads' is now 'heads.probe_examples'"):
        config = load_config(None, old)
    h = config.heads
    assert (h.pair_encoding, h.probe_examples, h.probe_examples_by_task) == ("separate", 7, {"cola": 9})
    assert (h.learning_rate, h.balanced_classes) == (0.5, ["cola"])
    with pytest.raises(UserError, match="'train.probe_heads' is now 'heads.probe_examples'; give only"):
        load_config(None, ["model.name=minilm-l6", "train.probe_heads=7", "heads.probe_examples=3"])


def test_configs_naming_the_feature_cache_data_image_features_still_load():
    with pytest.warns(FutureWarning, match="'data.image_features' is now 'data.feature_cache'"):
        config = load_config(None, ["data.image_features=features/x.safetensors"])
    assert config.data.feature_cache == "features/x.safetensors"
    with warnings.catch_warnings():  # old run folders hold data.image_features: null (the default)
        warnings.simplefilter("error")
        assert load_config(None, ["data.image_features=null"]).data.feature_cache is None
        given = load_config(None, ["data.image_features=null", "data.feature_cache=b"])
        assert given.data.feature_cache == "b"  # `hyperpelt eval OLD_RUN data.feature_cache=b`
    with pytest.raises(UserError, match="'data.image_features' is now 'data.feature_cache'; give only"):
        load_config(None, ["data.image_features=a", "data.feature_cache=b"])


def test_checkpoints_written_before_the_heads_section_still_load_without_a_warning(tmp_path, recwarn):
    from hyperpelt.checkpoint import read_checkpoint_config

    old = {"model": {"name": "minilm-l6", "pair_encoding": "separate", "pooling": "first"},
           "method": {"name": "hyperpelt"}, "tasks": ["cola"]}
    (tmp_path / "method_config.json").write_text(json.dumps(old))
    meta = read_checkpoint_config(tmp_path)
    assert meta["heads"] == {"pair_encoding": "separate", "pooling": "first"}
    assert meta["model"] == {"name": "minilm-l6"} and not recwarn.list


def test_vl_easyvqa_config_is_vl_hyperpelt_on_the_easy_vqa_grid():
    config = load_config(ROOT / "configs" / "vl_easyvqa.yaml")
    options = method_options(config.method)
    assert options["name"] == "vl-hyperpelt" and options["feature_dim"] == 1280
    assert options["prefix_length"] == 49  # the 7x7 grid, as the paper's N
    visual = (options["visual_prefix"], options["visual_adapter"], options["visual_input"])
    assert visual == (True, True, "none")
    assert config.data.tasks == ["easy_vqa"]
    assert config.data.feature_cache == "features/easy_vqa.efficientnet-lite0.safetensors"
    script = (ROOT / "scripts" / "demo_vl.sh").read_text()
    assert f"--out {config.data.feature_cache}" in script and "configs/vl_easyvqa.yaml" in script


def test_vl_comparison_runs_every_method_on_one_schedule():
    from hyperpelt.experiments.compare import load_comparison, run_configs

    spec = load_comparison(ROOT / "configs" / "compare_vl_easyvqa.yaml")
    configs = run_configs(spec)
    assert {label for label, _ in configs} == {"vl-hyperpelt", "vl-adapter", "clip-t5", "question-only"}
    schedules = {(c.train.steps, c.train.batch_size, c.train.learning_rate) for c in configs.values()
                 if method_options(c.method)["name"] != "clip-t5"}  # full fine-tuning: its own rate
    demo = load_config(ROOT / "configs" / "vl_easyvqa.yaml").train
    assert schedules == {(demo.steps, demo.batch_size, demo.learning_rate)} and spec["other_images"] is True
    for (label, _), config in configs.items():
        assert (config.data.feature_cache is None) == (label == "question-only")
