"""Task registry, text-to-text formats and local file readers."""

import pytest

from conftest import FIXTURES, REAL_DATA
from hyperpelt.errors import UserError
from hyperpelt.tasks import Task, get_task, load_task_splits, task_names
from hyperpelt.tasks.registry import register, round_stsb
from hyperpelt.tasks.sources import read_local

ALL = ["boolq", "cb", "cola", "imdb", "mnli", "mrpc", "paws", "qnli", "qqp", "rte", "scitail", "sst2",
       "stsb", "trec", "yelp_polarity"]
# The tasks with a local train file in the data pack (and so in the fixtures, laid out the same way); the
# others are read from small files written by test_original_formats_of_missing_tasks.
WITH_FILES = ["boolq", "cb", "cola", "imdb", "mrpc", "rte", "sst2", "stsb", "trec"]
# The vision-and-language tasks (tasks/vl.py), tested in tests/tasks/test_vl_tasks.py.
VL = ["coco", "easy_vqa", "gqa", "okvqa", "snli_ve", "vgqa", "vqa"]


def test_registry_has_all_tasks():
    assert task_names() == sorted(ALL + VL)


def test_unknown_task_is_user_error():
    with pytest.raises(UserError, match="unknown task 'xyz'; known tasks: boolq, cb"):
        get_task("xyz")


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="rte"):
        register(get_task("rte"))


def test_tasks_with_files_are_those_of_the_fixtures():
    train_files = {n: dict(get_task(n).local.files)["train"] for n in ALL}
    assert [n for n in ALL if any((FIXTURES / p).is_file() for p in train_files[n])] == WITH_FILES


@pytest.mark.parametrize("root", [FIXTURES, pytest.param(REAL_DATA, marks=pytest.mark.requires_data)],
                         ids=["fixtures", "real"])
@pytest.mark.parametrize("name", WITH_FILES)
def test_first_train_example_round_trips(name, root):
    task = get_task(name)
    example = read_local(name, task.local, "train", root)[0]
    text = task.input_text(example)
    assert text.startswith(task.prefix + " ")
    for shown, key in task.input_fields:
        assert f"{shown}: " in text and str(example[key]).strip() in text
    assert task.input_text(example, with_prefix=False) == text[len(task.prefix) + 1:]
    parsed = task.parse_prediction(" " + task.target_text(example) + "\n")
    if task.is_regression:
        assert abs(parsed - example["label"]) <= 0.1
    else:
        assert parsed == example["label"]
        assert 0 <= parsed < task.num_labels


@pytest.mark.requires_data
def test_known_first_examples():
    rte = read_local("rte", get_task("rte").local, "train", REAL_DATA)[0]
    assert rte == {"sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
                   "sentence2": "Weapons of Mass Destruction Found in Iraq.", "label": 1, "idx": 0}
    assert get_task("rte").input_text(rte) == (
        "rte sentence1: No Weapons of Mass Destruction Found in Iraq Yet. "
        "sentence2: Weapons of Mass Destruction Found in Iraq.")
    assert get_task("rte").target_text(rte) == "not_entailment"
    mrpc = read_local("mrpc", get_task("mrpc").local, "train", REAL_DATA)[0]
    # BOM stripped, header skipped
    assert mrpc["label"] == 1 and mrpc["sentence1"].startswith("Amrozi accused")
    assert get_task("mrpc").target_text(mrpc) == "equivalent"
    boolq = get_task("boolq")
    first = read_local("boolq", boolq.local, "train", REAL_DATA)[0]
    assert boolq.input_text(first).startswith("boolq question: do you have to be an all-star")
    assert " context: Home Run Derby -- " in boolq.input_text(first)
    assert boolq.target_text(first) == "False"
    stsb = read_local("stsb", get_task("stsb").local, "train", REAL_DATA)
    assert stsb[1]["label"] == pytest.approx(3.8) and get_task("stsb").target_text(stsb[1]) == "3.8"
    trec = read_local("trec", get_task("trec").local, "train", REAL_DATA)
    assert len(trec) == 5452 and trec[0]["text"] == "How did serfdom develop in and then leave Russia ?"
    assert get_task("trec").target_text(trec[0]) == "description"
    assert "sister city" in trec[65]["text"]  # the one latin-1 byte becomes a space


