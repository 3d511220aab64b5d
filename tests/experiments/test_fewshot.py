"""Few-shot transfer: k-shot samples, a trained run grown by a new task, what each mode trains, the
`fewshot` grid end to end (table, plot, resume), cells sharing one host, the cell benchmark and the
task-embedding plot."""

import dataclasses
import json
import random
import sys
from collections import Counter
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml

from conftest import SMALL_METHOD, build_model, examples, perturb, t5_config, train_run
from hyperpelt.checkpoint import save_checkpoint
from hyperpelt.cli import main
from hyperpelt.config import TrainConfig, load_config
from hyperpelt.data.batches import load_task_data
from hyperpelt.errors import UserError
from hyperpelt.experiments import fewshot as fs
from hyperpelt.experiments.embed_plot import embed_plot
from hyperpelt.experiments.fewshot_modes import check_modes
from hyperpelt.experiments.fewshot_summary import render_markdown
from hyperpelt.heads.probe import fit_logistic
from hyperpelt.tasks import get_task, load_task_splits
from hyperpelt.tasks.splits import sample_balanced
from hyperpelt.training import trainer
from hyperpelt.transfer import SharedHosts, grow, new_task_embedding, train_for_transfer

TINY_RUN = ["model.name=t5-tiny", "model.pretrained=false", "model.max_input_length=64",
            "model.max_target_length=4", *(f"method.{k}={v}" for k, v in SMALL_METHOD.items()),
            "data.tasks=[rte, sst2]", "data.max_train_examples=16", "data.max_eval_examples=8",
            "train.steps=2", "train.eval_every=2", "train.batch_size=4", "train.eval_batch_size=8",
            "heads={}"]
TINY_ENCODER_RUN = ["model.name=minilm-l6", "model.max_input_length=32",
                    *(f"method.{k}={v}" for k, v in SMALL_METHOD.items()), "data.tasks=[rte, sst2]",
                    "data.max_train_examples=16", "data.max_eval_examples=8", "train.steps=2",
                    "train.eval_every=2", "train.batch_size=4", "train.eval_batch_size=8"]
CELL = ["train.steps=2", "train.eval_every=2", "train.learning_rate=0.01", "data.max_eval_examples=8"]


# ------------------------------------------------------------------------------------------ k-shot samples


def test_a_k_shot_sample_is_deterministic_per_seed_holds_k_examples_and_balances_the_classes():
    def draw(k, seed, sample="balanced"):
        return load_task_splits("cb", max_train=k, sample=sample, sample_seed=seed).train

    whole = load_task_splits("cb").train
    for k in (4, 16, 32):
        first = draw(k, 0)
        assert len(first) == k and first == draw(k, 0)
        assert draw(k, 0) != draw(k, 1)
        assert all(row in whole for row in first)
    counts = sorted(Counter(row["label"] for row in draw(16, 3)).values())
    assert counts == [5, 5, 6]  # 16 over CB's three classes
    assert sorted(Counter(row["label"] for row in draw(4, 3)).values()) == [1, 1, 2]
    assert len(draw(16, 0, "random")) == 16 and draw(16, 0, "random") == draw(16, 0, "random")
    assert draw(5, 0) == draw(5, 0)  # the carving does not move with the sample's seed
    assert load_task_splits("cb", max_train=5, sample_seed=0).validation == load_task_splits("cb").validation


def test_a_class_with_too_few_examples_gives_its_share_to_the_others():
    rows = [{"label": 0}] * 2 + [{"label": 1}] * 20 + [{"label": 2}] * 20
    picked = sample_balanced([dict(r, i=i) for i, r in enumerate(rows)], 12, random.Random(0))
    assert Counter(r["label"] for r in picked) == {0: 2, 1: 5, 2: 5}
    assert [r["i"] for r in picked] == sorted(r["i"] for r in picked)  # rows keep their order
    scores = [{"label": float(i)} for i in range(30)]  # a score: drawn at random
    assert len(sample_balanced(scores, 7, random.Random(0))) == 7


