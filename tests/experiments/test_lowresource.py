"""Low-resource multi-task training: every task cut to n examples per seed, each method of the recipe
trained per n and seed, the averages tabled and plotted; a rerun trains nothing."""

import json

import matplotlib.image
import pytest
import yaml

from conftest import SMALL_METHOD
from hyperpelt.config import load_config
from hyperpelt.errors import UserError
from hyperpelt.experiments import lowresource as lr
from hyperpelt.training import trainer

BASE = {
    "model": {"name": "t5-tiny", "pretrained": False, "max_input_length": 64, "max_target_length": 4},
    "data": {"tasks": ["rte", "sst2"], "max_eval_examples": 8},
    "train": {"steps": 2, "eval_every": 2, "batch_size": 4, "eval_batch_size": 8, "learning_rate": 0.01},
}


def test_lowresource_trains_each_method_per_n_and_seed_and_plots_the_averages(tmp_path, monkeypatch):
    recipe = tmp_path / "tiny.yaml"
    methods = {"hyperpelt": {"method": SMALL_METHOD},
               "prompt": {"method": {"name": "prompt", "prompt_length": 2}}}
    recipe.write_text(yaml.safe_dump({"base": BASE, "seeds": [7], "report": "unused.md", "methods": methods}))
    folder, summary = lr.run_lowresource(recipe, [8, 16], 2, out=tmp_path / "out", progress=False)
    runs = {p.parent.name: json.loads(p.read_text()) for p in (folder / "runs").glob("*/results.json")}
    assert sorted(runs) == sorted(f"{m}-n{n}-seed{s}" for m in ("hyperpelt", "prompt") for n in (8, 16)
                                  for s in (0, 1))
    assert not list((folder / "runs").glob("*/states"))  # a finished run's training states are removed
    for label in ("hyperpelt", "prompt"):
        for n in (8, 16):
            cell = summary["methods"][label][str(n)]
            scores = [runs[f"{label}-n{n}-seed{s}"]["average"] for s in (0, 1)]
            assert cell["scores"] == scores and cell["mean"] == pytest.approx(sum(scores) / 2)
    config = load_config(folder / "runs" / "prompt-n16-seed1" / "config.yaml")
    assert (config.data.max_train_examples, config.data.train_sample_seed, config.train.seed) == (16, 1, 1)
    assert json.loads((folder / "lowresource.json").read_text()) == summary
    entry = summary["methods"]["prompt"]["8"]
    table = (folder / "lowresource.md").read_text()
    assert "| n | hyperpelt | prompt |" in table and "| 8 | " in table
    assert f"{entry['mean']:.2f} ± {entry['std']:.2f}" in table
    assert matplotlib.image.imread(folder / "lowresource.png").shape[:2] == (540, 840)

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("trained again"))
    assert lr.run_lowresource(recipe, [8, 16], 2, out=tmp_path / "out", progress=False)[1] == summary


def test_a_run_config_is_a_recipe_of_one_method_and_bad_recipes_are_refused(tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({**BASE, "method": {"name": "prompt"}}))
    folder, configs = lr.plan(config, [8], 1)
    assert folder.name == "lowresource-one" and list(configs) == [("prompt", 8, 0)]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": BASE, "methods": {"x": {"train": {"stepz": 1}}}}))
    with pytest.raises(UserError, match=r"methods\.x: .*train\.stepz"):
        lr.plan(bad, [8], 1)
    bad.write_text(yaml.safe_dump({"base": BASE, "methods": {"x": {}}, "sedes": [1]}))
    with pytest.raises(UserError, match="unknown keys sedes"):
        lr.plan(bad, [8], 1)
