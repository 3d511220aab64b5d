"""Comparison reports: the table, the optional other-images and train-time columns, and what they show;
the derangement that pairs every question with another image; an interrupted comparison resumes."""

import json
import multiprocessing
import os
import re
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import SMALL_METHOD
from hyperpelt.cli import main
from hyperpelt.data.batches import with_other_images
from hyperpelt.errors import UserError
from hyperpelt.experiments.compare import load_comparison, paired_gap, render_report, run_comparison
from hyperpelt.faults import ENV
from hyperpelt.provenance import code_version


def run(score, other=None, seconds=None, params=1000):
    result = {"tasks": {"easy_vqa": {"metrics": {"accuracy": score}, "score": score}},
              "trainable_params": params, "backbone_params": 100_000, "train_seconds": seconds,
              "train_cpu_seconds": None if seconds is None else 2 * seconds}
    if other is not None:
        result["other_images"] = {"tasks": {"easy_vqa": {"metrics": {"accuracy": other}, "score": other}}}
    return result


def test_the_report_gives_other_images_and_train_time_and_the_gaps():
    spec = {"title": "easy-VQA", "seeds": [1], "methods": {"vl-hyperpelt": {}, "question-only": {}}}
    results = {("vl-hyperpelt", 1): run(96.0, other=58.5, seconds=300),
               ("question-only", 1): run(62.0, seconds=120)}
    report = render_report(spec, results, "hyperpelt compare c.yaml")
    assert report.startswith("# easy-VQA\n")
    header = ("| method | trained/task | easy_vqa | average (pooled) | min | other images | train time | "
              "CPU time |")
    assert header in report
    row = ("| vl-hyperpelt | 1.000% | 96.00 ± 0.00 | 96.00 ± 0.00 | 96.00 | 58.50 ± 0.00 | 5.0 min | "
           "10.0 min |")
    assert row in report
    assert "| question-only | 1.000% | 62.00 ± 0.00 | 62.00 ± 0.00 | 62.00 | - | 2.0 min | 4.0 min |" \
        in report
    assert "- vl-hyperpelt is 34.00 points above the question-only model (96.00 vs 62.00)." in report
    assert "- vl-hyperpelt loses 37.50 points when every question is paired with another image" in report


def test_a_report_of_runs_without_times_has_no_time_column():
    spec = {"seeds": [1, 2], "methods": {"hyperpelt": {}}}
    report = render_report(spec, {("hyperpelt", 1): run(80.0), ("hyperpelt", 2): run(82.0)}, "c")
    assert "train time" not in report and "other images" not in report
    assert "| hyperpelt | 1.000% | 81.00 ± 1.41 | 81.00 ± 1.41 | 80.00 |" in report


def test_runs_with_their_validation_average_get_a_validation_column():
    spec = {"seeds": [1, 2], "methods": {"hyperpelt-1e-3": {}, "hyperpelt-3e-3": {}}}
    results = {("hyperpelt-1e-3", 1): {**run(80.0), "validation_average": 75.0},
               ("hyperpelt-1e-3", 2): {**run(82.0), "validation_average": 77.0},
               ("hyperpelt-3e-3", 1): {**run(70.0), "validation_average": 71.0},
               ("hyperpelt-3e-3", 2): {**run(70.0), "validation_average": 71.0}}
    report = render_report(spec, results, "c")
    assert "| average (pooled) | min | validation |" in report
    assert "| hyperpelt-1e-3 | 1.000% | 81.00 ± 1.41 | 81.00 ± 1.41 | 80.00 | 76.00 ± 1.41 |" in report
    assert "| hyperpelt-3e-3 | 1.000% | 70.00 ± 0.00 | 70.00 ± 0.00 | 70.00 | 71.00 ± 0.00 |" in report
    del results[("hyperpelt-3e-3", 2)]["validation_average"]  # one run without it: no column
    assert "validation |" not in render_report(spec, results, "c")


