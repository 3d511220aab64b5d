"""bench/gpu_check.py cannot rot: its smoke run on the CPU writes a report with every row measured."""

import math
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu_check import METHODS, made_up_instances, parse_args  # noqa: E402


def numbers(report: str, label: str) -> list[float]:
    """The numbers of the report's table row that starts with ``label`` (its dtype cell left out)."""
    rows = [line for line in report.splitlines() if line.startswith(f"| {label} | bfloat16 |")]
    assert len(rows) == 1, f"no single row {label!r} in:\n{report}"
    cells = [c.strip().removeprefix("ratio ") for c in rows[0].strip("|").split("|")[2:]]
    return [float(c) for c in cells if c]


def test_smoke_run_on_the_cpu_reports_every_row(tmp_path):
    from bench.gpu_check import main

    report_path = tmp_path / "bench_gpu.md"
    results = main(["--device", "cpu", "--smoke", "--report", str(report_path)])
    report = report_path.read_text()
    assert "Command: `python -m bench.gpu_check --device cpu --smoke --report" in report
    assert re.search(r"Device: cpu: .+; torch \S+; code \S+ \S+; \d{4}-\d\d-\d\d; took \d+ s", report)
    rows = {method: 3 for method in METHODS}  # step, peak memory, trained share
    rows.update({"cached weight table": 1, "exported static weights": 1, "regenerated every decoding step": 1,
                 "frozen backbone alone": 1, "cached / static": 1, "mixed": 4, "off (one at a time)": 4,
                 "mixed / off": 1})
    for label, count in rows.items():
        values = numbers(report, label)
        assert len(values) == count and all(math.isfinite(v) for v in values), (label, values)
        if count == 4:  # throughput, p50, p99 and errors of a serving mode
            values, errors = values[:3], values[3]
            assert errors == 0, label
        assert all(v > 0 for v in values), (label, values)
    full, lora = numbers(report, "full"), numbers(report, "peft-lora")
    assert full[2] == 100.0 and 0 < lora[2] < 5  # every weight trains under full fine-tuning; LoRA's few
    # every served request was answered, and the numbers in the report are the run's
    served = results["serve"]["bfloat16"]
    assert served["off"]["requests"] >= 16 and served["mixed"]["errors"] == served["off"]["errors"] == 0
    assert numbers(report, "mixed")[0] == pytest.approx(served["mixed"]["throughput"], abs=0.05)


def test_options(capsys):
    args = parse_args(["--device", "cpu", "--dtype", "bfloat16,float32"])
    assert args.dtype == ["bfloat16", "float32"] and not args.smoke
    assert args.report.endswith("reports/bench_gpu.md")
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--dtype", "int8"])
    with pytest.raises(SystemExit):
        parse_args(["--device", "tpu"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--device", "cuda"])
    assert exit_.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_made_up_instances_fill_every_field_of_every_task():
    from hyperpelt.tasks import get_task

    tasks = [get_task(t) for t in ("rte", "sst2")]
    instances = made_up_instances(tasks, (3, 5), per_task=4)
    assert [len(pool) for pool in instances] == [4, 4]
    assert {tuple(i) for i in instances[0]} == {("task", "sentence1", "sentence2")}
    assert all(3 <= len(i["sentence"].split()) <= 5 for i in instances[1])
    assert made_up_instances(tasks, (3, 5), per_task=4) == instances  # seeded