def test_the_probe_leaves_the_head_alone_when_a_class_is_too_rare_for_its_folds():
    x = np.random.default_rng(0).normal(size=(12, 4))
    head = torch.nn.Linear(4, 2)
    before = head.weight.detach().clone()
    assert fit_logistic(head, x, np.array([0] * 10 + [1] * 2), balanced=False, seed=0) is None
    assert torch.equal(head.weight, before)  # a random 12-shot sample holding two of one class
    assert fit_logistic(head, x, np.array([0] * 9 + [1] * 3), balanced=False, seed=0) is not None
    assert not torch.equal(head.weight, before)


def test_the_few_shot_tasks_use_the_papers_splits():
    rules = {name: get_task(name).split_rule for name in fs.SOURCES}
    assert rules == {"cb": "halve_dev", "boolq": "halve_dev", "imdb": "halve_test", "trec": "halve_test",
                     "yelp_polarity": "halve_test", "paws": "given", "scitail": "given"}


# ------------------------------------------------------------------------------------------ growing a run


@pytest.mark.parametrize("method", [SMALL_METHOD, {"name": "adapters-shared", "reduction_factor": 8},
                                    {"name": "hyperformer++", "task_dim": 8}])
def test_the_new_task_starts_as_a_copy_of_the_source_task(tmp_path, method):
    model = build_model(t5_config(), method, tasks=("rte", "sst2"), seed=3)
    perturb(model)
    save_checkpoint(model, tmp_path / "best", seed=3)
    grown, names = grow(tmp_path / "best", get_task("cb"), "sst2")
    assert grown.task_names == ["rte", "sst2", "cb"]
    saved = model.trainable_state_dict()
    for name, tensor in grown.trainable_state_dict().items():
        if name in names:
            assert torch.equal(tensor[:2], saved[name]) and torch.equal(tensor[2], saved[name][1])
        else:
            assert torch.equal(tensor, saved[name]), name
    if method["name"] != "adapters-shared":
        assert names == ["method.task_embedding"]
    batch = model.collator(model.encode(get_task("cb"), examples("cb", 4)), [1] * 4)
    source_ids = batch.pop("task_ids")
    with torch.no_grad():  # the new task answers exactly as the source task does
        expected = model(source_ids, **batch).logits
        assert torch.allclose(grown(torch.full_like(source_ids, 2), **batch).logits, expected, atol=1e-5)


def _trained(model, mode, names, steps=3):
    train_for_transfer(model, mode, names)
    optimizer, _ = trainer.optimizer_and_schedule(model, TrainConfig(weight_decay=0.1, learning_rate=0.01),
                                                  None)
    batch = model.collator(model.encode(get_task("cb"), examples("cb", 4)), [2] * 4)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def _values(model, names):
    """Every weight as the model computes it (a parametrized weight as its joined rows)."""
    out = {}
    for name in names:
        path, _, attr = name.rpartition(".")
        out[name] = getattr(model.get_submodule(path), attr).detach().clone()
    return out


def test_taskembed_trains_the_new_embedding_and_nothing_else(tmp_path):
    model = build_model(t5_config(), tasks=("rte", "sst2"), seed=3)
    perturb(model)
    save_checkpoint(model, tmp_path / "best", seed=3)
    grown, names = grow(tmp_path / "best", get_task("cb"), "rte")
    weights = [n for n, _ in grown.named_parameters()]
    before = _values(grown, weights)
    _trained(grown, "taskembed", names)  # AdamW with weight decay: frozen rows must not decay
    after = _values(grown, weights)
    changed = {n: int((before[n] != after[n]).sum()) for n in weights if not torch.equal(before[n], after[n])}
    row = SMALL_METHOD["prefix_length"] * SMALL_METHOD["task_dim"]
    assert changed == {"method.task_embedding": row}
    assert not torch.equal(after["method.task_embedding"][2], before["method.task_embedding"][2])
    assert grown.parameter_counts()[0] == row
    assert torch.equal(new_task_embedding(grown), after["method.task_embedding"][2])


