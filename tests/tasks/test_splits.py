"""The split protocol: its rules on the fixture data, and the split sizes of the real data."""

import pytest

from conftest import FIXTURES, REAL_DATA
from hyperpelt.errors import UserError
from hyperpelt.tasks import Splits, get_task, load_task_splits
from hyperpelt.tasks.splits import CARVED_VALIDATION

real = pytest.mark.requires_data


@pytest.mark.parametrize("name, train, dev, root", [
    pytest.param("rte", 2490, 277, REAL_DATA, marks=real),
    pytest.param("mrpc", 3668, 408, REAL_DATA, marks=real),
    pytest.param("stsb", 5749, 1500, REAL_DATA, marks=real),
    pytest.param("cola", 8551, 1043, REAL_DATA, marks=real),
    pytest.param("cb", 250, 56, REAL_DATA, marks=real),
    pytest.param("boolq", 9427, 3270, REAL_DATA, marks=real),
    ("rte", 160, 48, FIXTURES), ("mrpc", 160, 48, FIXTURES), ("stsb", 160, 50, FIXTURES),
    ("cola", 160, 48, FIXTURES), ("cb", 96, 48, FIXTURES), ("boolq", 96, 48, FIXTURES),
])
def test_small_tasks_halve_dev(name, train, dev, root):
    splits = load_task_splits(name, data_dir=root)
    assert len(splits.train) == train
    assert len(splits.validation) == dev // 2
    assert len(splits.test) == dev - dev // 2
    held_out = sorted(ex["idx"] for ex in splits.validation + splits.test)
    assert held_out == list(range(dev))


@pytest.mark.parametrize("name, train, test, root", [
    pytest.param("trec", 5452, 500, REAL_DATA, marks=real),
    pytest.param("imdb", 10000, 25000, REAL_DATA, marks=real),
    ("trec", 120, 48, FIXTURES), ("imdb", 96, 48, FIXTURES),
])
def test_transfer_tasks_halve_test(name, train, test, root):
    splits = load_task_splits(name, data_dir=root)
    sizes = (len(splits.train), len(splits.validation), len(splits.test))
    assert sizes == (train, test // 2, test - test // 2)


@pytest.mark.parametrize("train, dev, root", [pytest.param(67349, 872, REAL_DATA, marks=real),
                                              (200, 48, FIXTURES)])
def test_sst2_carves_validation_out_of_train(train, dev, root):
    """1,000 examples move to validation, at most half of train (the fixture's 200 give 100)."""
    carved = min(CARVED_VALIDATION, train // 2)
    splits = load_task_splits("sst2", data_dir=root)
    assert len(splits.validation) == carved
    assert len(splits.train) == train - carved
    assert len(splits.test) == dev
    train_idx = {ex["idx"] for ex in splits.train}
    val_idx = {ex["idx"] for ex in splits.validation}
    assert not train_idx & val_idx and len(train_idx | val_idx) == train
    train_text = {ex["sentence"] for ex in splits.train}
    assert not train_text & {ex["sentence"] for ex in splits.validation}


def test_seeded_and_deterministic():
    first = load_task_splits("rte", data_dir=FIXTURES, seed=3)
    again = load_task_splits("rte", data_dir=FIXTURES, seed=3)
    other = load_task_splits("rte", data_dir=FIXTURES, seed=4)
    assert first == again
    assert [e["idx"] for e in first.validation] != [e["idx"] for e in other.validation]
    sst_a = load_task_splits("sst2", data_dir=FIXTURES, seed=1)
    sst_b = load_task_splits("sst2", data_dir=FIXTURES, seed=2)
    assert {e["idx"] for e in sst_a.validation} != {e["idx"] for e in sst_b.validation}


def test_default_data_dir_is_the_fixtures_in_tests():
    """conftest points $HYPERPELT_DATA_DIR at the fixtures, so no test reads ../shared/data by accident."""
    assert load_task_splits("rte") == load_task_splits("rte", data_dir=FIXTURES)


def test_examples_are_fresh_copies():
    splits = load_task_splits("cb", data_dir=FIXTURES)
    splits.train[0]["label"] = 99
    assert load_task_splits("cb", data_dir=FIXTURES).train[0]["label"] != 99


def test_max_train_keeps_seeded_subset():
    full = load_task_splits("sst2", data_dir=FIXTURES, seed=5)
    small = load_task_splits("sst2", data_dir=FIXTURES, seed=5, max_train=50)
    again = load_task_splits("sst2", data_dir=FIXTURES, seed=5, max_train=50)
    assert len(small.train) == 50 and small == again
    assert small.validation == full.validation and small.test == full.test
    full_idx = {e["idx"] for e in full.train}
    assert {e["idx"] for e in small.train} <= full_idx
    assert not {e["idx"] for e in small.train} & {e["idx"] for e in small.validation}
    cb = load_task_splits("cb", data_dir=FIXTURES)
    assert len(cb.train) < 1000
    # more than there are: all of them
    assert load_task_splits("cb", data_dir=FIXTURES, max_train=1000).train == cb.train
    with pytest.raises(UserError, match="max_train"):
        load_task_splits("cb", data_dir=FIXTURES, max_train=0)


def test_accepts_task_object_and_names_unknown_split():
    splits = load_task_splits(get_task("cb"), data_dir=FIXTURES)
    assert isinstance(splits, Splits) and splits["test"] is splits.test
    with pytest.raises(UserError, match="unknown split 'dev'"):
        splits["dev"]
    with pytest.raises(UserError, match="no source 'web'"):
        load_task_splits("cb", data_dir=FIXTURES, source="web")


def test_carve_on_small_file_keeps_half(tmp_path):
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"s{i} \t{i % 2}\n" for i in range(10)))
    (folder / "dev.tsv").write_text("sentence\tlabel\nd \t1\n")
    splits = load_task_splits("sst2", data_dir=tmp_path)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (5, 5, 1)
