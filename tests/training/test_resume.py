"""Killed and resumed runs end bit for bit where an uninterrupted run ends; so do runs whose save failed (a
full disk: one line, exit 2, the states before it and best/ as they were), runs past a malformed manifest
(skipped like a corrupt state), and a run that a second `train --resume` tried to take (refused: a process
that trains a run folder holds its lock).

Each segment of a run trains in a forked process that kills itself at a named point of the code
(``HYPERPELT_TEST_KILL_AT``, see ``hyperpelt.faults``): SIGKILL in the middle of a step, of a state write,
of a best-checkpoint swap; SIGTERM and SIGINT for a clean stop. The model has dropout, so the resumed RNG
states matter, and the validations are misaligned with the states, so best/ runs ahead of the last state.
"""

import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys

import pytest
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import hyperpelt.atomic
import hyperpelt.backbones.t5 as t5
import hyperpelt.checkpoint
import hyperpelt.training.state
from hyperpelt.checkpoint import valid_checkpoint
from hyperpelt.cli import main
from hyperpelt.config import load_config
from hyperpelt.data.mixture import TaskSampler
from hyperpelt.errors import UserError
from hyperpelt.faults import ENV
from hyperpelt.model import TunedModel
from hyperpelt.training.lock import run_lock
from hyperpelt.training.state import (
    MANIFEST,
    _join_optimizer,
    _split_optimizer,
    latest_state,
    restore_best,
    resume_point,
    state_folders,
    valid_state,
)
from hyperpelt.training.trainer import train

OVERRIDES = [
    "model.name=t5-tiny", "model.pretrained=false", "model.max_input_length=64", "model.max_target_length=4",
    "method.prefix_length=4", "method.hyper_dim=16", "method.task_dim=16", "method.projector_hidden=32",
    "method.adapter_dim=8",
    "data.tasks=[rte, stsb]", "data.max_train_examples=32", "data.max_eval_examples=8",
    # states at 2, 4, ..., 12; validations at 3, 6, 9, 12 (best at 3 and 12); losses logged at 5, 10, 12
    "train.steps=12", "train.eval_every=3", "train.save_every=2", "train.log_every=5", "train.batch_size=4",
    "train.eval_batch_size=8", "train.learning_rate=0.01", "train.run_name=run",
]
FINAL = "states/step-00000012/weights.safetensors"


def with_dropout(original):
    def build(name):
        model = original(name)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.1
        return model

    return build


@pytest.fixture(scope="module", autouse=True)
def dropout():
    """The built-in random T5 has no dropout; these runs do, so each step draws from torch's RNG."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(t5, "random_t5", with_dropout(t5.random_t5))
        yield


def config(out, *more):
    return load_config(None, [*OVERRIDES, f"train.output_dir={out}", *more])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train(config(out), out / "run", quiet=True)
    return out / "run"


def _segment(run_dir, kill, resume, argv, no_exchange, stderr):
    """A forked process's part of a run (or a `hyperpelt` command, ``argv``)."""
    sys.stderr = open(stderr, "w")  # noqa: SIM115 (the process ends here)
    os.environ[ENV] = kill or ""
    if no_exchange:
        hyperpelt.atomic._exchange = lambda a, b: False
    if argv:
        sys.exit(main(argv))
    state = resume_point(run_dir, None, [])[1] if resume else None
    train(config(run_dir.parent), run_dir, quiet=True, resume=state)


def segment(run_dir, kill=None, resume=True, argv=None, no_exchange=False) -> tuple[int, str]:
    stderr = run_dir.parent / "stderr.txt"
    process = multiprocessing.get_context("fork").Process(
        target=_segment, args=(run_dir, kill, resume, argv, no_exchange, stderr))
    process.start()
    process.join(120)
    return process.exitcode, stderr.read_text()


def assert_readable(run_dir):
    """No checkpoint is unreadable: best/ (when there) loads, and so does every state the run lists."""
    if (run_dir / "best").exists():
        assert valid_checkpoint(run_dir / "best")
    assert all(valid_state(folder) for folder in state_folders(run_dir))


