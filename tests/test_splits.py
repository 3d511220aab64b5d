"""The split protocol on the real data."""

import os
from pathlib import Path

import pytest

from hyperpelt.errors import UserError
from hyperpelt.tasks import Splits, get_task, load_task_splits

DATA = Path(os.environ.get("HYPERPELT_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
pytestmark = pytest.mark.skipif(not (DATA / "glue").is_dir(), reason="no local data")


@pytest.mark.parametrize("name, train, dev", [
    ("rte", 2490, 277), ("mrpc", 3668, 408), ("stsb", 5749, 1500), ("cola", 8551, 1043), ("cb", 250, 56),
    ("boolq", 9427, 3270),
])
def test_small_tasks_halve_dev(name, train, dev):
    splits = load_task_splits(name, data_dir=DATA)
    assert len(splits.train) == train
    assert len(splits.validation) == dev // 2
    assert len(splits.test) == dev - dev // 2
    held_out = sorted(ex["idx"] for ex in splits.validation + splits.test)
    assert held_out == list(range(dev))


@pytest.mark.parametrize("name, train, test", [("trec", 5452, 500), ("imdb", 10000, 25000)])
def test_transfer_tasks_halve_test(name, train, test):
    splits = load_task_splits(name, data_dir=DATA)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (train, test // 2, test - test // 2)


def test_sst2_carves_validation_out_of_train():
    splits = load_task_splits("sst2", data_dir=DATA)
    assert len(splits.validation) == 1000
    assert len(splits.train) == 67349 - 1000
    assert len(splits.test) == 872
    train_idx = {ex["idx"] for ex in splits.train}
    val_idx = {ex["idx"] for ex in splits.validation}
    assert not train_idx & val_idx and len(train_idx | val_idx) == 67349
    train_text = {ex["sentence"] for ex in splits.train}
    assert not train_text & {ex["sentence"] for ex in splits.validation}


def test_seeded_and_deterministic():
    first = load_task_splits("rte", data_dir=DATA, seed=3)
    again = load_task_splits("rte", data_dir=DATA, seed=3)
    other = load_task_splits("rte", data_dir=DATA, seed=4)
    assert first == again
    assert [e["idx"] for e in first.validation] != [e["idx"] for e in other.validation]
    sst_a = load_task_splits("sst2", data_dir=DATA, seed=1)
    sst_b = load_task_splits("sst2", data_dir=DATA, seed=2)
    assert {e["idx"] for e in sst_a.validation} != {e["idx"] for e in sst_b.validation}


def test_examples_are_fresh_copies():
    splits = load_task_splits("cb", data_dir=DATA)
    splits.train[0]["label"] = 99
    assert load_task_splits("cb", data_dir=DATA).train[0]["label"] != 99


def test_max_train_keeps_seeded_subset():
    full = load_task_splits("sst2", data_dir=DATA, seed=5)
    small = load_task_splits("sst2", data_dir=DATA, seed=5, max_train=100)
    again = load_task_splits("sst2", data_dir=DATA, seed=5, max_train=100)
    assert len(small.train) == 100 and small == again
    assert small.validation == full.validation and small.test == full.test
    full_idx = {e["idx"] for e in full.train}
    assert {e["idx"] for e in small.train} <= full_idx
    assert not {e["idx"] for e in small.train} & {e["idx"] for e in small.validation}
    assert len(load_task_splits("cb", data_dir=DATA, max_train=1000).train) == 250
    with pytest.raises(UserError, match="max_train"):
        load_task_splits("cb", data_dir=DATA, max_train=0)


def test_accepts_task_object_and_names_unknown_split():
    splits = load_task_splits(get_task("cb"), data_dir=DATA)
    assert isinstance(splits, Splits) and splits["test"] is splits.test
    with pytest.raises(UserError, match="unknown split 'dev'"):
        splits["dev"]
    with pytest.raises(UserError, match="no source 'web'"):
        load_task_splits("cb", data_dir=DATA, source="web")


def test_carve_on_small_file_keeps_half(tmp_path):
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"s{i} \t{i % 2}\n" for i in range(10)))
    (folder / "dev.tsv").write_text("sentence\tlabel\nd \t1\n")
    splits = load_task_splits("sst2", data_dir=tmp_path)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (5, 5, 1)