@pytest.mark.parametrize("method, shared", [
    (SMALL_METHOD, ("method.projector_in.weight", "method.adapter_up.weight")),
    ({"name": "hyperformer++", "task_dim": 8}, ("method.generators.encoder.weight",
                                                 "method.projectors.encoder.0.weight"))])
def test_the_own_mode_trains_the_shared_weights_but_not_the_other_tasks_rows(tmp_path, method, shared):
    model = build_model(t5_config(), method, tasks=("rte", "sst2"), seed=3)
    perturb(model)
    save_checkpoint(model, tmp_path / "best", seed=3)
    grown, names = grow(tmp_path / "best", get_task("cb"), "rte")
    weights = [n for n, _ in grown.named_parameters()]
    before = _values(grown, weights)
    after = _values(_trained(grown, method["name"], names), weights)
    changed = {n for n in weights if not torch.equal(before[n], after[n])}
    assert {"method.task_embedding", *shared} <= changed
    assert torch.equal(after["method.task_embedding"][:2], before["method.task_embedding"][:2])
    assert all(n.startswith("method.") for n in changed)  # the backbone's layer norms stay as trained


# ------------------------------------------------------------------------------------------ the grid


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("fewshot"), TINY_RUN)


def test_fewshot_writes_its_table_and_plot_and_resumes(tiny_run, monkeypatch):
    plan = fs.plan(tiny_run, "cb", [4, 8], 2, ["hyperpelt", "taskembed"], overrides=CELL)
    assert plan.out == tiny_run / "fewshot-cb" and plan.source == "rte"  # no MNLI in the run
    summary = fs.run_fewshot(plan, progress=False)
    cells = {(c["mode"], c["k"], c["seed"]): c for c in map(json.loads, map(
        lambda p: p.read_text(), plan.out.glob("cells/*/*/cell.json")))}
    assert len(cells) == 8
    for mode in ("hyperpelt", "taskembed"):
        for k in (4, 8):
            scores = [cells[mode, k, seed]["score"] for seed in (0, 1)]
            entry = summary["modes"][mode]["k"][str(k)]
            assert entry["scores"] == scores and entry["mean"] == pytest.approx(sum(scores) / 2)
            assert entry["std"] == pytest.approx(abs(scores[0] - scores[1]) / 2**0.5)
    assert summary["modes"]["taskembed"]["trainable_params"] == 64  # N x d_τ
    assert json.loads((plan.out / "fewshot.json").read_text()) == summary
    table = (plan.out / "fewshot.md").read_text()
    entry = summary["modes"]["taskembed"]["k"]["8"]
    assert "| k | hyperpelt | taskembed |" in table and f"{entry['mean']:.2f} ± {entry['std']:.2f}" in table
    cell = plan.cell_dir("taskembed", 8, 1)
    assert (cell / "task_embedding.safetensors").is_file() and not (cell / "best").exists()
    assert not (cell / "states").exists()
    config = load_config(cell / "config.yaml")
    data = config.data
    assert (data.tasks, data.max_train_examples, data.train_sample_seed, data.train_sample) == (
        ["cb"], 8, 1, "balanced")
    image = matplotlib.image.imread(plan.out / "fewshot.png")
    assert image.shape[0] > 300 and image.shape[1] > 500
    # the majority-class floor: the whole training split's most frequent class, on the cells' test rows
    splits = load_task_splits(get_task("cb"), data.data_dir, data.split_seed, data.source)
    majority = Counter(r["label"] for r in splits.train).most_common(1)[0][0]
    test = load_task_data([get_task("cb")], lambda task, rows: rows, data)[0].examples["test"]
    assert len(test) == 8
    assert summary["majority"] == pytest.approx(100 * sum(r["label"] == majority for r in test) / 8)
    assert ("Majority class (the training split's most frequent class, on the same test examples): "
            f"{summary['majority']:.2f}.") in table

    trained = []
    monkeypatch.setattr(trainer, "train", lambda *a, **k: trained.append(a) or pytest.fail("trained again"))
    assert fs.run_fewshot(fs.plan(tiny_run, "cb", [4, 8], 2, ["hyperpelt", "taskembed"], overrides=CELL),
                          progress=False) == summary
    (plan.cell_dir("hyperpelt", 4, 1) / "cell.json").unlink()  # as if interrupted in that cell
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(trainer, "train", lambda *a, **k: calls.append(a[1]) or real_train(*a, **k))
    fs.run_fewshot(plan, progress=False)
    assert calls == [plan.cell_dir("hyperpelt", 4, 1)]