def assert_same_run(run_dir, reference):
    for name in (FINAL, "best/method.safetensors"):
        ours, theirs = load_file(run_dir / name), load_file(reference / name)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert (run_dir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    ours, theirs = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    for key in ("best_step", "validation_average", "tasks", "average"):
        assert ours[key] == theirs[key], key
    assert [f.name for f in state_folders(run_dir)] == ["step-00000012", "step-00000010"]
    leftovers = [p.name for p in [*run_dir.glob("best.*"), *(run_dir / "states").glob("*.*")]]
    assert not leftovers


def test_sigkill_anywhere_then_resume_is_exact(tmp_path, reference):
    run = tmp_path / "run"
    chain = [  # (kill point: <point>:<n-th time in this process>, resumed): each dies there
        ("best-write:1", False),  # writing the first best checkpoint (step 3); states: 2
        ("state-write:1", True),  # in the middle of writing the state of step 4
        ("best-swap:1", True),  # between exchanging best/ for its replacement and removing the old one
        ("step:5", True),  # between steps 7 and 8 (the fifth of this process); states: 4, 6
        ("state-published:2", True),  # the state of step 10 written, before step 6's is rotated out
        ("validated:1", True),  # validated step 12, before its best checkpoint is saved
        ("best-swap:1", True),  # best/ of step 12 written: ahead of the newest state (10)
    ]
    for kill, resumed in chain:
        code, stderr = segment(run, kill, resumed)
        assert code == -9, (kill, stderr)
        assert_readable(run)
    assert (run / "best.tmp").is_dir()  # the old best/, complete: a resume removes it
    restore_best(latest_state(run), run / "best")  # best/ goes back to the one that state 10 knew
    assert not (run / "best.tmp").exists()
    kept = load_file(reference / "states/step-00000010/best/method.safetensors")
    assert all(torch.equal(t, kept[k]) for k, t in load_file(run / "best/method.safetensors").items())

    # where the system cannot exchange two folders, a swap cut short leaves best.old and best.tmp
    code, _ = segment(run, "best-swap:1", no_exchange=True)
    assert code == -9 and not (run / "best").exists() and (run / "best.old").is_dir()
    code, stderr = segment(run)
    assert code == 0, stderr
    assert_same_run(run, reference)


def test_sigterm_and_sigint_stop_cleanly_and_resume_exactly(tmp_path, reference):
    run = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config(tmp_path).to_dict()))
    code, stderr = segment(run, "forward:5:term", argv=["train", str(recipe), "--quiet"])
    assert code == 0, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"stopped after step 5 of 12, state saved; resume with: hyperpelt train --resume {run}")
    assert [f.name for f in state_folders(run)] == ["step-00000005", "step-00000004"]
    code, stderr = segment(run, "step:3:int", argv=["train", "--resume", str(run), "--quiet"])  # step 8
    assert code == 0 and "stopped after step 8 of 12" in stderr, stderr
    code, stderr = segment(run, argv=["train", "--resume", str(run), "--quiet"])
    assert code == 0, stderr
    assert_same_run(run, reference)


def test_corrupt_newest_state_falls_back_with_a_warning(tmp_path, reference):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    weights = run / FINAL
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.warns(UserWarning, match="step-00000012 is corrupt or incomplete"):
        config_, state = resume_point(run, None, [])
    assert state.name == "step-00000010"
    train(config_, run, quiet=True, resume=state)
    assert_same_run(run, reference)


