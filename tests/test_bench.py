"""The benchmark's report says which targets one run meets, from that run's figures."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.train_step import markdown  # noqa: E402


def results(mixed_ratio: float) -> dict:
    train = {m: {"step_s": 1.0, "peak_mem_gb": 1.0, "trainable_pct": 1.0}
             for m in ("full", "peft-lora", "hyperpelt")}
    train["full"]["step_s"], train["full"]["peak_mem_gb"] = 2.0, 2.0
    return {
        "config": {"model": "t5-base", "steps": 3, "threads": 2, "batch": 8, "input_len": 128,
                   "target_len": 8},
        "train": train,
        "generate": {"cached_s": 1.0, "uncached_s": 1.2, "static_s": 1.0, "frozen_s": 0.9},
        "mixed_batch_step_s": mixed_ratio,
        "single_batch_step_s": 1.0,
        "ratios": {"hyperpelt step / full step": (0.5, 0.60),
                   "mixed-task step / one-task step": (mixed_ratio, 1.15)},
    }


def test_report_names_the_command_and_the_missed_targets():
    report = markdown(results(1.4), "python -m bench.train_step --steps 3")
    assert "Command: `python -m bench.train_step --steps 3`" in report
    assert "| mixed-task step / one-task step | 1.400 | ≤ 1.15 | no |" in report
    assert "Targets not met: mixed-task step / one-task step." in report


def test_report_says_all_met_when_they_are():
    report = markdown(results(1.1), "python -m bench.train_step")
    assert "| mixed-task step / one-task step | 1.100 | ≤ 1.15 | yes |" in report
    assert "Targets met: all." in report


def test_rounds_keep_the_median_time_and_the_largest_memory():
    from bench.train_step import median_over_rounds

    rounds = [{"step_s": 3.0, "peak_mem_gb": 2.0}, {"step_s": 1.0, "peak_mem_gb": 2.5},
              {"step_s": 2.0, "peak_mem_gb": 1.0}]
    assert median_over_rounds(rounds) == {"step_s": 2.0, "peak_mem_gb": 2.5}


def test_report_lists_every_round():
    data = results(1.1)
    data["rounds"] = [
        {w: {"step_s": s} for w in ("full", "peft-lora", "hyperpelt", "mixed")} for s in (1.0, 2.0)
    ]
    report = markdown(data, "python -m bench.train_step --rounds 2")
    assert "| method | round 1 | round 2 |" in report and "| mixed | 1.000 | 2.000 |" in report