real_train = trainer.train


def test_the_few_shot_table_gives_the_papers_gaps_over_paired_seeds():
    summary = {"run": "r", "task": "cb", "source": "rte", "sample": "balanced", "metric": "accuracy",
               "ks": [4], "seeds": [0, 1, 2], "overrides": [], "majority": 46.43, "modes": {
                   mode: {"trainable_params": 10, "k": {"4": {"mean": sum(v) / 3, "std": 0.0, "scores": v}}}
                   for mode, v in (("taskembed", [50.0, 52.0, 54.0]), ("prompt", [40.0, 41.0, 43.0]),
                                   ("hyperpelt", [60.0, 61.0, 62.0]))}}
    table = render_markdown(summary)
    assert "- k = 4, taskembed against prompt: gap +10.67 ± 0.58 over 3 paired seeds, ahead" in table
    assert "hyperpelt against" not in table  # no adapters-shared or full in the grid
    assert "examples): 46.43." in table


# ------------------------------------------------------------------------------------------ a shared host


@pytest.fixture(scope="module")
def tiny_encoder_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("fewshot-encoder"), TINY_ENCODER_RUN)


def _run_cells(plan, cells, hosts, monkeypatch) -> dict:
    """Train ``cells`` [(mode, k, seed)] one after another; each one's cell.json record (less its time) and
    every tensor of the model it ends with (its best checkpoint loaded, the host's weights included)."""
    built, real = [], fs.cell_model
    with monkeypatch.context() as patch:
        patch.setattr(fs, "cell_model", lambda *args: built.append(real(*args)) or built[-1])
        out = {}
        for mode, k, seed in cells:
            record = fs.run_cell(plan, mode, k, seed, hosts)
            record.pop("train_seconds")
            out[mode, k, seed] = record, {n: t.clone() for n, t in built[-1].state_dict().items()}
    return out


@pytest.mark.parametrize("run", ["tiny_run", "tiny_encoder_run"])  # a host drawn at random, a pretrained one
def test_cells_sharing_a_host_train_as_each_alone_in_either_order(run, request, tmp_path, monkeypatch):
    run = request.getfixturevalue(run)
    # full fine-tuning trains the host the others share; adapters start at random after the host is drawn
    cells = [("hyperpelt", 4, 0), ("full", 8, 1), ("adapters-shared", 4, 1)]

    def grid(name, order, hosts):
        plan = fs.plan(run, "cb", [4, 8], 2, [mode for mode, _, _ in cells], out=tmp_path / name,
                       overrides=CELL)
        return _run_cells(plan, order, hosts, monkeypatch)

    alone = {}
    for cell in cells:  # as before: the cell loads its own host
        alone.update(grid(f"alone-{cell[0]}", [cell], None))
    for name, order in (("forward", cells), ("backward", cells[::-1])):
        hosts = SharedHosts()
        shared = grid(name, order, hosts)
        for cell in cells:
            (record, tensors), (record_alone, tensors_alone) = shared[cell], alone[cell]
            assert record == record_alone
            assert tensors.keys() == tensors_alone.keys()
            assert [n for n, t in tensors.items() if not torch.equal(t, tensors_alone[n])] == [], (name, cell)
        hosts.check()


