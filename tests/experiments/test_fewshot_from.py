"""Few-shot baselines started from a trained run of their method (`fewshot --from MODE=RUN_DIR`, Hyperformer's
Table 2): the cell's model begins with that run's weights, the lent host stays untouched, the run is
checked before anything trains, and settings.json holds each mode's start so that a rerun with another one
is refused."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from conftest import SMALL_METHOD, train_run
from hyperpelt.checkpoint import WEIGHTS, read_weights
from hyperpelt.cli import main
from hyperpelt.config import load_config
from hyperpelt.errors import UserError
from hyperpelt.experiments import fewshot as fs
from hyperpelt.experiments.fewshot_modes import describe
from hyperpelt.transfer import SharedHosts

MODEL = ["model.name=t5-tiny", "model.pretrained=false", "model.max_input_length=64",
         "model.max_target_length=4"]
SCHEDULE = ["data.tasks=[rte, sst2]", "data.max_train_examples=16", "data.max_eval_examples=8",
            "train.steps=2", "train.eval_every=2", "train.batch_size=4", "train.eval_batch_size=8",
            "heads={}"]
CELL = ["train.steps=2", "train.eval_every=2", "train.learning_rate=0.01", "data.max_eval_examples=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A hyperpelt run and a full and an adapters-shared run of the same backbone (the same seed draws it);
    full at a high rate, so that its host is far from the one drawn."""
    def run(name, method):
        return train_run(tmp_path_factory.mktemp(name), [*MODEL, *method, *SCHEDULE])

    return {"main": run("main", [f"method.{k}={v}" for k, v in SMALL_METHOD.items()]),
            "full": run("full", ["method.name=full", "train.learning_rate=0.01"]),
            "adapters": run("adapters", ["method.name=adapters-shared", "method.reduction_factor=8"])}


def _plan(runs, out, modes, from_runs=(), **kwargs):
    return fs.plan(runs["main"], "cb", [4], 1, modes, out=out, overrides=CELL, from_runs=from_runs, **kwargs)


def _host(model) -> dict:
    return {f"host.{n}": p.detach().clone() for n, p in model.host.named_parameters()}


def test_a_full_cell_from_a_full_run_begins_with_its_host_and_owns_it(runs, tmp_path):
    plan = _plan(runs, tmp_path, ["full", "adapters-shared"], [("full", str(runs["full"]))])
    assert plan.starts == {"full": runs["full"]}
    hosts = SharedHosts()
    config = fs.cell_config(plan, "full", 4, 0)
    model = fs.cell_model(plan, "full", config, 0, hosts)
    saved = read_weights(runs["full"] / "best" / WEIGHTS)
    host = _host(model)
    assert host.keys() == {n for n in saved if n.startswith("host.")}
    assert [n for n in host if not torch.equal(host[n], saved[n])] == []
    new = fs.cell_model(_plan(runs, tmp_path / "new", ["full"]), "full", config, 0)  # the drawn host
    assert sum(not torch.equal(t, host[n]) for n, t in _host(new).items()) > len(host) // 2
    assert all(p.requires_grad for p in model.host.parameters())
    assert model.task_names == ["rte", "sst2", "cb"]
    with torch.no_grad():  # as its training would: only its own copies are written
        for param in model.host.parameters():
            param.add_(1.0)
    hosts.check()
    adapters = fs.cell_model(plan, "adapters-shared", fs.cell_config(plan, "adapters-shared", 4, 0), 0, hosts)
    alone = fs.cell_model(plan, "adapters-shared", fs.cell_config(plan, "adapters-shared", 4, 0), 0)
    assert all(torch.equal(t, _host(alone)[n]) for n, t in _host(adapters).items())  # lent: as drawn


