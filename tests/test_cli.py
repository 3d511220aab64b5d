"""The `hyperpelt` command, run as a subprocess: one-line errors with exit code 2, and train → eval →
predict."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES
from helpers.cli import assert_user_error, hyperpelt
from hyperpelt.errors import UserError
from hyperpelt.tasks import get_task

TINY = ["model.name=t5-tiny", "model.pretrained=false", "data.tasks=[rte]", "data.max_train_examples=16",
        "data.max_eval_examples=8", "train.steps=4", "train.eval_every=2", "train.batch_size=4",
        "heads={}"]  # the demo's head options apply to encoder heads only


# ------------------------------------------------------------------------------------------ bad input


def test_unknown_task(tmp_path):
    result = hyperpelt("train", "configs/demo.yaml", "data.tasks=[nosuchtask]",
                       f"train.output_dir={tmp_path}")
    assert_user_error(result, "nosuchtask")
    assert not any(tmp_path.iterdir())


def test_malformed_tsv_line_names_file_and_line(tmp_path):
    shutil.copytree(FIXTURES / "glue" / "RTE", tmp_path / "data" / "glue" / "RTE")
    train_tsv = tmp_path / "data" / "glue" / "RTE" / "train.tsv"
    lines = train_tsv.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[4] = "4\tonly two columns here\n"  # line 5 of the file
    train_tsv.write_text("".join(lines), encoding="utf-8")
    result = hyperpelt("train", "configs/demo.yaml", "data.tasks=[rte]",
                       f"data.data_dir={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'runs'}")
    assert_user_error(result, "train.tsv:5")
    assert not (tmp_path / "runs").exists()


def test_missing_data_file_names_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = hyperpelt("train", "configs/demo.yaml", "data.tasks=[rte]", f"data.data_dir={empty}",
                       f"train.output_dir={tmp_path / 'runs'}")
    assert_user_error(result, str(empty / "glue" / "RTE"), "not found")


def test_encoder_head_options_on_a_text_to_text_model(tmp_path):
    result = hyperpelt("train", "configs/demo.yaml", *TINY[:-1], f"train.output_dir={tmp_path}")
    assert_user_error(result, "heads.pair_encoding", "t5-tiny")
    assert not any(tmp_path.iterdir())


def test_unknown_config_key():
    assert_user_error(hyperpelt("train", "configs/demo.yaml", "train.stepz=3"), "train.stepz")


def test_mistyped_method_key_fails_before_any_model_loads(tmp_path):
    result = hyperpelt("train", "configs/demo.yaml", "method.prefix_lenght=8", f"train.output_dir={tmp_path}")
    assert_user_error(result, "method.prefix_lenght", "prefix_length")
    assert not any(tmp_path.iterdir())


def test_mistyped_config_key():
    assert_user_error(hyperpelt("train", "configs/demo.yaml", "train.steps=abc"), "train.steps", "abc")


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_user_error(hyperpelt("train", missing), str(missing))


def test_usage_error_exits_2():
    result = hyperpelt("train")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_existing_run_folder_is_not_overwritten(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "marker").write_text("keep me")
    result = hyperpelt("train", "configs/demo.yaml", f"train.output_dir={tmp_path}", "train.run_name=r")
    assert_user_error(result, str(run), "exists")
    assert sorted(p.name for p in run.iterdir()) == ["marker"]
    assert (run / "marker").read_text() == "keep me"


def test_predict_input_parsing():
    rte, sst2, stsb = get_task("rte"), get_task("sst2"), get_task("stsb")
    pair = {"sentence1": "A.", "sentence2": "B.", "label": 0}
    assert rte.parse_input("A.\tB.", "x") == pair
    assert rte.parse_input("A.\\tB.", "x") == pair
    assert rte.parse_input('{"sentence1": "A.", "sentence2": "B."}', "x") == pair
    assert rte.parse_input({"sentence1": "A.", "sentence2": "B."}, "x") == pair
    assert sst2.parse_input("a\tfine film", "x") == {"sentence": "a\tfine film", "label": 0}
    assert stsb.parse_input("a\tb", "x")["label"] == 0.0
    with pytest.raises(UserError, match="f.txt:3: task 'rte' takes 2 fields"):
        rte.parse_input("only one", "f.txt:3")
    with pytest.raises(UserError, match="missing key 'sentence2'"):
        rte.parse_input('{"sentence1": "A."}', "x")


# ------------------------------------------------------------------------------------------ parsing


def parse(*argv: str):
    from hyperpelt.cli import build_parser

    return build_parser().parse_args(argv)


def test_options_and_overrides_come_in_any_order():
    before = parse("train", "configs/demo.yaml", "--quiet", "train.steps=2")
    after = parse("train", "configs/demo.yaml", "train.steps=2", "--quiet")
    assert vars(before) == vars(after)
    assert (after.config, after.overrides, after.quiet) == ("configs/demo.yaml", ["train.steps=2"], True)
    between = parse("eval", "RUN", "data.a=1", "--split", "validation", "data.b=2", "--other-images")
    assert (between.run_dir, between.split, between.other_images) == ("RUN", "validation", True)
    assert between.overrides == ["data.a=1", "data.b=2"]
    assert parse("train", "--resume", "RUN").overrides == []


@pytest.mark.parametrize("argv, message", [
    (["train", "configs/demo.yaml", "train.steps=2", "--quite"], "unrecognized arguments: --quite"),
    (["train", "configs/demo.yaml", "train.steps=2", "--resume"], "--resume: expected one argument"),
    (["eval", "RUN", "--split", "data.a=1"], "argument --split: invalid choice: 'data.a=1'"),
    (["serve", "RUN", "--dtype", "bf16"], "argument --dtype: invalid choice: 'bf16'"),
    (["predict", "RUN", "--task", "rte", "--text", "x", "--dtype", "half"], "invalid choice: 'half'"),
])
def test_a_bad_order_is_still_a_one_line_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(*argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_serve_options_are_derived_from_serve_options(capsys):
    import dataclasses

    from hyperpelt.arguments import options_from
    from hyperpelt.serving.settings import ServeOptions

    assert options_from(ServeOptions, parse("serve", "RUN")) == ServeOptions()
    parsed = options_from(ServeOptions, parse("serve", "RUN", "--max-wait-ms", "2.5", "--batching", "off",
                                              "--image-dir", "images", "--replicas", "3"))
    assert parsed == ServeOptions(max_wait_ms=2.5, batching="off", image_dir="images", replicas=3)
    with pytest.raises(SystemExit):
        parse("serve", "--help")
    shown = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(ServeOptions):
        assert f"--{f.name.replace('_', '-')}" in shown
    for default in ("127.0.0.1", "8000", "16", "4096", "5", "mixed", "256", "32", "16 MiB", "30", "none",
                    "local", "1"):
        assert f"(default: {default})" in shown
    assert shown.count("(default: ") == len(dataclasses.fields(ServeOptions))


def test_eval_predict_and_serve_take_a_device_and_a_dtype():
    from hyperpelt.arguments import options_from
    from hyperpelt.serving.settings import ServeOptions

    evaluated = parse("eval", "RUN", "--device", "cuda:1", "--dtype", "bfloat16")
    assert (evaluated.device, evaluated.dtype) == ("cuda:1", "bfloat16")
    predict = ("predict", "RUN", "--task", "rte", "--text", "x")
    predicted = parse(*predict, "--device", "cpu", "--dtype", "float16")
    assert (predicted.device, predicted.dtype) == ("cpu", "float16")
    assert (parse(*predict).device, parse(*predict).dtype, evaluated.overrides) == (None, None, [])
    served = options_from(ServeOptions, parse("serve", "RUN", "--device", "mps", "--dtype", "float32"))
    assert served == ServeOptions(device="mps", dtype="float32")
    assert (ServeOptions().device, ServeOptions().dtype) == (None, None)  # cuda if there, the run's dtype


# ------------------------------------------------------------------------------------------ commands


def test_tasks_lists_registered_tasks():
    result = hyperpelt("tasks")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()[3:] if line.strip()]
    assert "rte" in names and "sst2" in names


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = hyperpelt("train", "configs/demo.yaml", *TINY, f"train.output_dir={out}", "train.run_name=r",
                       "--quiet")
    assert result.returncode == 0, result.stderr
    return out / "r", result


def test_train_end_to_end(trained_run):
    run, result = trained_run
    assert "rte" in result.stdout and str(run) in result.stdout
    results = json.loads((run / "results.json").read_text())
    for key in ("tasks", "average", "trainable_params", "total_params", "best_step", "split",
                "validation_average"):
        assert key in results
    assert set(results["tasks"]) == {"rte"}
    for name in ("config.yaml", "metrics.jsonl", "tensorboard", "report.md", "best/method.safetensors",
                 "best/checkpoint.json"):
        assert (run / name).exists(), name


def test_eval_writes_only_its_json(trained_run):
    run, _ = trained_run
    before = {p.relative_to(run) for p in run.rglob("*")}
    result = hyperpelt("eval", run)
    assert result.returncode == 0, result.stderr
    assert "rte" in result.stdout
    after = {p.relative_to(run) for p in run.rglob("*")}
    assert after - before == {Path("eval_test.json")}
    scored = json.loads((run / "eval_test.json").read_text())
    trained = json.loads((run / "results.json").read_text())
    assert scored["tasks"]["rte"]["examples"] == trained["tasks"]["rte"]["examples"]
    assert scored["average"] == pytest.approx(trained["average"])


def test_predict_prints_one_label_per_input(trained_run):
    run, _ = trained_run
    result = hyperpelt("predict", run, "--task", "rte", "--text", "A man sleeps.\tA person rests.")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] in ("entailment", "not_entailment", "<invalid>")
    other = hyperpelt("predict", run, "--task", "stsb", "--text", "a\tb")
    assert_user_error(other, "stsb")


@pytest.mark.parametrize("command", [["eval"], ["predict", "--task", "rte", "--text", "a\tb"], ["serve"]])
def test_device_cuda_without_cuda_is_one_line_exit_2(trained_run, monkeypatch, capsys, command):
    import torch

    from hyperpelt.cli import main

    run, _ = trained_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main([command[0], str(run), *command[1:], "--device", "cuda", "--dtype", "bfloat16"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: device 'cuda': CUDA is not available on this machine; use --device cpu\n"
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written


def test_serve_device_cuda_without_cuda_exits_2_before_loading(trained_run, monkeypatch):
    run, _ = trained_run
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no CUDA device, on any machine
    result = hyperpelt("serve", run, "--device", "cuda", "--port", "0")
    assert_user_error(result, "device 'cuda': CUDA is not available on this machine")