def test_a_lent_host_shares_its_frozen_weights_and_owns_those_it_trains():
    hosts = SharedHosts()
    torch.manual_seed(0)
    first = hosts.host(t5_config())
    drawn = torch.get_rng_state()
    torch.manual_seed(0)
    second = hosts.host(t5_config())  # lent: the RNG moves on as drawing the host would have moved it
    assert torch.equal(torch.get_rng_state(), drawn)
    ones, twos = dict(first.named_parameters()), dict(second.named_parameters())
    assert all(ones[n].data_ptr() == twos[n].data_ptr() and ones[n] is not twos[n] for n in ones)
    assert second.encoder is not first.encoder and second.config is not first.config
    torch.manual_seed(1)
    other = hosts.host(t5_config())  # another draw: loaded anew
    assert not torch.equal(other.shared.weight, first.shared.weight)
    assert hosts.tokenizer(t5_config()) is hosts.tokenizer(t5_config())

    second.requires_grad_(False)
    second.shared.weight.requires_grad_(True)
    hosts.own_trained(second, also={"encoder.final_layer_norm.weight"})
    assert second.shared.weight is second.encoder.embed_tokens.weight  # still tied, to a copy of its own
    assert second.shared.weight.data_ptr() != first.shared.weight.data_ptr()
    owned = second.encoder.final_layer_norm.weight
    assert owned.data_ptr() != first.encoder.final_layer_norm.weight.data_ptr()
    frozen = second.decoder.final_layer_norm.weight
    assert frozen.data_ptr() == first.decoder.final_layer_norm.weight.data_ptr()
    with torch.no_grad():
        second.shared.weight.add_(1.0)
        owned.add_(1.0)
    hosts.check()  # only its own copies were written
    with torch.no_grad():
        frozen.add_(1.0)
    with pytest.raises(RuntimeError, match="decoder.final_layer_norm.weight"):
        hosts.check()


def test_a_cell_writes_no_training_state_it_would_remove_unread(tiny_run, tmp_path):
    plan = fs.plan(tiny_run, "cb", [4], 1, ["hyperpelt"], out=tmp_path, overrides=CELL)
    assert fs.cell_config(plan, "hyperpelt", 4, 0).train.save_every == 0  # 2 steps: one state, at the end
    long = fs.plan(tiny_run, "cb", [4], 1, ["hyperpelt"], out=tmp_path / "long",
                   overrides=[*CELL, "train.steps=500"])
    assert fs.cell_config(long, "hyperpelt", 4, 0).train.save_every == TrainConfig.save_every


def test_the_cell_benchmark_times_first_and_later_cells_and_writes_its_report(tiny_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench import fewshot_cell

    results = fewshot_cell.main(["--run", str(tiny_run), "--tasks", "cb,nosuch", "--k", "4", "--cells", "2",
                                 "--steps", "2", "--threads", "1", "--precision", "no,bf16", "--out",
                                 str(tmp_path / "bench.json"), "--report", str(tmp_path / "bench.md")])
    row, skipped, bf16, _ = results["tasks"]
    assert (row["precision"], bf16["precision"]) == ("no", "bf16") and len(bf16["cells"]) == 2
    assert [cell["seed"] for cell in row["cells"]] == [0, 1] and row["first"]["wall_s"] > 0
    assert row["later"]["wall_s"] == row["cells"][1]["wall_s"]
    assert skipped["task"] == "nosuch" and "unknown task" in skipped["skipped"]
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    report = (tmp_path / "bench.md").read_text()
    assert f"Command: `python -m bench.fewshot_cell --run {tiny_run} --tasks cb,nosuch" in report
    assert results["commit"] in report and results["cpu"] in report and results["date"] in report
    assert "| cb (from rte) | hyperpelt | 4 | 1 | no |" in report and row["threads"] == 1
    assert "| cb (from rte) | hyperpelt | 4 | 1 | bf16 |" in report
    assert fewshot_cell.find_run(tiny_run.parent, "t5-tiny") == tiny_run
    (tmp_path / "vl" / "best").mkdir(parents=True)  # a V&L run of the model is no source
    (tmp_path / "vl" / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"name": "minilm-l6"}, "data": {"feature_cache": "features.safetensors"}}))
    with pytest.raises(SystemExit, match="hyperpelt train configs/demo.yaml"):
        fewshot_cell.find_run(tmp_path)


