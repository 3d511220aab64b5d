"""train.precision=bf16 trains the demo's recipe (MiniLM-L6, five GLUE tasks, the real data) to the float32
run's validation average within 2 points, on a 20-step schedule (every head probed on 300 examples, CoLA's
included, rather than 1,000 and all of CoLA: the test's time)."""

import pytest

from conftest import REAL_DATA, ROOT
from hyperpelt.config import load_config
from hyperpelt.training import trainer


@pytest.mark.requires_data
def test_bf16_trains_the_demo_recipe_as_float32_does(tmp_path):
    averages = {}
    for precision in ("no", "bf16"):
        config = load_config(ROOT / "configs" / "demo.yaml", [
            f"data.data_dir={REAL_DATA}", "train.steps=20", "train.eval_every=20",
            "data.max_eval_examples=40", "heads.probe_examples=300", "heads.probe_examples_by_task.cola=300",
            f"train.precision={precision}",
            f"train.output_dir={tmp_path}", f"train.run_name=precision-{precision}"])
        results = trainer.train(config, tmp_path / f"precision-{precision}", quiet=True)
        averages[precision] = results["validation_average"]
    assert averages["no"] > 55  # the float32 run learned (heads start as probes: well above chance)
    assert abs(averages["bf16"] - averages["no"]) <= 2.0, averages