def test_readers_on_the_fixture_formats():
    """What test_known_first_examples checks on the real files, on the fixtures' copies of their formats."""
    first_line = lambda rel: (FIXTURES / rel).read_bytes().splitlines()[0]  # noqa: E731
    assert first_line("glue/MRPC/train.tsv").startswith("\ufeffQuality\t".encode())
    mrpc = read_local("mrpc", get_task("mrpc").local, "train", FIXTURES)
    assert mrpc[0]["idx"] == 0 and mrpc[0]["sentence1"][0].isupper()  # BOM stripped, header skipped
    assert {ex["label"] for ex in mrpc} == {0, 1}
    cola_lines = (FIXTURES / "glue/CoLA/train.tsv").read_text().splitlines()
    cola = read_local("cola", get_task("cola").local, "train", FIXTURES)
    assert len(cola) == len(cola_lines) and cola[0]["sentence"] == cola_lines[0].split("\t")[3]  # no header
    boolq = get_task("boolq")
    first = read_local("boolq", boolq.local, "train", FIXTURES)[0]
    assert boolq.input_text(first).startswith("boolq question: is the ")
    assert " context: The " in boolq.input_text(first) and " -- " in first["passage"]
    assert boolq.target_text(first) in ("False", "True") and isinstance(first["label"], int)
    stsb = read_local("stsb", get_task("stsb").local, "train", FIXTURES)
    scores = {ex["label"] for ex in stsb}
    assert min(scores) == 0.0 and max(scores) == 5.0
    tie = next(ex for ex in stsb if ex["label"] == pytest.approx(2.7))
    assert get_task("stsb").target_text(tie) == "2.8"  # 2.7 is 13.5 fifths: ties go up
    raw = (FIXTURES / "transfer/trec/train_5500.label").read_bytes().splitlines()
    odd = next(i for i, line in enumerate(raw) if b"\xf0" in line)
    trec = read_local("trec", get_task("trec").local, "train", FIXTURES)
    assert len(trec) == len(raw) and "sister city" in trec[odd]["text"]  # the latin-1 byte becomes a space
    assert {get_task("trec").target_text(ex) for ex in trec} == set(get_task("trec").label_names)


def test_formats_and_labels_follow_table_4():
    mnli_example = {"premise": "P", "hypothesis": "H", "label": 0}
    assert get_task("mnli").input_text(mnli_example) == "mnli hypothesis: H premise: P"
    assert get_task("cb").label_names == ("entailment", "contradiction", "neutral")
    assert get_task("cola").label_names == ("unacceptable", "acceptable")
    assert get_task("boolq").label_names == ("False", "True")
    scitail_example = {"premise": "P", "hypothesis": "H"}
    assert get_task("scitail").input_text(scitail_example) == "scitail premise: P hypothesis: H"
    assert get_task("qnli").input_text({"question": "Q", "sentence": "S"}) == "qnli question: Q sentence: S"
    assert get_task("stsb").num_labels == 1 and get_task("stsb").is_regression
    assert get_task("trec").num_labels == 6 and not get_task("trec").is_regression


def test_parse_prediction():
    rte, stsb = get_task("rte"), get_task("stsb")
    assert rte.parse_prediction("entailment") == 0
    assert rte.parse_prediction(" not_entailment ") == 1
    assert rte.parse_prediction("Entailment") is None
    assert rte.parse_prediction("") is None
    assert stsb.parse_prediction("3.4") == pytest.approx(3.4)
    assert stsb.parse_prediction("three") is None
    assert stsb.parse_prediction("nan") is None


@pytest.mark.parametrize("score, text", [(3.47, "3.4"), (3.5, "3.6"), (2.5, "2.6"), (0.0, "0.0"),
                                         (5.0, "5.0"), (0.1, "0.2"), (4.9, "5.0"), (3.8, "3.8"),
                                         (1.29, "1.2"), (1.31, "1.4")])
def test_stsb_rounding_to_nearest_fifth_ties_up(score, text):
    assert get_task("stsb").target_text({"label": score}) == text
    assert f"{round_stsb(score):.1f}" == text


def test_score_is_mean_of_metrics():
    metrics, score = get_task("mrpc").score([1, 0, 1, 1], [1, 0, 0, 1])
    assert metrics == pytest.approx({"accuracy": 75.0, "f1": 80.0})
    assert score == pytest.approx(77.5)
    metrics, score = get_task("rte").score([0, 1], [0, None])
    assert metrics == {"accuracy": 50.0} and score == 50.0


