"""Tasks declared in YAML files: `hyperpelt tasks --check` reads back what the files hold, each bad
declaration is one line naming the file and the field, and a declared task trains beside RTE and
predicts where its declaration is gone."""

import json
import random
import re
import shutil

import pytest

from helpers.cli import assert_user_error, hyperpelt
from hyperpelt.errors import UserError
from hyperpelt.tasks import TaskRegistry, get_task, registry
from hyperpelt.tasks.declaration import parse
from hyperpelt.tasks.declared import declare, declare_all, declare_file

POSITIVE = ["a wonderful, moving film", "I loved every minute of it", "brilliant acting and a great story",
            "a delightful and charming movie", "the best film I have seen this year",
            "superb, funny and warm"]
NEGATIVE = ["a dull, boring mess", "I hated every minute of it", "terrible acting and an awful story",
            "a tedious and ugly movie", "the worst film I have seen this year", "painful, stupid and cold"]


@pytest.fixture(autouse=True)
def process_tasks_unchanged():
    """Declaring tasks (a task file, a config, a checkpoint) leaves the process-wide tasks as they were."""
    before = dict(registry._REGISTRY)
    yield
    assert registry._REGISTRY == before


def write_csv(path, rows, header=("text", "label")):
    lines = [",".join(header)] + [f'"{text}",{label}' for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sentiment_rows(n_pos: int, n_neg: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = [(rng.choice(POSITIVE), "positive") for _ in range(n_pos)]
    rows += [(rng.choice(NEGATIVE), "negative") for _ in range(n_neg)]
    rng.shuffle(rows)
    return rows


def task_file(folder, name="mysent", **fields) -> str:
    """A task file declaring a text,label sentiment CSV task (fields override the declaration's)."""
    body = {"name": name, "inputs": {"sentence": "text"}, "labels": ["negative", "positive"],
            "metrics": ["accuracy", "f1"], "files": {"train": "train.csv", "dev": "dev.csv"}, **fields}
    body = {key: value for key, value in body.items() if value is not None}  # None: leave the field out
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(body), encoding="utf-8")  # JSON is YAML
    return path


def table(stdout: str, first: str) -> dict[str, list[str]]:
    """The rows of the table that follows the header line starting with ``first``, by their first cell."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = cells[1:]
    return rows


# ------------------------------------------------------------------------------------------ the round trip


def test_check_prints_the_split_sizes_and_label_counts_written(tmp_path):
    write_csv(tmp_path / "train.csv", sentiment_rows(7, 5, seed=0))
    write_csv(tmp_path / "dev.csv", sentiment_rows(2, 4, seed=1))
    write_csv(tmp_path / "test.csv", sentiment_rows(3, 3, seed=2))
    path = task_file(tmp_path, files={"train": "train.csv", "dev": "dev.csv", "test": "test.csv"})
    result = hyperpelt("tasks", "--check", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: 1 task, every field valid")
    assert "task mysent: classification, metrics accuracy, f1, split rule given" in result.stdout
    assert f"  train: {tmp_path / 'train.csv'}" in result.stdout
    rows = table(result.stdout, "split")
    assert table(result.stdout, "split") == {"train": ["12", "5", "7"], "validation": ["6", "4", "2"],
                                              "test": ["6", "3", "3"]}
    assert result.stdout.splitlines()[-5].split() == ["split", "examples", "negative", "positive"]
    assert sum(int(r[0]) for r in rows.values()) == 24


def test_check_halves_dev_by_the_split_seed_and_reads_columns_by_index(tmp_path):
    """No header, columns by index, label values that are not the names, the rule inferred (halve_dev)."""
    rows = [(text, "1" if label == "positive" else "0") for text, label in sentiment_rows(4, 6, seed=3)]
    (tmp_path / "train.tsv").write_text("".join(f"{t}\t{v}\n" for t, v in rows), encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("".join(f"{t}\t{v}\n" for t, v in rows[:5]), encoding="utf-8")
    path = task_file(tmp_path, name="bytsv", inputs={"review": 0}, label=1, header=False,
                     labels={"0": "negative", "1": "positive"}, metrics="accuracy",
                     files={"train": "train.tsv", "dev": "dev.tsv"})
    result = hyperpelt("tasks", "--check", path)
    assert result.returncode == 0, result.stderr
    assert "split rule halve_dev" in result.stdout
    got = table(result.stdout, "split")
    dev_counts = [sum(1 for _, v in rows[:5] if v == "0"), sum(1 for _, v in rows[:5] if v == "1")]
    assert got["train"] == ["10", "6", "4"]
    assert [int(got["validation"][0]), int(got["test"][0])] == [2, 3]  # floor(5 / 2) to validation
    assert [int(got["validation"][i]) + int(got["test"][i]) for i in (1, 2)] == dev_counts


def test_check_a_regression_task_prints_the_score_range(tmp_path):
    lines = ['{"q": "how similar?", "score": 0.5}', '{"q": "alike", "score": 4.5}', '{"q": "x", "score": 2}']
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "test.jsonl").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    path = task_file(tmp_path, name="sim", inputs=["q"], label="score", labels=None, regression=True,
                     metrics=["pearson"], files={"train": "train.jsonl", "test": "test.jsonl"})
    result = hyperpelt("tasks", "--check", path)
    assert result.returncode == 0, result.stderr
    assert "task sim: regression, metrics pearson, split rule halve_test" in result.stdout
    assert table(result.stdout, "split")["train"] == ["3", "0.5", "2.333", "4.5"]


def test_a_declared_score_is_a_text_to_text_target_as_it_is_not_rounded_like_stsb(tmp_path):
    path = task_file(tmp_path, name="rating", labels=None, regression=True, metrics=["pearson"])
    rating = declare_file(path, into=TaskRegistry())[0]
    assert [rating.target_text({"label": x}) for x in (7.25, 0.123456, 10)] == ["7.25", "0.1235", "10"]
    assert rating.parse_prediction(rating.target_text({"label": 7.25})) == 7.25
    assert get_task("stsb").target_text({"label": 7.25}) == "5.0"  # T5's STS-B targets: 0.2 steps in 0..5
    assert get_task("stsb").target_text({"label": 3.7}) == "3.8"


def test_tasks_lists_a_declared_task_beside_the_built_in_ones(tmp_path):
    path = task_file(tmp_path)
    result = hyperpelt("tasks", "--task-file", path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[3:]}
    assert rows["mysent"].split()[1:6] == ["negative,", "positive", "accuracy,", "f1", "no"]
    assert rows["mysent"].split()[-2:] == ["halve_dev", str(path)]
    assert rows["rte"].endswith("built in")


# ------------------------------------------------------------------------------------------ bad declarations


@pytest.mark.parametrize("fields, csv_rows, field, needle", [
    ({"metrics": ["acc"]}, None, "metrics", "unknown metric 'acc'; known: accuracy, f1, matthews_corrcoef"),
    ({"files": {"train": "train.csv", "dev": "no.csv"}}, None, "files.dev", "no.csv: file not found"),
    ({"label": "sentiment"}, None, "label", "no column 'sentiment' in the header (columns: text, label)"),
    ({}, [("so so", "neutral")], "labels", "train.csv:4: label 'neutral' is not allowed"),
    ({"inputs": {"sentence": "review"}}, None, "inputs.sentence", "no column 'review'"),
    ({"name": "rte"}, None, "name", "'rte' is a built-in task"),
    ({"metric": ["accuracy"]}, None, "metric", "unknown field"),
    ({"metrics": ["pearson"]}, None, "metrics", "'pearson' scores regression tasks"),
    ({"split_rule": "given"}, None, "files", "split rule 'given' reads train, dev, test; test is missing"),
    ({"labels": ["negative", "negative"]}, None, "labels", "'negative' is given twice"),
    ({"inputs": {"label": "text"}}, None, "inputs.label", "a key the library sets"),
])
def test_a_bad_declaration_is_one_line_naming_the_file_and_the_field(tmp_path, fields, csv_rows, field,
                                                                      needle):
    write_csv(tmp_path / "train.csv", [("good", "positive"), ("bad", "negative")] + (csv_rows or []))
    write_csv(tmp_path / "dev.csv", [("fine", "positive"), ("awful", "negative")])
    path = task_file(tmp_path, **fields)
    line = assert_user_error(hyperpelt("tasks", "--check", path), needle)
    name = fields.get("name", "mysent")
    assert line.startswith(f"error: {path}: task '{name}': {field}: "), line


def test_a_task_file_that_is_not_yaml_names_its_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ninputs: [a\nlabels: b\n")
    assert_user_error(hyperpelt("tasks", "--check", path), f"{path}:", "invalid YAML")


# ------------------------------------------------------------------------------------------ in the library


def test_declaring_again_is_harmless_and_a_clash_is_refused(tmp_path):
    write_csv(tmp_path / "train.csv", [("good", "positive")])
    path = task_file(tmp_path, name="again")
    tasks = TaskRegistry()
    first, again = declare_file(path, into=tasks), declare_file(path, into=tasks)
    assert first == again and tasks.get("again") is first[0]
    canonical = tasks.declaration("again")
    assert canonical["files"] == {"train": [str(tmp_path / "train.csv")], "dev": [str(tmp_path / "dev.csv")]}
    assert parse(canonical, "x")[1] == canonical  # the canonical form parses back to itself
    assert declare_all(None, [canonical], into=tasks) == [canonical]  # as a run folder's config does
    (tmp_path / "other").mkdir()
    other = task_file(tmp_path / "other", name="again", metrics=["accuracy"])
    with pytest.raises(UserError, match=rf"task 'again': name: a different task 'again' is declared in "
                                        rf"{re.escape(str(path))}"):
        declare_file(other, into=tasks)
    assert declare_file(other, into=TaskRegistry())[0].metrics == (get_task("rte").metrics)  # elsewhere: fine
    with pytest.raises(UserError, match=r"data.task_definitions\[0\]: task 'x2': labels: missing"):
        declare({"name": "x2", "inputs": ["t"], "files": {"train": "a.csv", "dev": "b.csv"}},
                "data.task_definitions[0]", into=tasks)


def test_a_run_config_declares_its_task_files_as_it_loads(tmp_path):
    from hyperpelt import load_config

    path = task_file(tmp_path, name="fromconfig")
    config = load_config(None, ["model.name=minilm-l6", "data.tasks=[rte,fromconfig]",
                                f"data.task_files=[{path}]", "heads.kinds={fromconfig: classification}"])
    assert config.data.task_files == []
    assert config.data.task_definitions == [config.data.registry.declaration("fromconfig")]
    assert config.data.registry.get("fromconfig").metrics == (get_task("mrpc").metrics)  # accuracy, f1
    with pytest.raises(UserError, match=r"data.task_files: expected a list of paths"):
        load_config(None, ["data.task_files=sent.yaml"])


def test_runs_loaded_in_one_process_keep_their_own_declarations_of_a_name(tmp_path):
    from hyperpelt import load_config
    from hyperpelt.checkpoint import CONFIG, read_checkpoint_config

    three = {"labels": ["bad", "good", "meh"], "metrics": ["accuracy"]}
    for folder in ("a", "b", "ck"):
        (tmp_path / folder).mkdir()
    files = [task_file(tmp_path / "a", name="same"), task_file(tmp_path / "b", name="same", **three)]
    _, decl = parse(json.loads(task_file(tmp_path / "ck", name="same", **three).read_text()), "x")
    meta = {"model": {"name": "minilm-l6"}, "method": {"name": "hyperpelt"}, "tasks": ["same"],
            "task_definitions": [decl], "heads": {"kinds": {"same": "classification"}}}
    (tmp_path / "ck" / CONFIG).write_text(json.dumps(meta))
    checkpoint = read_checkpoint_config(tmp_path / "ck")["registry"]  # a checkpoint first, then configs
    configs = [load_config(None, ["model.name=minilm-l6", "data.tasks=[same]", f"data.task_files=[{path}]",
                                  "heads.kinds={same: classification}"]).data for path in files]
    assert [data.registry.get("same").label_names for data in configs] == [("negative", "positive"),
                                                                           ("bad", "good", "meh")]
    assert checkpoint.get("same").label_names == ("bad", "good", "meh")
    assert [data.registry.declared_in("same") for data in configs] == [str(path) for path in files]
    with pytest.raises(UserError, match="unknown task 'same'"):
        get_task("same")  # (and the autouse fixture: the process-wide tasks are as they were)


def test_a_data_error_met_in_training_names_the_task_file_and_the_field(tmp_path):
    from hyperpelt import load_config
    from hyperpelt.data.batches import read_splits

    write_csv(tmp_path / "train.csv", [("fine", "positive"), ("so so", "neutral")])
    write_csv(tmp_path / "dev.csv", sentiment_rows(2, 2, seed=1))
    path = task_file(tmp_path, name="badlabel")
    config = load_config(None, ["model.name=minilm-l6", "data.tasks=[badlabel]", f"data.task_files=[{path}]"])
    with pytest.raises(UserError) as err:
        read_splits(config.data)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: task 'badlabel': labels: {tmp_path / 'train.csv'}:3: label 'neutral'")


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    """RTE and a sentiment task declared only in YAML over a CSV, trained together by `hyperpelt train`."""
    folder = tmp_path_factory.mktemp("sentiment")
    write_csv(folder / "train.csv", sentiment_rows(20, 20, seed=4))
    write_csv(folder / "dev.csv", sentiment_rows(8, 8, seed=5))
    path = task_file(folder)
    runs = tmp_path_factory.mktemp("runs")
    result = hyperpelt(
        "train", "configs/demo.yaml", "data.tasks=[rte,mysent]", f"data.task_files=[{path}]",
        "data.max_train_examples=40", "data.max_eval_examples=16", "model.max_input_length=32",
        "method.prefix_length=2", "method.hyper_dim=8", "method.task_dim=8", "method.projector_hidden=16",
        "method.adapter_dim=4", "train.steps=4", "train.eval_every=2", "train.batch_size=4",
        "train.eval_batch_size=16", "heads.balanced_classes=[]", "heads.probe_examples_by_task={}",
        f"train.output_dir={runs}", "train.run_name=r", "--quiet", timeout=600)
    assert result.returncode == 0, result.stderr
    return folder, runs / "r", result


def test_a_declared_task_trains_beside_rte(sentiment_run):
    _, run, result = sentiment_run
    results = json.loads((run / "results.json").read_text())
    assert set(results["tasks"]) == {"rte", "mysent"}
    mysent = results["tasks"]["mysent"]
    assert mysent["examples"] == 8  # the test half of the 16 dev examples
    assert set(mysent["metrics"]) == {"accuracy", "f1"}
    # the probe start learns the sentiment from MiniLM's embeddings; chance is 50
    assert mysent["metrics"]["accuracy"] >= 87.5, mysent
    assert "mysent" in result.stdout


def test_a_declared_task_predicts_where_its_declaration_is_gone(sentiment_run, tmp_path):
    from hyperpelt.inference import load_run

    folder, run, _ = sentiment_run
    texts = ["an absolutely wonderful and delightful film", "a boring, awful and painful movie"]
    assert "mysent" not in registry._REGISTRY  # trained in another process
    model = load_run(run)  # declares it again, from the checkpoint
    answers = model.predict("mysent", texts)
    assert answers == ["positive", "negative"]
    moved = shutil.move(str(folder), str(tmp_path / "gone"))  # the task file and the CSVs
    try:
        cli = hyperpelt("predict", run, "--task", "mysent", "--text", *texts)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.split() == answers
    finally:
        shutil.move(moved, str(folder))


def test_eval_of_a_declared_task_needs_its_data_but_not_its_task_file(sentiment_run):
    folder, run, _ = sentiment_run
    (folder / "mysent.yaml").rename(folder / "mysent.yaml.away")
    try:
        result = hyperpelt("eval", run)
    finally:
        (folder / "mysent.yaml.away").rename(folder / "mysent.yaml")
    assert result.returncode == 0, result.stderr
    scored = json.loads((run / "eval_test.json").read_text())["tasks"]["mysent"]
    trained = json.loads((run / "results.json").read_text())["tasks"]["mysent"]
    assert scored["examples"] == trained["examples"] == 8
    assert scored["metrics"] == pytest.approx(trained["metrics"])
