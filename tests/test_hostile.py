"""A corpus of hostile inputs: every one is refused with exit code 2 and exactly one line on stderr that
names the file, line or key at fault, with no traceback and nothing written or overwritten.

Each case is a row of CASES: its name, the command's arguments, the files it starts from and the text the
error line must hold. A file is copied from tests/hostile/ ("@name"), written from a string or bytes, or
made by a function (large or binary files, and damage done to a copy of a trained run). The command runs
in-process in the case's own folder (fast: every case fails before a model is built); the folder's files
are compared before and after. test_no_traceback_in_a_real_process runs a few cases as a subprocess.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, ROOT
from helpers.cli import assert_user_error
from hyperpelt.cli import main
from hyperpelt.tasks import registry
from hyperpelt.training.trainer import train

HOSTILE = Path(__file__).parent / "hostile"
TRAIN = ["train", "tiny.yaml"]
TINY = {"tiny.yaml": "@tiny.yaml"}
CHECK = ["tasks", "--check", "t.yaml"]
PREDICT = ["predict", "run", "--task", "rte", "--file", "in.txt"]


LOCAL = ["data.data_dir=data", "data.source=local"]


def fixture(name: str) -> dict:
    """A data file of the test fixtures, at its place under the case's data folder."""
    return {f"data/{name}": lambda path: shutil.copyfile(FIXTURES / name, path)}


def csv_task(train, dev="@good.csv"):
    return {"t.yaml": "@hsent.yaml", "train.csv": train, "dev.csv": dev}


def jsonl_task(train):
    return {"t.yaml": "@hj.yaml", "train.jsonl": train, "dev.jsonl": "@good.jsonl"}


def declared_train(train, dev="@good.csv"):
    """A run of the declared CSV task (fails as its data is read, before any model is built)."""
    return TRAIN + ["data.task_files=[t.yaml]", "data.tasks=[hsent]"], {**TINY, **csv_task(train, dev)}


def cut(keep: int):
    return lambda path: path.write_bytes(path.read_bytes()[:keep])


def replace(text: str):
    return lambda path: path.write_text(text)


def swap(old: str, new: str):
    return lambda path: path.write_text(path.read_text().replace(old, new))


def megabyte_line(path):
    path.write_text((HOSTILE / "good.csv").read_text() + '"' + "a" * 1_000_000 + '",positive\n')


def binary(path):
    path.write_bytes(bytes((i * 167 + 13) % 256 for i in range(4096)))  # its second byte is no UTF-8


def deep_json(path):
    path.write_text((HOSTILE / "good.jsonl").read_text() + "[" * 100_000 + "]" * 100_000 + "\n")


def case(name, args, files, expected, run=False):
    return pytest.param(args, files, expected, run, id=name)