def test_the_report_names_the_code_each_run_was_made_with():
    spec = {"seeds": [1, 2, 3], "methods": {"hyperpelt": {}}}
    made = [{"code_version": "git 1f32d8a0b1c2"}, {"code_version": "git 1f32d8a0b1c2"}, {}]
    results = {("hyperpelt", seed): {**run(80.0), **extra} for seed, extra in zip(spec["seeds"], made)}
    report = render_report(spec, results, "c")
    assert "Code the runs were made with: git 1f32d8a0b1c2 (2 runs); not recorded (1 run)." in report


def test_the_report_names_the_machines_and_dates_of_its_runs():
    spec = {"seeds": [1, 2], "methods": {"hyperpelt": {}}}
    facts = {"cpu": "Intel(R) Xeon(R) Processor", "cpus": 2, "bf16_units": ["avx512_bf16", "amx_bf16"],
             "torch_threads": 2, "torch": "2.13.0"}
    results = {("hyperpelt", 1): {**run(80.0), "machine": facts, "date": "2026-12-07"},
               ("hyperpelt", 2): run(82.0)}
    report = render_report(spec, results, "c")
    assert ("Machines: Intel(R) Xeon(R) Processor (2 CPUs, AVX512-BF16/AMX-BF16), 2 torch threads, "
            "torch 2.13.0 (1 run); not recorded (1 run); dates: 2026-12-07 (1 run); not recorded (1 run)."
            in report)


def test_a_gap_is_tested_on_the_seeds_both_methods_share():
    assert paired_gap([70.0, 71.0, 72.0], [69.0, 69.5, 70.2]) == (
        "gap +1.43 ± 0.40 over 3 paired seeds, ahead (paired t-test p = 0.025)")
    # a similar gap on average, but the seeds disagree on its sign (t = 1.1 / (2.26 / sqrt 3), 2 df)
    assert paired_gap([70.0, 73.0, 71.0], [71.0, 69.5, 70.2]) == (
        "gap +1.10 ± 2.26 over 3 paired seeds, within noise (paired t-test p = 0.489)")
    assert paired_gap([70.0], [69.0]) == (
        "gap +1.00 ± 0.00 over 1 paired seed, too few differing seeds to test")


def test_the_hyperpelt_lines_print_the_paired_gap():
    spec = {"seeds": [1, 2, 3], "methods": {"hyperpelt": {}, "prefix": {}}}
    results = {**{("hyperpelt", s): run(v, params=500) for s, v in zip((1, 2, 3), (70.0, 71.0, 72.0))},
               **{("prefix", s): run(v) for s, v in zip((1, 2, 3), (69.0, 69.5, 70.2))}}
    report = render_report(spec, results, "c")
    assert ("- HyperPELT against prefix: gap +1.43 ± 0.40 over 3 paired seeds, ahead (paired t-test "
            "p = 0.025) (71.00 vs 69.57), with fewer trained parameters per task (0.500% vs 1.000%)."
            in report)


def test_code_version_names_the_checkout_or_the_package():
    version = code_version()
    assert re.fullmatch(r"git [0-9a-f]{12}(-dirty)?|git v?[\w.]+-\d+-g[0-9a-f]{12}(-dirty)?|hyperpelt [\w.]+",
                        version), version


