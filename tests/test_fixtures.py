"""The synthetic fixtures in tests/fixtures/data: reproducible, laid out like the real data, and with a
tokenizer that works as the tests need a T5 tokenizer to."""

import importlib.util

import pytest
from transformers import AutoTokenizer

from conftest import FIXTURES, ROOT
from hyperpelt.backbones.t5 import T5_SPECIAL_IDS, local_t5_tokenizer
from hyperpelt.tasks import get_task, load_task_splits, task_names
from hyperpelt.tasks.sources import default_data_dir

SCRIPT = ROOT / "tests" / "fixtures" / "make_fixtures.py"


def make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_reproduces_the_committed_files_byte_for_byte(tmp_path):
    make_fixtures().write(tmp_path)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(FIXTURES) for p in FIXTURES.rglob("*") if p.is_file())
    assert written == committed
    changed = [str(rel) for rel in written if (tmp_path / rel).read_bytes() != (FIXTURES / rel).read_bytes()]
    assert not changed, f"rerun tests/fixtures/make_fixtures.py and commit: {changed}"


def test_tests_read_the_fixtures():
    assert default_data_dir() == FIXTURES
    assert local_t5_tokenizer() == str(FIXTURES / "tokenizers" / "t5")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURES / "tokenizers" / "t5")


def test_tokenizer_has_t5_special_ids(tokenizer):
    assert tokenizer.is_fast and 300 <= len(tokenizer) <= 1000
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == T5_SPECIAL_IDS["pad_token_id"]
    assert tokenizer.eos_token_id == T5_SPECIAL_IDS["eos_token_id"]
    assert tokenizer("a dog")["input_ids"][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("name", task_names())
def test_tokenizer_round_trips_every_task_format_and_label(tokenizer, name):
    """Prefix, field names and every label word (or score) come back from decode(encode(text))."""
    task = get_task(name)
    fields = {key: "The old dog watched the ball." for _, key in task.input_fields}
    if task.is_open:  # answers and captions are free text
        labels = ["2", "yes", "the old dog watched the ball"]
    else:
        labels = range(task.num_labels) if not task.is_regression else [0.0, 2.5, 3.4, 3.8, 5.0]
    for label in labels:
        for text in (task.input_text({**fields, "label": label}), task.target_text({"label": label})):
            ids = tokenizer(text)["input_ids"]
            assert tokenizer.unk_token_id not in ids, text
            assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("name", ["rte", "mrpc", "stsb", "cola", "sst2", "cb", "boolq", "trec", "imdb"])
def test_fixture_texts_encode_without_unknown_pieces(tokenizer, name):
    task = get_task(name)
    splits = load_task_splits(name)
    for split in (splits.train, splits.validation, splits.test):
        for ex in split:
            ids = tokenizer(task.input_text(ex))["input_ids"]
            assert tokenizer.unk_token_id not in ids, task.input_text(ex)


@pytest.mark.parametrize("name", ["rte", "mrpc", "stsb", "cola", "sst2", "cb", "boolq", "trec", "imdb"])
def test_every_class_is_in_every_split(name):
    task = get_task(name)
    splits = load_task_splits(name)
    for split in (splits.train, splits.validation, splits.test):
        labels = [ex["label"] for ex in split]
        if task.is_regression:
            assert min(labels) < 1.5 and max(labels) > 3.5
        else:
            assert set(labels) == set(range(task.num_labels))