CASES = [
    # ---------------------------------------------------------------------- data files of a declared task
    case("csv-empty-file", CHECK, csv_task("@empty.csv"), "train.csv:1: header line missing"),
    case("csv-latin1", CHECK, csv_task("@latin1.csv"), "train.csv:3: not UTF-8 text (byte 0xe9)"),
    case("csv-utf16-bom", CHECK, csv_task("@utf16.csv"), "train.csv: UTF-16 text"),
    case("csv-binary", CHECK, csv_task(binary), "train.csv:1: not UTF-8 text"),
    case("csv-too-few-columns", CHECK, csv_task("@too_few_columns.csv"),
         "train.csv:14: expected 2 comma-separated columns, found 1"),
    case("csv-too-many-columns", CHECK, csv_task("@too_many_columns.csv"),
         "train.csv:14: expected 2 comma-separated columns, found 3"),
    case("csv-label-outside-the-set", CHECK, csv_task("@label_outside.csv"),
         "train.csv:14: label 'neutral' is not allowed (expected one of 'negative', 'positive')"),
    case("csv-empty-label", CHECK, csv_task("@empty_label.csv"), "train.csv:14: label '' is not allowed"),
    case("csv-1mb-line", CHECK, csv_task(megabyte_line), "train.csv:14: field larger than field limit"),
    case("csv-unclosed-quote", CHECK, csv_task("@unclosed_quote.csv"),
         "train.csv:15: ',' expected after '\"'"),
    case("csv-no-label-column", CHECK, csv_task("@no_label_column.csv"),
         "train.csv:1: no column 'label' in the header (columns: text, sentiment)"),
    case("csv-dev-file-missing", CHECK, {"t.yaml": "@hsent.yaml", "train.csv": "@good.csv"},
         "dev.csv: file not found"),
    case("csv-dev-latin1", CHECK, csv_task("@good.csv", "@latin1.csv"), "dev.csv:3: not UTF-8 text"),
    case("jsonl-truncated", CHECK, jsonl_task("@truncated.jsonl"), "train.jsonl:7: not valid JSON"),
    case("jsonl-not-an-object", CHECK, jsonl_task("@not_object.jsonl"),
         "train.jsonl:7: expected a JSON object"),
    case("jsonl-missing-label", CHECK, jsonl_task("@missing_label.jsonl"),
         "train.jsonl:7: missing key 'label'"),
    case("jsonl-null-text", CHECK, jsonl_task("@null_text.jsonl"), "train.jsonl:7: key 'q' holds null"),
    case("jsonl-list-text", CHECK, jsonl_task("@list_text.jsonl"),
         "key 'q' holds [\"a\", \"b\"], not a text"),
    case("jsonl-deep-nesting", CHECK, jsonl_task(deep_json),
         "train.jsonl:7: not valid JSON (maximum recursion"),
    case("jsonl-huge-integer", CHECK, jsonl_task("@huge_int.jsonl"),
         "train.jsonl:7: not valid JSON (Exceeds"),
    case("jsonl-latin1", CHECK, jsonl_task("@latin1.jsonl"), "train.jsonl:7: not UTF-8 text"),
    case("jsonl-label-of-another-type", CHECK, jsonl_task("@label_bool.jsonl"),
         "train.jsonl:7: label True is not allowed"),
    case("train-header-only", *declared_train("@header_only.csv"), "files: no train examples"),
    case("train-dev-of-one-row", *declared_train("@good.csv", "@one_row.csv"),
         "files: no validation examples"),
    # ---------------------------------------------------------------------- the built-in tasks' readers
    case("rte-short-line", TRAIN + LOCAL, {**TINY, **fixture("glue/RTE/dev.tsv"),
                                           "data/glue/RTE/train.tsv": "@rte_short_line.tsv"},
         "RTE/train.tsv:5: expected 4 tab-separated columns, found 2"),
    case("trec-line-without-label", TRAIN + LOCAL + ["data.tasks=[trec]"],
         {**TINY, **fixture("transfer/trec/TREC_10.label"),
          "data/transfer/trec/train_5500.label": "@trec_bad.label"},
         "train_5500.label:2: expected"),
    case("boolq-missing-key", TRAIN + LOCAL + ["data.tasks=[boolq]"],
         {**TINY, **fixture("superglue/boolq/val.jsonl"),
          "data/superglue/boolq/train.jsonl": "@boolq_missing_key.jsonl"},
         "boolq/train.jsonl:2: missing key 'passage'"),
    case("stsb-score-not-a-number", TRAIN + LOCAL + ["data.tasks=[stsb]"],
         {**TINY, **fixture("glue/STS-B/dev.tsv"), "data/glue/STS-B/train.tsv": "@stsb_score_text.tsv"},
         "STS-B/train.tsv:4: label 'five' is not"),
    # ---------------------------------------------------------------------- task files
    case("task-file-bad-yaml", CHECK, {"t.yaml": "@task_bad_yaml.yaml"}, "t.yaml:3: invalid YAML"),
    case("task-file-latin1", CHECK, {"t.yaml": "@task_latin1.yaml"}, "t.yaml:1: not UTF-8 text"),
    case("task-file-python-tag", CHECK, {"t.yaml": "@task_python_tag.yaml"},
         "t.yaml:1: invalid YAML (could not determine a constructor"),
    case("task-file-empty", CHECK, {"t.yaml": "@task_empty.yaml"}, "t.yaml: expected a task declaration"),
    case("task-file-unknown-field", CHECK, {"t.yaml": "@task_unknown_field.yaml"}, "labelz"),
    case("task-file-labels-a-number", CHECK, {"t.yaml": "@task_labels_number.yaml"}, "labels"),
    case("task-file-missing", CHECK, {}, "t.yaml: task file not found"),
    # ---------------------------------------------------------------------- configs
    case("config-unknown-key", TRAIN + ["train.stepz=3"], TINY, "unknown config key 'train.stepz'"),
    case("config-unknown-section", TRAIN + ["trainn.steps=3"], TINY, "unknown config key 'trainn'"),
    case("config-type-error", TRAIN + ["train.steps=many"], TINY, "'train.steps' expects int, got 'many'"),
    case("config-float-for-int", TRAIN + ["train.batch_size=2.5"], TINY, "'train.batch_size' expects int"),
    case("config-bool-type-error", TRAIN + ["model.pretrained=maybe"], TINY,
         "'model.pretrained' expects bool"),
    case("config-zero-steps", TRAIN + ["train.steps=0"], TINY, "train.steps must be >= 1, got 0"),
    case("config-negative-batch", TRAIN + ["train.batch_size=-4"], TINY,
         "train.batch_size must be >= 1, got -4"),
    case("config-zero-eval-batch", TRAIN + ["train.eval_batch_size=0"], TINY,
         "train.eval_batch_size must be >= 1"),
    case("config-zero-log-every", TRAIN + ["train.log_every=0"], TINY, "train.log_every must be >= 1"),
    case("config-zero-beams", TRAIN + ["train.num_beams=0"], TINY, "train.num_beams must be >= 1"),
    case("config-negative-warmup", TRAIN + ["train.warmup_steps=-3"], TINY,
         "train.warmup_steps must be >= 0"),
    case("config-negative-learning-rate", TRAIN + ["train.learning_rate=-0.1"], TINY,
         "train.learning_rate must"),
    case("config-negative-weight-decay", TRAIN + ["train.weight_decay=-1"], TINY, "train.weight_decay must"),
    case("config-zero-max-train", TRAIN + ["data.max_train_examples=0"], TINY,
         "data.max_train_examples must"),
    case("config-zero-max-eval", TRAIN + ["data.max_eval_examples=0"], TINY, "data.max_eval_examples must"),
    case("config-zero-temperature", TRAIN + ["data.temperature=0"], TINY, "data.temperature must be > 0"),
    case("config-zero-prefix-length", TRAIN + ["method.prefix_length=0"], TINY, "prefix_length"),
    case("config-micro-batch-does-not-divide", TRAIN + ["train.micro_batch_size=3"], TINY,
         "train.micro_batch_size (3)"),
    case("config-task-twice", TRAIN + ["data.tasks=[rte, rte]"], TINY, "data.tasks names rte more than once"),
    case("config-no-task", TRAIN + ["data.tasks=[]"], TINY, "data.tasks must name at least one task"),
    case("config-unknown-task", TRAIN + ["data.tasks=[nosuchtask]"], TINY, "nosuchtask"),
    case("config-unknown-average", TRAIN + ["eval.average=median"], TINY, "eval.average"),
    case("config-override-without-equals", TRAIN + ["trainsteps"], TINY,
         "override 'trainsteps' must look like"),
    case("config-override-into-a-value", TRAIN + ["train.steps.x=1"], TINY, "'steps' is not a section"),
    case("config-not-a-mapping", ["train", "c.yaml"], {"c.yaml": "@config_list.yaml"},
         "c.yaml: expected a mapping"),
    case("config-latin1", ["train", "c.yaml"], {"c.yaml": "@config_latin1.yaml"}, "c.yaml:1: not UTF-8 text"),
    case("config-python-tag", ["train", "c.yaml"], {"c.yaml": "@config_python_tag.yaml"},
         "c.yaml:1: invalid YAML (could not determine a constructor"),
    case("config-bad-yaml", ["train", "c.yaml"], {"c.yaml": "@config_bad_yaml.yaml"},
         "c.yaml:2: invalid YAML"),
    case("config-section-not-a-mapping", ["train", "c.yaml"], {"c.yaml": "@config_section_int.yaml"},
         "train: expected a mapping"),
    case("config-missing", ["train", "nope.yaml"], {}, "config file not found: nope.yaml"),
    case("config-task-file-missing", TRAIN + ["data.task_files=[nope.yaml]"], TINY,
         "nope.yaml: task file not"),
    # ---------------------------------------------------------------------- where runs are written
    case("output-folder-is-a-file", TRAIN + ["train.output_dir=taken"], {**TINY, "taken": "a file"},
         "train.output_dir taken: "),
    case("output-folder-under-a-file", TRAIN + ["train.output_dir=taken/runs"], {**TINY, "taken": "a file"},
         "is not a folder this process can write in"),
    case("run-folder-exists", TRAIN, {**TINY, "runs/r/results.json": "{}"},
         "run folder runs/r already exists"),
    case("resume-without-states", ["train", "--resume", "run"], {"run/states": None},
         "run holds no valid training state", run=True),
    case("resume-with-another-config", ["train", "--resume", "run", "train.learning_rate=0.5"], {},
         "cannot resume run with a different config: train.learning_rate differ", run=True),
    # ---------------------------------------------------------------------- checkpoints
    case("checkpoint-truncated-safetensors", ["eval", "run"], {"run/best/method.safetensors": cut(100)},
         "best/method.safetensors: not a readable safetensors file", run=True),
    case("checkpoint-empty-safetensors", ["eval", "run"], {"run/best/method.safetensors": b""},
         "best/method.safetensors: not a readable safetensors file", run=True),
    case("checkpoint-pickle-in-safetensors", ["eval", "run"],
         {"run/best/method.safetensors": b"\x80\x04\x95" + bytes(64)}, "not a readable safetensors file",
         run=True),
    case("checkpoint-truncated-json", ["eval", "run"], {"run/best/checkpoint.json": cut(60)},
         "best/checkpoint.json: not valid JSON", run=True),
    case("checkpoint-json-not-a-config", ["eval", "run"], {"run/best/checkpoint.json": replace("[]")},
         "best/checkpoint.json: not a checkpoint config", run=True),
    case("checkpoint-of-another-model", ["eval", "run"],
         {"run/config.yaml": swap("prefix_length: 2", "prefix_length: 3")},
         "best is a checkpoint of another model: method.prefix_length is 2 there, 3 in run/config.yaml",
         run=True),
    case("checkpoint-of-other-tasks", ["eval", "run"], {"run/config.yaml": swap("- rte", "- stsb")},
         "tasks is rte there, stsb in run/config.yaml", run=True),
    case("run-without-best", ["eval", "run"],
         {"run/best/checkpoint.json": None, "run/best/method.safetensors": None},
         "no checkpoint in run/best", run=True),
    case("run-config-truncated", ["eval", "run"], {"run/config.yaml": cut(30)}, "run/config.yaml:", run=True),
    case("run-folder-missing", ["eval", "nope"], {}, "run folder not found: nope"),
    # ---------------------------------------------------------------------- predict
    case("predict-empty-file", PREDICT, {"in.txt": "@predict_empty.txt"}, "no inputs to predict", run=True),
    case("predict-blank-lines", PREDICT, {"in.txt": "@predict_blank.txt"}, "no inputs to predict", run=True),
    case("predict-binary-file", PREDICT, {"in.txt": binary}, "in.txt:1: not UTF-8 text", run=True),
    case("predict-json-missing-a-field", PREDICT, {"in.txt": "@predict_missing_field.jsonl"},
         "in.txt:1: missing key 'sentence2'", run=True),
    case("predict-json-broken", PREDICT, {"in.txt": "@predict_broken.jsonl"}, "in.txt:1: not valid JSON",
         run=True),
    case("predict-json-null-field", PREDICT, {"in.txt": "@predict_null_field.jsonl"},
         "in.txt:1: key 'sentence2' holds null", run=True),
    case("predict-three-fields", PREDICT, {"in.txt": "@predict_three_fields.txt"},
         "in.txt:1: task 'rte' takes 2",
         run=True),
    case("predict-task-not-trained", ["predict", "run", "--task", "sst2", "--text", "good"], {},
         "task 'sst2' was not trained in run", run=True),
    case("predict-zero-batch", PREDICT + ["--batch-size", "0"], {"in.txt": "a\tb\n"},
         "--batch-size: must be >= 1",
         run=True),
    case("predict-file-missing", PREDICT, {}, "in.txt: file not found", run=True),
    # ---------------------------------------------------------------------- compare
    case("compare-interrupted-results-truncated", ["compare", "c.yaml"],
         {"c.yaml": "@compare.yaml", "runs/hyperpelt-seed1/results.json": "@results_truncated.json"},
         "runs/hyperpelt-seed1/results.json: not valid JSON"),
    case("compare-interrupted-results-not-an-object", ["compare", "c.yaml"],
         {"c.yaml": "@compare.yaml", "runs/hyperpelt-seed1/results.json": "@results_list.json"},
         "results.json: expected a JSON object of results; remove it to train that run again"),
    case("compare-seeds-not-a-list", ["compare", "c.yaml"], {"c.yaml": "@compare_seeds_int.yaml"},
         "c.yaml: 'seeds' must be a non-empty list"),
    case("compare-methods-not-a-mapping", ["compare", "c.yaml"], {"c.yaml": "@compare_methods_list.yaml"},
         "c.yaml: 'methods' must be a non-empty mapping"),
    case("compare-unknown-key", ["compare", "c.yaml"], {"c.yaml": "@compare_unknown_key.yaml"},
         "unknown keys sedes"),
    case("compare-bad-method-key", ["compare", "c.yaml"], {"c.yaml": "@compare_bad_method.yaml"},
         "methods.hyperpelt: unknown config key 'train.stepz'"),
    # ---------------------------------------------------------------------- image features and usage
    case("features-not-an-image", ["features", "imgs", "--out", "f.safetensors", "--quiet"],
         {"imgs/a.png": "@not_an_image.png"}, "imgs/a.png: cannot decode image"),
    case("features-list-latin1", ["features", "list.txt", "--out", "f.safetensors", "--quiet"],
         {"list.txt": "@images_latin1.txt"}, "list.txt:1: not UTF-8 text"),
    case("features-damaged-cache", ["features", "imgs", "--out", "f.safetensors", "--quiet"],
         {"imgs/a.png": "@not_an_image.png", "f.safetensors": "not safetensors"},
         "f.safetensors: not a readable safetensors file"),
    case("lowresource-zero-n", ["lowresource", "c.yaml", "--n", "0"], {"c.yaml": "@compare.yaml"},
         "argument --n: expected numbers >= 1"),
    case("unknown-command", ["frobnicate"], {}, "invalid choice: 'frobnicate'"),
]


