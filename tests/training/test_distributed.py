"""Two processes (gloo, on CPU) train what one process trains from the same global batch.

Each process is forked from the test process with the environment ``torchrun`` sets (RANK, WORLD_SIZE,
MASTER_ADDR, ...), which Accelerate reads, and runs ``hyperpelt train``. The schedule has warmup and a
linear decay, so a scheduler stepped once per process would show in the learning rates; the eval splits
hold 11 examples, which 2 processes × 4 per batch do not divide, so padded or repeated examples would show
in the counts.
"""

import json
import multiprocessing
import os
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import free_port
from hyperpelt.cli import main
from hyperpelt.config import load_config
from hyperpelt.evaluation.evaluator import interleave

OVERRIDES = [
    "model.name=t5-tiny", "model.pretrained=false", "model.max_input_length=64", "model.max_target_length=4",
    "method.prefix_length=4", "method.hyper_dim=16", "method.task_dim=16", "method.projector_hidden=32",
    "method.adapter_dim=8", "data.tasks=[rte, stsb]", "data.max_train_examples=32",
    "data.max_eval_examples=11", "train.steps=8", "train.batch_size=8", "train.eval_batch_size=4",
    "train.eval_every=4", "train.log_every=1", "train.save_every=4", "train.learning_rate=0.01",
    "train.schedule=linear", "train.warmup_steps=3", "train.run_name=run",
]
# Float32 sums in another order differ in the last bits (~1e-7 relative): each process sums its half of
# the batch in two micro-batches and gloo adds the halves, where one process sums all 8 examples at once.
# AdamW moves a weight by at most about lr (0.01) per step, by lr × m / sqrt(v); a relative error e in the
# gradients changes that by about lr × e, and where gradient terms cancel e grows to ~1e-5, so 8 steps
# part the weights by up to ~1e-6 (measured: 1.5e-6 on weights up to 3). ATOL is 6 times that, and 300
# times below what a real difference does: a learning rate one step ahead, or a missing or doubled
# example, moves weights by ~1e-3.
ATOL = 1e-5


def _process(rank: int, port: int, argv: list[str], out) -> None:
    from accelerate.state import AcceleratorState

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    AcceleratorState._reset_state(reset_partial_state=True)  # forked: forget the test process's state
    sys.stdout = open(out / f"stdout{rank}.txt", "w")  # noqa: SIM115 (the process ends here)
    sys.stderr = open(out / f"stderr{rank}.txt", "w")  # noqa: SIM115
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def train_in(folder, processes: int):
    folder.mkdir()
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(load_config(None, [*OVERRIDES, f"train.output_dir={folder}"]).to_dict()))
    argv = ["train", str(recipe), "--quiet"]
    if processes == 1:
        assert main(argv) == 0
        return folder / "run"
    port, context = free_port(), multiprocessing.get_context("fork")
    workers = [context.Process(target=_process, args=(rank, port, argv, folder)) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    errors = [(folder / f"stderr{rank}.txt").read_text() for rank in range(2)]
    assert [w.exitcode for w in workers] == [0, 0], errors
    return folder / "run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    return train_in(root / "one", 1), train_in(root / "two", 2)


def _records(run, key):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_two_processes_train_the_weights_of_one(runs):
    one, two = runs
    for name in ("states/step-00000008/weights.safetensors", "best/method.safetensors"):
        ours, theirs = load_file(two / name), load_file(one / name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=ATOL, msg=f"{name}: {key}")
    # one scheduler step per optimizer step: the same warmup and decay
    assert [r["lr"] for r in _records(two, "lr")] == [r["lr"] for r in _records(one, "lr")]
    # the rate each step leaves for the next: warmup over 3 steps, then down to 0 at step 8
    expected = [0.01 * f for f in (2 / 3, 1, 1, 4 / 5, 3 / 5, 2 / 5, 1 / 5, 0)]
    assert [r["lr"] for r in _records(one, "lr")] == pytest.approx(expected)
    losses = zip(_records(two, "loss"), _records(one, "loss"))
    assert all(a["loss"] == pytest.approx(b["loss"], rel=1e-5) for a, b in losses)


def test_every_eval_example_is_scored_once_and_only_the_main_process_writes(runs):
    one, two = runs
    validations = [_records(run, "tasks") for run in (one, two)]
    assert [r["step"] for r in validations[1]] == [4, 8]  # each record once: only the main process logs
    results = [json.loads((run / "results.json").read_text()) for run in (one, two)]
    for scored in [*validations[0], *validations[1], *results]:
        assert {name: entry["examples"] for name, entry in scored["tasks"].items()} == {"rte": 11, "stsb": 11}
    assert results[1]["tasks"] == results[0]["tasks"]
    assert validations[1] == validations[0]
    listing = [sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if "tensorboard" not in p.parts)
               for run in (one, two)]
    assert listing[1] == listing[0]
    stdout = [(two.parent / f"stdout{rank}.txt").read_text() for rank in range(2)]
    assert f"run folder: {two}" in stdout[0] and stdout[1] == ""


def test_interleave_puts_each_process_batches_back_in_order():
    # 11 features in batches of 4 over 2 processes: process 0 predicts batches 0 and 2, process 1 batch 1
    assert interleave([[[0, 1, 2, 3], [8, 9, 10]], [[4, 5, 6, 7]]]) == list(range(11))
    assert interleave([[[0, 1]], []]) == [0, 1]