def test_baselines_train_afresh_and_prompt_matches_the_task_embedding(tiny_run, tmp_path):
    plan = fs.plan(tiny_run, "boolq", [4], 1, ["prompt", "adapters-shared"], source="rte", out=tmp_path,
                   overrides=CELL)
    summary = fs.run_fewshot(plan, progress=False)
    assert summary["modes"]["prompt"]["trainable_params"] == 64  # one soft token of d_model 64 = N x d_τ
    assert not (plan.cell_dir("prompt", 4, 0) / "task_embedding.safetensors").exists()
    assert load_config(plan.cell_dir("prompt", 4, 0) / "config.yaml").method.prompt_length == 1


def test_full_and_prompt_cells_take_their_own_learning_rate_unless_told(tiny_run, tmp_path):
    run_rate = load_config(tiny_run / "config.yaml").train.learning_rate
    plan = fs.plan(tiny_run, "cb", [4], 1, ["full", "prompt", "hyperpelt"], out=tmp_path)
    rates = {mode: fs.cell_config(plan, mode, 4, 0) for mode in plan.modes}
    assert rates["full"].train.learning_rate == 5.0e-5  # (a T5 run: no heads to keep the run's rate)
    assert rates["prompt"].train.learning_rate == 3.0e-2
    assert rates["hyperpelt"].train.learning_rate == run_rate
    told = fs.plan(tiny_run, "cb", [4], 1, ["full"], out=tmp_path / "told",
                   overrides=["train.learning_rate=1e-4"])
    assert fs.cell_config(told, "full", 4, 0).train.learning_rate == 1e-4
    encoder = load_config(None, ["model.name=minilm-l6", "data.tasks=[rte]", "train.learning_rate=2e-3"])
    on_encoder = dataclasses.replace(plan, run={**plan.run, "config": yaml.safe_dump(encoder.to_dict())})
    full = fs.cell_config(on_encoder, "full", 4, 0)
    assert (full.train.learning_rate, full.heads.learning_rate) == (5.0e-5, 2e-3)  # the head keeps the run's


def test_fewshot_errors_are_one_line_and_come_before_training(tiny_run, tmp_path, capsys):
    cases = [
        (["--task", "rte", "--mode", "hyperpelt"], "task 'rte' is already one of the run's tasks"),
        (["--task", "cb", "--mode", "hyperpelt,nosuch"], "unknown mode 'nosuch'"),
        (["--task", "cb", "--mode", "hyperformer++"], "mode 'hyperformer++' transfers a trained"),
        (["--task", "cb", "--mode", "taskembed", "--k", "4,97"], "k=97 is more than the 96 training"),
        (["--task", "cb", "--mode", "taskembed", "--source", "cola"], "source task 'cola' is not one of"),
        (["--task", "boolq", "--mode", "taskembed"], "no source task for 'boolq'"),
        (["--task", "cb", "--mode", "taskembed", "--set", "train.stepz=3"], "train.stepz"),
    ]
    for args, needle in cases:
        assert main(["fewshot", str(tiny_run), "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and "\n" not in err, err
    with pytest.raises(UserError, match="needs a run whose method has a task embedding"):
        check_modes(["taskembed"], "adapters-shared")
    assert not (tmp_path / "x").exists()
    fs.plan(tiny_run, "cb", [4], 1, ["taskembed"], out=tmp_path / "y").out.mkdir()
    (tmp_path / "y" / fs.SETTINGS).write_text(json.dumps({"task": "cb", "source": "rte"}))
    with pytest.raises(UserError, match="holds a few-shot grid made with other settings"):
        fs.plan(tiny_run, "cb", [4], 1, ["taskembed"], out=tmp_path / "y")


def test_embed_plot_draws_the_run_and_its_few_shot_tasks(tiny_run, tmp_path):
    fewshot = fs.plan(tiny_run, "boolq", [4, 8], 1, ["taskembed"], source="sst2", out=tmp_path / "boolq",
                      overrides=CELL)
    fs.run_fewshot(fewshot, progress=False)
    path = embed_plot(tiny_run, [fewshot.out], tmp_path / "embeddings.png")
    assert matplotlib.image.imread(path).shape[:2] == (660, 840)
    from hyperpelt.experiments.embed_plot import fewshot_embedding

    label, vector = fewshot_embedding(fewshot.out, tiny_run, "hyperpelt")
    assert label == "boolq (k=8, taskembed)" and vector.shape == (4, 16)
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.json").write_text(json.dumps({"run": str(tmp_path), "task": "cb"}))
    with pytest.raises(UserError, match="transferred from"):
        embed_plot(tiny_run, [other])
    assert embed_plot(tiny_run).name == "task_embeddings.png"


def test_a_task_declared_in_a_file_is_a_few_shot_target(tiny_run, tmp_path, capsys):
    from hyperpelt.tasks import registry

    before = dict(registry._REGISTRY)
    rows = [("a warm and funny film", "positive"), ("two dull hours", "negative")] * 6
    for name, part in (("train.csv", rows), ("dev.csv", rows[:8])):
        (tmp_path / name).write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in part))
    (tmp_path / "shots.yaml").write_text(yaml.safe_dump(
        {"name": "shots", "inputs": {"review": "text"}, "labels": ["negative", "positive"],
         "metrics": ["accuracy"], "files": {"train": "train.csv", "dev": "dev.csv"}}))
    args = ["fewshot", str(tiny_run), "--task", "shots", "--k", "4", "--seeds", "1", "--mode", "taskembed",
            "--source", "sst2", "--out", str(tmp_path / "out"), "--quiet", "--set", *CELL]
    assert main(args) == 2 and "unknown task 'shots'" in capsys.readouterr().err  # not declared: unknown
    assert main([*args[:2], "--task-file", str(tmp_path / "shots.yaml"), *args[2:]]) == 0
    cell = json.loads((tmp_path / "out" / "cells" / "taskembed" / "k4-seed0" / "cell.json").read_text())
    assert cell["k"] == 4 and 0 <= cell["score"] <= 100
    definitions = load_config(tmp_path / "out" / "cells" / "taskembed" / "k4-seed0" / "config.yaml").data
    assert definitions.tasks == ["shots"] and definitions.task_definitions[0]["name"] == "shots"
    assert registry._REGISTRY == before  # the declared task was the grid's, not the process's


