"""Parameter accounting reproduces the papers' trained-per-task figures (counted on built modules)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hyperpelt.accounting import PAPER, count_parameters

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("model", "method"), list(PAPER))
def test_trained_per_task_within_ten_percent_of_the_paper(model, method):
    paper_pct, paper_multiple = PAPER[(model, method)]
    counts = count_parameters(model, {"name": method}, 8)
    assert counts["trained_per_task_pct"] == pytest.approx(paper_pct, rel=0.10)
    if method in ("hyperformer", "hyperformer++", "hyperpelt", "full"):
        assert counts["total_multiple"] == pytest.approx(paper_multiple, rel=0.02)


def test_counts_are_consistent():
    counts = count_parameters("t5-small", {"name": "adapters-shared"}, 8)
    assert counts["backbone_params"] == 60_506_624  # T5-small with tied embeddings
    # layer norms are in both
    assert counts["total_params"] == counts["backbone_params"] + counts["trainable_params"] - 16_384
    assert counts["total_multiple"] == counts["total_params"] / counts["backbone_params"]


def test_more_tasks_cost_hyperformer_plus_plus_only_embeddings():
    eight = count_parameters("t5-small", {"name": "hyperformer++"}, 8)["trainable_params"]
    nine = count_parameters("t5-small", {"name": "hyperformer++"}, 9)["trainable_params"]
    assert nine - eight == 64  # one task embedding of size t
    eight = count_parameters("t5-small", {"name": "adapters-shared"}, 8)["trainable_params"]
    nine = count_parameters("t5-small", {"name": "adapters-shared"}, 9)["trainable_params"]
    assert nine - eight == 24 * (2 * 512 * 16 + 16 + 512)  # 24 more adapters; their layer norms are shared


def test_hyperpelt_variants_drop_their_generators():
    both = count_parameters("t5-small", {"name": "hyperpelt"}, 8)["trainable_params"]
    prefix = count_parameters("t5-small", {"name": "hyperpelt", "use_adapter": False}, 8)["trainable_params"]
    adapter = count_parameters("t5-small", {"name": "hyperpelt", "use_prefix": False}, 8)["trainable_params"]
    assert prefix < both and adapter < both
    assert both - prefix == 2 * (64 * 32 * 512 + 32 * 512) + 12  # down/up generators and the 12 scales λ


@pytest.mark.parametrize("method", ["hyperpelt", "hyperformer++"])
def test_params_cli_needs_no_data_and_no_download(tmp_path, method):
    """Counting builds the architecture only: no tokenizer, no data folder, no hub."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
           "HYPERPELT_DATA_DIR": str(tmp_path / "empty")}
    command = [sys.executable, "-m", "hyperpelt", "params", "--model", "t5-base", "--method", method]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["method"] == method  # hyperformer++ reports its own name


def test_params_cli_json():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "hyperpelt", "params", "--model", "t5-base", "--method", "hyperpelt",
         "--tasks", "8", "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, check=True,
    ).stdout
    counts = json.loads(out)
    assert set(counts) == {"method", "backbone_params", "total_params", "trainable_params", "total_multiple",
                           "trained_pct", "trained_per_task_pct"}
    assert counts["trained_pct"] == pytest.approx(8 * counts["trained_per_task_pct"])
    assert counts["method"] == "hyperpelt"
    assert counts["trained_per_task_pct"] == pytest.approx(0.24, rel=0.10)


def test_vl_counts_are_hyperpelt_plus_the_visual_path():
    text = count_parameters("t5-base", {"name": "hyperpelt"}, 4)
    off = count_parameters("t5-base", {"name": "vl-hyperpelt", "visual_prefix": False,
                                       "visual_adapter": False}, 4)
    assert off["trainable_params"] == text["trainable_params"]
    vl = count_parameters("t5-base", {"name": "vl-hyperpelt"}, 4)
    d, d_i, hidden, m, features = 768, 64, 128, 32, 2048  # d_τ = d_model; 2048-d CLIP RN101 grid
    visual = ((features + 1) * d + 2 * d  # mapping and its layer norm
              + (3 * d + 1) * hidden + (hidden + 1) * d_i  # projector
              + 2 * (d_i + 1) * d + 2 * (d_i + 1) * m * d + 24)  # prefix and adapter hypernetworks, λ_v
    assert vl["trainable_params"] - text["trainable_params"] == visual
    tokens = count_parameters("t5-base", {"name": "vl-hyperpelt", "visual_input": "tokens"}, 4)
    assert tokens["trainable_params"] - vl["trainable_params"] == (features + 1) * d + 2 * d
    adapter = count_parameters("t5-base", {"name": "vl-adapter", "reduction_factor": 16,
                                           "task_layer_norms": False}, 4)
    assert adapter["trained_pct"] == pytest.approx(7.16, rel=0.01)  # Table 2's VL-Adapter
