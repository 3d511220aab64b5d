"""The benchmark's report says which targets one run meets, from that run's figures."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.train_step import dtype_ratios, markdown  # noqa: E402


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


def test_dtype_option_always_measures_float32_first():
    from bench.train_step import parse_args

    assert parse_args([]).dtype == ["float32"]
    args = parse_args(["--dtype", "bfloat16"])
    assert args.dtype == ["float32", "bfloat16"] and args.dtype_methods == ["hyperpelt", "full", "peft-lora"]
    assert parse_args(["--dtype", "bfloat16,float32", "--dtype-methods", "hyperpelt"]).dtype_methods == [
        "hyperpelt"]
    for bad in (["--dtype", "int8"], ["--dtype", "bfloat16", "--dtype-methods", "full"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def with_bf16(data: dict, peak: float) -> dict:
    data["train"]["hyperpelt"].update(start_gb=0.5, weights_gb=0.9)
    data["dtypes"] = {"bfloat16": {"hyperpelt": {"step_s": 0.8, "peak_mem_gb": peak, "trainable_pct": 1.0,
                                                 "start_gb": 0.5, "weights_gb": 0.5}}}
    data["ratios"] = {**data["ratios"], **dtype_ratios(data)}
    return data


def test_report_puts_each_dtype_next_to_float32_with_its_ratios():
    # float32: peak 1.0, 0.5 of it before the model; bf16: peak 0.75, so 0.25 against 0.5 above the libraries
    report = markdown(with_bf16(results(1.1), 0.75), "python -m bench.train_step --dtype float32,bfloat16")
    assert "| hyperpelt | float32 | 1.000 | 1.00 | 0.500 | 0.900 |  |  |  |" in report
    assert "| hyperpelt | bfloat16 | 0.800 | 0.75 | 0.500 | 0.500 | 0.800 | 0.750 | 0.500 |" in report
    assert "| hyperpelt bfloat16 peak memory above the libraries / float32 | 0.500 | ≤ 0.6 | yes |" in report
    assert "Targets met: all." in report and "Accelerate's mixed precision" in report
    missed = markdown(with_bf16(results(1.1), 0.85), "x")
    assert "Targets not met: hyperpelt bfloat16 peak memory above the libraries / float32." in missed
    assert "| dtype |" not in markdown(results(1.1), "x")  # without --dtype the report is as it was


def test_bf16_worker_steps_with_the_frozen_backbone_in_half(tmp_path):
    import os

    from bench.measures import tuned_model
    from bench.worker_result import run_worker_process

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "bench.train_step", "--worker", "hyperpelt@bfloat16",
               "--model", "t5-tiny", "--steps", "1", "--threads", "1", "--batch", "2", "--input-len", "16",
               "--target-len", "4"]
    result = run_worker_process(command, "bf16 worker", cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # (a tiny model's step may not raise the process's peak above what it held before the model)
    assert 0 < result["step_s"] < 60 and result["peak_mem_gb"] >= result["start_gb"] > 0
    model = tuned_model("t5-tiny", "hyperpelt")
    full = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024**3
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad) / 1024**3
    assert result["weights_gb"] == pytest.approx(full - frozen / 2, rel=1e-6)  # frozen in bf16, the rest not