def test_an_adapters_cell_from_an_adapters_run_begins_with_its_adapters(runs, tmp_path):
    plan = _plan(runs, tmp_path, ["adapters-shared"], [("adapters-shared", str(runs["adapters"]))])
    config = fs.cell_config(plan, "adapters-shared", 4, 0)
    assert config.method.reduction_factor == 8  # the run's options, not the method's defaults
    model = fs.cell_model(plan, "adapters-shared", config, 0)
    saved = read_weights(runs["adapters"] / "best" / WEIGHTS)
    adapters = {n.removeprefix("method."): t for n, t in saved.items() if n.startswith("method.")}
    assert set(adapters) == {"down", "up", "down_bias", "up_bias", "norm_weight", "norm_bias"}
    for name, tensor in adapters.items():  # the tasks' adapters, the new task's a copy of rte's; shared norms
        value = getattr(model.method, name)
        if name.startswith("norm"):
            assert torch.equal(value, tensor) and len(value) == 1, name
        else:
            assert torch.equal(value[:2], tensor) and torch.equal(value[2], tensor[0]), name
    norms = {n: t for n, t in saved.items() if n.startswith("host.")}  # the host's layer norms, as trained
    params = dict(model.named_parameters())
    assert norms and all(torch.equal(params[n], t) and params[n].requires_grad for n, t in norms.items())
    new = fs.cell_model(_plan(runs, tmp_path / "new", ["adapters-shared"]), "adapters-shared", config, 0)
    assert not torch.equal(new.method.down[0], model.method.down[2])  # the method new: drawn at random
    assert model.parameter_counts()[0] == new.parameter_counts()[0]  # what trains is what trains there


def test_the_grid_records_and_reports_each_modes_start(runs, tmp_path):
    plan = _plan(runs, tmp_path, ["hyperpelt", "full", "adapters-shared"],
                 [("full", str(runs["full"])), ("adapters-shared", str(runs["adapters"]))])
    summary = fs.run_fewshot(plan, progress=False)
    digest = hashlib.sha256((runs["full"] / "best" / WEIGHTS).read_bytes()).hexdigest()
    full = {"run": str(runs["full"].resolve()), "checkpoint_sha256": digest}
    settings = json.loads((tmp_path / fs.SETTINGS).read_text())
    assert settings["starts"]["full"] == summary["starts"]["full"] == full
    assert settings["starts"]["hyperpelt"]["run"] == str(runs["main"].resolve())
    assert load_config(plan.cell_dir("adapters-shared", 4, 0) / "config.yaml").method.reduction_factor == 8
    host = sum(t.numel() for t in read_weights(runs["full"] / "best" / WEIGHTS).values())
    assert summary["modes"]["full"]["trainable_params"] == host
    table = (tmp_path / "fewshot.md").read_text()
    assert f"- full: grown from {runs['full'].resolve()} (best checkpoint sha256 {digest[:12]})" in table
    assert f"- hyperpelt: grown from {runs['main'].resolve()}" in table
    assert describe(None) == "the method new on the run's backbone"


def test_a_rerun_with_another_start_is_refused_and_more_modes_may_join(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["full"], copy)
    plan = _plan(runs, tmp_path / "grid", ["full"], [("full", str(runs["full"]))])
    fs.run_fewshot(plan, progress=False)
    for other in ([("full", str(copy))], []):  # another run, or the method new
        with pytest.raises(UserError, match="its full cells started from .*; this call starts them from"):
            _plan(runs, tmp_path / "grid", ["full"], other)
    joined = _plan(runs, tmp_path / "grid", ["taskembed"])  # another mode: its start joins the record
    assert set(joined.run["settings"]["starts"]) == {"full", "taskembed"}
    assert _plan(runs, tmp_path / "grid", ["full"], [("full", str(runs["full"]))]).starts["full"]

    plan = _plan(runs, tmp_path / "copied", ["full"], [("full", str(copy))])
    fs.run_fewshot(plan, progress=False)
    weights = read_weights(copy / "best" / WEIGHTS)
    save_file({n: t + 1 if n == "host.shared.weight" else t for n, t in weights.items()},
              copy / "best" / WEIGHTS)  # the same folder, other weights
    with pytest.raises(UserError, match="its full cells started from"):
        _plan(runs, tmp_path / "copied", ["full"], [("full", str(copy))])

    legacy = tmp_path / "legacy"  # a grid from before starts were recorded: its cells started new
    (legacy / "cells" / "full").mkdir(parents=True)
    settings = {k: v for k, v in plan.run["settings"].items() if k != "starts"}
    (legacy / fs.SETTINGS).write_text(json.dumps(settings))
    with pytest.raises(UserError, match="its full cells started from the method new"):
        _plan(runs, legacy, ["full"], [("full", str(runs["full"]))])
    assert _plan(runs, legacy, ["full"]).starts == {}