def test_labels_of_few_shot_tasks_that_stayed_by_one_source_are_stacked_apart():
    from hyperpelt.evaluation.plots import label_offsets

    points = np.array([[0.0, 0.0], [10.0, 5.0], [0.01, 0.0], [0.0, 0.02], [10.0, 5.0]])
    groups = ["source", "source", "few-shot", "few-shot", "few-shot"]
    offsets = label_offsets(points, groups)
    assert offsets[0] == (6, 5) and offsets[1] == (6, 5)  # far apart: no stacking
    assert offsets[2] == (6, -14) and offsets[3] == (6, -26)  # by the first source, a line apart
    assert offsets[4] == (6, -14)  # alone by the second source


def test_a_cells_model_dropout_reaches_its_host_and_other_model_keys_are_refused(tiny_run, tmp_path):
    from hyperpelt.transfer import SharedHosts

    plan = fs.plan(tiny_run, "cb", [4], 1, ["hyperpelt", "full"], out=tmp_path,
                   overrides=[*CELL, "model.dropout=0.3"])
    hosts = SharedHosts()
    for mode in ("hyperpelt", "full"):  # a grown run, and a baseline new on the run's backbone
        model = fs.cell_model(plan, mode, fs.cell_config(plan, mode, 4, 0), 0, hosts)
        assert {m.dropout for m in model.host.modules() if isinstance(getattr(m, "dropout", None), float)} \
            == {0.3}  # T5's attention
    assert {m.dropout for m in hosts.host(fs.cell_config(plan, "full", 4, 0).model).modules()
            if isinstance(getattr(m, "dropout", None), float)} == {0.0}  # the shared host: the run's own
    other = fs.plan(tiny_run, "cb", [4], 1, ["hyperpelt"], out=tmp_path / "other",
                    overrides=[*CELL, "model.max_input_length=16"])
    with pytest.raises(UserError, match="model.max_input_length"):
        fs.cell_model(other, "hyperpelt", fs.cell_config(other, "hyperpelt", 4, 0), 0)