@pytest.fixture(autouse=True)
def process_tasks_unchanged():
    """Tasks declared by a case are its run's: the process-wide tasks stay as they were."""
    before = dict(registry._REGISTRY)
    yield
    assert registry._REGISTRY == before


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished one-step run of the tiny recipe (rte), for the cases that read or damage a run."""
    from hyperpelt.config import load_config

    out = tmp_path_factory.mktemp("tiny")
    config = load_config(HOSTILE / "tiny.yaml", [f"train.output_dir={out}"])
    train(config, out / "run", quiet=True)
    return out / "run"


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
            else "folder" for p in sorted(folder.rglob("*"))}


def lay_out(folder: Path, files: dict) -> None:
    for name, source in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if source is None:  # remove it (from the run copied in)
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        elif callable(source):
            source(path)
        elif isinstance(source, bytes):
            path.write_bytes(source)
        elif source.startswith("@"):
            shutil.copyfile(HOSTILE / source[1:], path)
        else:
            path.write_text(source)


@pytest.mark.parametrize("args, files, expected, with_run", CASES)
def test_hostile_input_is_one_line_naming_it(args, files, expected, with_run, request, tmp_path, monkeypatch,
                                             capsys):
    if with_run:
        shutil.copytree(request.getfixturevalue("tiny_run"), tmp_path / "run")
    lay_out(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(args)
    except SystemExit as exit:  # usage errors
        code = exit.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert snapshot(tmp_path) == before  # nothing written, nothing overwritten


def test_the_corpus_is_large_and_every_file_in_it_is_used():
    assert len(CASES) >= 50
    used = {source[1:] for param in CASES for source in param.values[1].values()
            if isinstance(source, str) and source.startswith("@")}
    assert used == {p.name for p in HOSTILE.iterdir() if p.suffix != ".py" and p.name != "__pycache__"}


@pytest.mark.parametrize("name", ["csv-latin1", "checkpoint-truncated-json", "predict-json-missing-a-field"])
def test_no_traceback_in_a_real_process(name, tmp_path, tiny_run):
    args, files, expected, with_run = next(p.values for p in CASES if p.id == name)
    if with_run:
        shutil.copytree(tiny_run, tmp_path / "run")
    lay_out(tmp_path, files)
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "hyperpelt", *args], cwd=tmp_path, capture_output=True,
                            env=dict(os.environ, PYTHONPATH=path), text=True, timeout=300)
    assert_user_error(result, expected)