def test_resume_refuses_a_changed_config_and_names_the_key(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with pytest.raises(UserError, match=r"different config: train\.learning_rate, train\.seed differ"):
        resume_point(run, None, ["train.learning_rate=0.02", "train.seed=1"])
    with pytest.raises(UserError, match=r"train\.steps \(10\) is below step 12"):
        resume_point(run, None, ["train.steps=10"])
    assert resume_point(run, None, ["train.steps=20", "train.keep_states=3"])[0].train.steps == 20
    assert main(["train", "--resume", str(run), "data.temperature=10"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "data.temperature differ" in lines[0]


def test_non_finite_loss_stops_naming_step_and_task_and_resumes(tmp_path, reference, monkeypatch):
    forward, calls = TunedModel.forward, []

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 7:  # the forward pass of step 7 (one micro-batch per step)
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(TunedModel, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(UserError) as error:
        train(config(tmp_path), run, quiet=True)
    sampler = TaskSampler({"rte": 32, "stsb": 32}, 2.0, 42)
    task = [sampler.next_task() for _ in range(7)][-1]
    assert str(error.value) == (f"non-finite loss (nan) at step 7, on a batch of task {task}; best/ (step 3) "
                                f"is kept, resume from the state of step 6 with: "
                                f"hyperpelt train --resume {run}")
    assert_readable(run)
    assert latest_state(run).name == "step-00000006"
    monkeypatch.setattr(TunedModel, "forward", forward)
    config_, state = resume_point(run, None, [])
    train(config_, run, quiet=True, resume=state)
    assert_same_run(run, reference)


def test_non_finite_loss_before_any_validation_says_nothing_is_kept(tmp_path, monkeypatch):
    forward = TunedModel.forward

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out["loss"] = out["loss"] * float("inf")
        return out

    monkeypatch.setattr(TunedModel, "forward", poisoned)
    nothing = r"at step 1, .*; no best/ yet \(no validation ran\), no training state was saved$"
    with pytest.raises(UserError, match=nothing):
        train(config(tmp_path), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "best").exists()


@pytest.mark.parametrize("kind", ["adamw", "adafactor"])
def test_optimizer_state_round_trips_without_pickle(tmp_path, kind):
    """Tensors through safetensors, the rest through JSON: the next step is the same to the bit."""
    from transformers.optimization import Adafactor

    def make(weights):
        param = nn.Parameter(weights.clone())
        if kind == "adamw":
            return param, torch.optim.AdamW([param], lr=0.01)
        return param, Adafactor([param], lr=0.01, scale_parameter=False, relative_step=False)

    def step(param, optimizer, seed):
        param.grad = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed))
        optimizer.step()

    first, optimizer = make(torch.randn(4, 3))
    step(first, optimizer, 0)
    tensors, other = _split_optimizer(optimizer.state_dict())
    save_file(tensors, tmp_path / "optimizer.safetensors")
    (tmp_path / "state.json").write_text(json.dumps(other))
    second, restored = make(first.detach())
    restored.load_state_dict(_join_optimizer(load_file(tmp_path / "optimizer.safetensors"),
                                             json.loads((tmp_path / "state.json").read_text())))
    step(first, optimizer, 1)
    step(second, restored, 1)
    assert torch.equal(first, second)


# ---------------------------------------------------- a full disk, a damaged manifest, a second trainer

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def snapshot(run) -> dict:
    """The hashes of the run's states and best/ (not of a write in progress: *.tmp)."""
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("states", "best") for p in sorted((run / folder).rglob("*"))
            if p.is_file() and ".tmp" not in p.relative_to(run).as_posix()}


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def failing(original, fail_at: int, error: Exception, run, seen: dict, matches=lambda *args: True):
    """``original``, except that its ``fail_at``-th matching call raises ``error``; ``seen`` gets the run's
    states and best/ as they were just before."""
    calls = []

    def call(*args, **kwargs):
        if matches(*args):
            calls.append(1)
            if len(calls) == fail_at:
                seen.update(snapshot(run))
                raise error
        return original(*args, **kwargs)

    return call


def state_publish(src, dst, *rest) -> bool:
    return os.path.basename(dst).startswith("step-") and str(src).endswith(".tmp")


@pytest.mark.parametrize("target, fail_at, error, matches, said", [
    # the state of step 6 (after two: steps 2 and 4): its first file, as safetensors reports a full disk
    (hyperpelt.training.state, 5, SafetensorError("Error while serializing: No space left on device"),
     None, "cannot save the training state of step 6 in"),
    # the best checkpoint of step 12 (after step 3's), after the state of step 10
    (hyperpelt.checkpoint, 2, FULL, None, "cannot save the checkpoint in"),
    # the state of step 4, written in full, as it is moved into place
    (os, 2, FULL, state_publish, "cannot save the training state of step 4 in"),
], ids=["state-safetensors", "best-checkpoint-disk-full", "state-rename-disk-full"])
def test_a_failed_save_is_one_line_and_the_run_resumes_exactly(tmp_path, reference, monkeypatch, capsys,
                                                                 target, fail_at, error, matches, said):
    run, seen = tmp_path / "run", {}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config(tmp_path).to_dict()))
    name = "replace" if target is os else "save_file"
    patched = failing(getattr(target, name), fail_at, error, run, seen, *([matches] if matches else []))
    with monkeypatch.context() as patch:
        patch.setattr(target, name, patched)
        assert main(["train", str(recipe), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert said in line and "No space left on device" in line, line
    kept = f"before it and best/ are kept: free space, then hyperpelt train --resume {run}"
    assert line.endswith(kept if "state" in said else "best/ keeps the one before)"[:-1]), line
    assert seen and snapshot(run) == seen  # nothing the failed save would have replaced has changed
    assert not [*run.glob("*.tmp"), *(run / "states").glob("*.tmp")]
    assert valid_state(latest_state(run))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(run, reference)


@pytest.mark.parametrize("manifest", [
    "null", "5", "[]", "{}", '"state.json"', '{"state.json": 5, "weights.safetensors": [], '
    '"optimizer.safetensors": null}', "[" * 100_000, "TRUNCATED", "OUTSIDE"])
def test_a_malformed_manifest_is_skipped_like_a_corrupt_state(tmp_path, reference, manifest):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    path = run / "states/step-00000012" / MANIFEST
    text = path.read_text()
    if manifest == "TRUNCATED":
        manifest = text[:len(text) // 2]
    elif manifest == "OUTSIDE":  # a manifest that names a file outside its state, with the right digest
        manifest = text.replace('"state.json"', '"../../config.yaml"').replace(
            f'"{hashlib.sha256((path.parent / "state.json").read_bytes()).hexdigest()}"',
            f'"{hashlib.sha256((run / "config.yaml").read_bytes()).hexdigest()}"')
        (path.parent / "state.json").unlink()
    path.write_text(manifest)
    with pytest.warns(UserWarning, match=f"step-00000012 is corrupt or incomplete .*{MANIFEST}"):
        assert latest_state(run).name == "step-00000010"


def test_resume_past_a_null_manifest_through_the_cli(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "states/step-00000012" / MANIFEST).write_text("null")
    with pytest.warns(UserWarning, match=f"step-00000012 is corrupt or incomplete \\({MANIFEST} is not a"):
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert_same_run(run, reference)


def _hold(run, held, release):
    with run_lock(run):
        held.set()
        release.wait(60)


def test_a_second_trainer_of_a_run_is_refused_in_one_line(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    fork = multiprocessing.get_context("fork")
    held, release = fork.Event(), fork.Event()
    other = fork.Process(target=_hold, args=(run, held, release))
    other.start()
    try:
        assert held.wait(60)
        before = snapshot(run)
        assert main(["train", "--resume", str(run), "train.steps=14", "--quiet"]) == 2
        line = one_error_line(capsys)
        assert f"{run} is being trained by another process" in line, line
        assert snapshot(run) == before
    finally:
        os.kill(other.pid, signal.SIGKILL)  # a crash: the lock ends with the process
        other.join(60)
    assert main(["train", "--resume", str(run), "train.steps=14", "--quiet"]) == 0
    with run_lock(run):  # released when the run ended
        pass
    assert latest_state(run).name == "step-00000014"