def test_a_start_run_is_checked_before_anything_trains(runs, tmp_path, capsys):
    def edited(name, **changes):
        folder = tmp_path / name
        shutil.copytree(runs["full"], folder)
        meta = json.loads((folder / "best" / "checkpoint.json").read_text())
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                meta[section][field] = value
            else:
                meta[section] = value
        (folder / "best" / "checkpoint.json").write_text(json.dumps(meta))
        return f"full={folder}"

    (tmp_path / "empty").mkdir()
    full = f"full={runs['full']}"
    cases = [
        ("full", f"full={tmp_path / 'empty'}", "is not a finished run folder: config.yaml is missing"),
        ("adapters-shared", f"adapters-shared={runs['full']}", "that run trained full, not adapters-shared"),
        ("full", edited("long", model__max_input_length=32),
         "that run's model is not the one of " + str(runs["main"]) + ": model.max_input_length is 32 there, "
         "64 in the run"),
        ("full", edited("tok", model__tokenizer="t5-other"), "model.tokenizer is t5-other there, None"),
        ("full", edited("seed", seed=7), "its random backbone (model.pretrained: false) is drawn by seed 7"),
        ("full", edited("sst2", tasks=["sst2"]),
         "the source task 'rte' is not one of that run's tasks: sst2"),
        ("full", edited("cb", tasks=["rte", "cb"]), "that run trained task 'cb' already"),
        ("hyperpelt", full, "--mode does not list 'full'"),
        ("hyperpelt", f"hyperpelt={runs['full']}", "mode 'hyperpelt' grows the run itself"),
        ("full", f"{full},{full}", "--from names mode 'full' twice"),
    ]
    for mode, start, needle in cases:
        args = ["fewshot", str(runs["main"]), "--task", "cb", "--mode", mode, "--from", start, "--out",
                str(tmp_path / "x")]
        assert main(args) == 2, needle
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, err
    with pytest.raises(SystemExit):  # a usage error: argparse's one line
        main(["fewshot", str(runs["main"]), "--task", "cb", "--mode", "full", "--from", "full"])
    assert "--from: expected NAME=VALUE pairs separated by commas, got 'full'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError, match=r"'hyperformer\+\+' transfers .* --from hyperformer\+\+=RUN_DIR"):
        _plan(runs, tmp_path / "x", ["hyperformer++"])
    args = ["fewshot", str(runs["main"]), "--task", "cb", "--mode", "full,adapters-shared", "--k", "4",
            "--seeds", "1", "--from", full, "--from", f"adapters-shared={runs['adapters']}", "--out",
            str(tmp_path / "y"), "--quiet", "--set", *CELL]
    assert main(args) == 0  # --from repeated: each mode from its run
    starts = json.loads((tmp_path / "y" / fs.SETTINGS).read_text())["starts"]
    assert starts["adapters-shared"]["run"] == str(runs["adapters"].resolve())


def test_on_an_encoder_the_start_runs_heads_load_and_the_new_tasks_head_trains(tmp_path):
    schedule = ["model.name=minilm-l6", "model.max_input_length=16", "data.tasks=[rte, sst2]",
                "data.max_train_examples=4", "data.max_eval_examples=4", "train.steps=1",
                "train.eval_every=1", "train.batch_size=4", "train.eval_batch_size=8",
                "heads.probe_examples=0"]
    hyperpelt = [f"method.{k}={v}" for k, v in SMALL_METHOD.items()]
    main_run = train_run(tmp_path / "main", [*schedule, *hyperpelt])
    full_run = train_run(tmp_path / "full", [*schedule, "method.name=full", "train.learning_rate=0.01"])
    plan = fs.plan(main_run, "cb", [4], 1, ["full"], out=tmp_path / "grid", overrides=CELL,
                   from_runs=[("full", str(full_run))])
    model = fs.cell_model(plan, "full", fs.cell_config(plan, "full", 4, 0), 0)
    saved = read_weights(full_run / "best" / WEIGHTS)
    params = dict(model.named_parameters())
    assert {n for n in saved if n.startswith("heads.")} and saved.keys() <= params.keys()
    assert all(torch.equal(params[n], t) for n, t in saved.items())  # host and the run's tasks' heads
    assert model.task_names == ["rte", "sst2", "cb"]
    trains = {n.split(".")[2] for n, p in params.items() if n.startswith("heads.") and p.requires_grad}
    assert trains == {"2"}  # the new task's head alone; every host weight trains (full)
    assert all(p.requires_grad for p in model.host.parameters())