def test_comparison_files_accept_title_and_other_images(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: {}\nseeds: [1]\nmethods: {a: {}}\nreport: r.md\ntitle: t\nother_images: true\n")
    assert load_comparison(path)["other_images"] is True
    path.write_text("base: {}\nseeds: [1]\nmethods: {}\nreport: r.md\nshuffle: true\n")
    with pytest.raises(UserError, match="unknown keys shuffle"):
        load_comparison(path)


def test_every_question_gets_another_image_and_an_image_keeps_one_partner():
    features = [{"image_id": f"test/{i % 5}", "label": i} for i in range(20)] + [{"label": 99}]
    paired = with_other_images(features, seed=0)
    assert [f["label"] for f in paired] == [f["label"] for f in features]  # questions stay in order
    assert all(p["image_id"] != f["image_id"] for p, f in zip(paired[:-1], features[:-1]))
    partner = {f["image_id"]: p["image_id"] for f, p in zip(features, paired) if "image_id" in f}
    assert len(set(partner.values())) == 5  # a permutation of the images: each is used once as a partner
    assert all(p["image_id"] == partner[f["image_id"]] for f, p in zip(features[:-1], paired[:-1]))
    assert paired[-1] == {"label": 99}
    assert with_other_images(features, seed=0) == paired  # fixed by the seed
    with pytest.raises(UserError, match="two distinct images"):
        with_other_images([{"image_id": "a"}], seed=0)


def _compare(out, kill, log):
    """`hyperpelt compare` in a forked process that kills itself at ``kill`` (see hyperpelt.faults)."""
    sys.stdout = open(log, "w")  # noqa: SIM115 (the process ends here)
    os.environ[ENV] = kill or ""
    sys.exit(main(["compare", str(out / "comparison.yaml"), "--quiet"]))


def compare(out, kill=None) -> tuple[int, str]:
    log = out / "stdout.txt"
    process = multiprocessing.get_context("fork").Process(target=_compare, args=(out, kill, log))
    process.start()
    process.join(120)
    return process.exitcode, log.read_text()


def comparison(out):
    base = {"model": {"name": "t5-tiny", "pretrained": False, "max_input_length": 64, "max_target_length": 4},
            "method": SMALL_METHOD,
            "data": {"tasks": ["rte"], "max_train_examples": 16, "max_eval_examples": 8},
            "train": {"steps": 6, "eval_every": 3, "save_every": 2, "batch_size": 4, "eval_batch_size": 8,
                      "learning_rate": 0.01, "output_dir": str(out / "runs")}}
    out.mkdir()
    spec = {"base": base, "seeds": [1, 2], "methods": {"hyperpelt": {}}, "report": str(out / "report.md")}
    (out / "comparison.yaml").write_text(yaml.safe_dump(spec))
    return out


def test_an_interrupted_comparison_resumes_its_run_and_ends_as_an_uninterrupted_one(tmp_path):
    reference = comparison(tmp_path / "reference")
    run_comparison(reference / "comparison.yaml", "c")
    out = comparison(tmp_path / "interrupted")
    seed2 = out / "runs" / "hyperpelt-seed2"
    code, said = compare(out, "step:7")  # seed 1's 6 steps, then seed 2's first: no state saved yet
    assert code == -9 and (out / "runs/hyperpelt-seed1/results.json").is_file() and seed2.is_dir()
    code, said = compare(out, "step:3")  # seed 2 again: killed after its step 3, its state of step 2 kept
    assert code == -9 and f"{seed2} holds no valid training state (states/step-*) to resume from; starting " \
                          "it again" in said, said
    assert [p.name for p in (seed2 / "states").iterdir()] == ["step-00000002"]
    code, said = compare(out)
    assert code == 0 and f"resuming {seed2} from step-00000002" in said, said
    for seed in (1, 2):
        ours, theirs = (folder / "runs" / f"hyperpelt-seed{seed}" for folder in (out, reference))
        assert not (ours / "states").exists() and not (theirs / "states").exists()  # removed once scored
        assert (ours / "metrics.jsonl").read_text() == (theirs / "metrics.jsonl").read_text()
        weights = [load_file(run / "best" / "method.safetensors") for run in (ours, theirs)]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
        results = [json.loads((run / "results.json").read_text()) for run in (ours, theirs)]
        assert all(results[0][k] == results[1][k] for k in ("tasks", "average", "best_step"))
    rows = [next(line for line in (folder / "report.md").read_text().splitlines()
                 if line.startswith("| hyperpelt")) for folder in (out, reference)]
    assert rows[0].rsplit("|", 3)[0] == rows[1].rsplit("|", 3)[0]  # all but the train times