def test_prefix_defaults_to_name():
    task = Task("demo", (("sentence", "s"),), ("a", "b"), ())
    assert task.prefix == "demo"
    assert task.input_text({"s": " hi "}) == "demo sentence: hi"


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_malformed_tsv_line_names_file_and_line(tmp_path):
    _write(tmp_path / "glue/RTE/train.tsv", RTE_HEADER + "0\tA.\tB.\tentailment\n1\tC.\tnot_entailment\n")
    _write(tmp_path / "glue/RTE/dev.tsv", RTE_HEADER + "0\tA.\tB.\tentailment\n")
    with pytest.raises(UserError, match=r"train\.tsv:3: expected 4 tab-separated columns, found 3"):
        load_task_splits("rte", data_dir=tmp_path)


def test_bad_label_names_file_and_line(tmp_path):
    _write(tmp_path / "glue/RTE/train.tsv", RTE_HEADER + "0\tA.\tB.\tmaybe\n")
    with pytest.raises(UserError, match=r"train\.tsv:2: label 'maybe' is not allowed"):
        read_local("rte", get_task("rte").local, "train", tmp_path)
    _write(tmp_path / "superglue/cb/train.jsonl",
           '{"premise": "P", "hypothesis": "H", "label": "entailment"}\n{oops\n')
    with pytest.raises(UserError, match=r"cb/train\.jsonl:2: not valid JSON"):
        read_local("cb", get_task("cb").local, "train", tmp_path)


def test_missing_file_names_path_and_task(tmp_path):
    with pytest.raises(UserError) as err:
        load_task_splits("rte", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "glue/RTE/train.tsv") in message
    assert "'rte'" in message and "data_dir" in message


# Small files in the original formats of the tasks that have no local data here.
FAKE = {
    "glue/QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                          + "".join(f"{i}\t1\t2\tWhy {i}?\tHow {i}?\t{i % 2}\n" for i in range(6)),
    "glue/QQP/dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tA?\tB?\t1\n",
    "glue/MNLI/train.tsv": "\t".join(f"c{i}" for i in range(12)) + "\n"
                           + "".join("\t".join(["x"] * 8 + [f"P{i}", f"H{i}", "n", "neutral"]) + "\n"
                                     for i in range(6)),
    "glue/MNLI/dev_matched.tsv": "\t".join(f"c{i}" for i in range(16)) + "\n"
                                 + "\t".join(["x"] * 8 + ["P", "H"] + ["c"] * 5 + ["contradiction"]) + "\n",
    "glue/QNLI/train.tsv": "index\tquestion\tsentence\tlabel\n"
                           + "".join(f"{i}\tQ{i}?\tS{i}.\tnot_entailment\n" for i in range(6)),
    "glue/QNLI/dev.tsv": "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tentailment\n",
    "transfer/paws/train.tsv": "id\tsentence1\tsentence2\tlabel\n1\tA\tB\t1\n",
    "transfer/paws/dev.tsv": "id\tsentence1\tsentence2\tlabel\n1\tC\tD\t0\n",
    "transfer/paws/test.tsv": "id\tsentence1\tsentence2\tlabel\n1\tE\tF\t1\n",
    "transfer/scitail/train.tsv": "P1\tH1\tentails\n",
    "transfer/scitail/dev.tsv": "P2\tH2\tneutral\n",
    "transfer/scitail/test.tsv": "P3\tH3\tentails\n",
    "transfer/yelp_polarity/train.csv": '"1","Bad.\\nVery ""bad""."\n"2","Good."\n',
    "transfer/yelp_polarity/test.csv": '"2","Nice."\n"1","Meh."\n',
}


@pytest.mark.parametrize("name, first, label", [
    ("qqp", "qqp question1: Why 0? question2: How 0?", 0),
    ("mnli", "mnli hypothesis: H0 premise: P0", 1),
    ("qnli", "qnli question: Q0? sentence: S0.", 1),
    ("paws", "paws sentence1: A sentence2: B", 1),
    ("scitail", "scitail premise: P1 hypothesis: H1", 0),
    ("yelp_polarity", 'yelp_polarity sentence: Bad.\nVery "bad".', 0),
])
def test_original_formats_of_missing_tasks(tmp_path, name, first, label):
    for rel, text in FAKE.items():
        _write(tmp_path / rel, text)
    task = get_task(name)
    example = read_local(name, task.local, "train", tmp_path)[0]
    assert task.input_text(example) == first and example["label"] == label
    splits = load_task_splits(name, data_dir=tmp_path)
    assert splits.train and splits.test is not None
    if name == "mnli":
        assert splits.test[0]["label"] == 2  # gold label is the last of 16 dev columns
