"""Loading runs no code from a file: weights through safetensors, torch files with weights_only=True, YAML
through safe_load, no pickle, hub code only where the config trusts it and, for a run folder, only where the
user passes --trust-remote-code; a checkpoint of another model is refused naming the difference.

The source rules are read from the code (every call, by its syntax tree), so a new call that breaks one
fails here."""

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import ROOT, SMALL_METHOD, build_model, t5_config
from hyperpelt.checkpoint import check_fits, load_checkpoint, read_checkpoint_config, save_checkpoint
from hyperpelt.cli import main
from hyperpelt.config import ModelConfig, load_config
from hyperpelt.errors import UserError

SOURCES = sorted(path for folder in ("src", "bench", "scripts") for path in (ROOT / folder).rglob("*.py"))
# classes whose from_pretrained loads weights (use_safetensors=True) or may run hub code (trust_remote_code=)
WEIGHT_LOADERS = ("Model", "ForConditionalGeneration", "VisionModel")
AUTO = ("AutoConfig", "AutoModel", "AutoTokenizer")


def calls(name: str):
    """(file:line, call) of every call of a function named ``name``: ``x.name(...)`` or ``name(...)``."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", node


def keyword(call: ast.Call, name: str):
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0] if found else None


def receiver(call: ast.Call) -> str:
    value = call.func.value if isinstance(call.func, ast.Attribute) else None
    return getattr(value, "id", "")


def test_torch_files_are_read_with_weights_only():
    loads = list(calls("load"))
    torch_loads = [(where, c) for where, c in loads if receiver(c) == "torch"]
    assert torch_loads  # the EfficientNet-Lite0 weights: the one torch file the library reads
    unsafe = [where for where, c in torch_loads
              if getattr(keyword(c, "weights_only"), "value", None) is not True]
    assert not unsafe
    assert not [where for where, c in loads if receiver(c) in ("jit", "np", "numpy")
                and getattr(keyword(c, "allow_pickle"), "value", False)]


def test_no_pickle_and_no_yaml_loader_but_safe_load():
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        imports = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
        imports |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom)}
        assert not imports & {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}, path
    yaml_loads = [where for name in ("load", "load_all", "unsafe_load", "full_load")
                  for where, c in calls(name) if receiver(c) == "yaml"]
    assert not yaml_loads
    assert list(calls("safe_load"))


def test_hub_loads_use_safetensors_and_trust_remote_code_only_when_told():
    loads = list(calls("from_pretrained"))
    assert len(loads) >= 10
    for where, call in loads:
        cls = receiver(call)
        if cls in AUTO:
            assert keyword(call, "trust_remote_code") is not None, f"{where}: {cls}: no trust_remote_code="
        if cls.endswith(WEIGHT_LOADERS):
            flag = keyword(call, "use_safetensors")
            assert isinstance(flag, ast.Constant) and flag.value is True, f"{where}: {cls} may read pickle"
    for where, call in calls("from_config"):
        assert keyword(call, "trust_remote_code") is not None, where
    assert ModelConfig().trust_remote_code is False


def test_a_model_folder_with_pickled_weights_only_is_refused(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    folder = tmp_path / "bert-bin"
    folder.mkdir()
    (folder / "config.json").write_text(config.to_json_string())
    torch.save(BertModel(config).state_dict(), folder / "pytorch_model.bin")  # a pickle: never opened
    out = tmp_path / "runs"
    code = main(["train", str(write_recipe(tmp_path, folder, out)), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.safetensors" in err[0], err
    assert not out.exists()


def write_recipe(tmp_path, model: Path, out: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {{name: {model}, tokenizer: {ROOT}/tests/fixtures/data/tokenizers/t5}}\n"
                      f"data: {{tasks: [rte], max_train_examples: 8, max_eval_examples: 4}}\n"
                      f"train: {{steps: 1, output_dir: {out}, run_name: r}}\n")
    return recipe


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint") / "best"
    save_checkpoint(build_model(t5_config(), tasks=("rte", "stsb")), folder, seed=0)
    return folder


@pytest.mark.parametrize("other, named", [
    (dict(tasks=("rte",)), "tasks is rte, stsb there, rte in this model"),
    (dict(method_options={**SMALL_METHOD, "prefix_length": 8}), "method.prefix_length is 4 there, 8 in"),
    (dict(method_options={"name": "prompt", "prompt_length": 2}), "method.name is hyperpelt there, prompt"),
])
def test_a_checkpoint_of_another_model_is_refused_naming_the_difference(checkpoint, other, named):
    args = {"tasks": ("rte", "stsb"), **other}
    model = build_model(t5_config(), args.get("method_options"), args["tasks"])
    with pytest.raises(UserError, match="is a checkpoint of another model: ") as error:
        load_checkpoint(checkpoint, model)
    assert named in str(error.value)
    load_checkpoint(checkpoint, build_model(t5_config(), tasks=("rte", "stsb")))  # its own model loads


def test_another_base_model_is_named(checkpoint):
    meta = read_checkpoint_config(checkpoint)
    small = ModelConfig(name="t5-small", pretrained=True)
    named = "model.name is t5-tiny there, t5-small in x; model.pretrained is False there, True in x$"
    with pytest.raises(UserError, match=named):
        check_fits(meta, checkpoint, small, meta["method"], meta["tasks"], "x")


def test_eval_refuses_a_best_checkpoint_of_another_run(tmp_path, checkpoint, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(checkpoint, run / "best")
    config = load_config(None, ["model.name=t5-tiny", "model.pretrained=false", "data.tasks=[rte]"])
    (run / "config.yaml").write_text(json.dumps(config.to_dict()))
    before = sorted(p.name for p in run.iterdir())
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tasks is rte, stsb there, rte in " in err[0] and str(run / "best") in err[0]
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_truncated_safetensors_checkpoint_is_one_line(tmp_path, checkpoint):
    folder = tmp_path / "best"
    shutil.copytree(checkpoint, folder)
    weights = folder / "method.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(UserError, match="method.safetensors: not a readable safetensors file"):
        load_checkpoint(folder)
    save_file({"x": torch.zeros(1)}, weights)
    with pytest.raises(UserError, match="weights that the model does not have: x"):
        load_checkpoint(folder)


@pytest.fixture(scope="module")
def remote_code_run(tmp_path_factory):
    """A finished one-step run whose config and checkpoint say model.trust_remote_code: true (the built-in
    random T5 runs no hub code either way)."""
    from conftest import train_run

    run = train_run(tmp_path_factory.mktemp("remote"), [
        "model.name=t5-tiny", "model.pretrained=false", "model.max_input_length=32",
        "model.max_target_length=4", "model.trust_remote_code=true", "data.tasks=[rte]",
        "data.max_train_examples=8", "data.max_eval_examples=4", "train.steps=1", "train.eval_every=1",
        "train.batch_size=4"])
    assert read_checkpoint_config(run / "best")["model"]["trust_remote_code"] is True
    return run


def test_a_run_asking_for_remote_code_loads_only_when_told(remote_code_run, capsys):
    from hyperpelt.inference import load_run

    asks = f"^{remote_code_run}: its model runs code .* pass --trust-remote-code"
    with pytest.raises(UserError, match=asks):
        load_run(remote_code_run)
    with pytest.raises(UserError, match="best: its model runs code"):
        load_checkpoint(remote_code_run / "best")
    assert load_run(remote_code_run, trust_remote_code=True).model_config.trust_remote_code is True
    assert main(["eval", str(remote_code_run), "--trust-remote-code"]) == 0
    assert json.loads((remote_code_run / "eval_test.json").read_text())["split"] == "test"
    assert main(["predict", str(remote_code_run), "--task", "rte", "--text", "a\tb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --trust-remote-code if you trust" in err[0], err


def test_serve_takes_trust_remote_code_and_refuses_without_it(remote_code_run):
    from hyperpelt.arguments import options_from
    from hyperpelt.cli import build_parser
    from hyperpelt.serving.settings import ServeOptions, load_engine

    options = options_from(ServeOptions, build_parser().parse_args(["serve", "RUN", "--trust-remote-code"]))
    assert options == ServeOptions(trust_remote_code=True) and ServeOptions().trust_remote_code is False
    with pytest.raises(UserError, match="pass --trust-remote-code"):
        load_engine(remote_code_run, ServeOptions())
    assert load_engine(remote_code_run, options).model.model_config.trust_remote_code is True


def test_the_flag_runs_no_code_a_run_did_not_ask_for(tmp_path, checkpoint):
    assert load_checkpoint(checkpoint, trust_remote_code=True).model_config.trust_remote_code is False


def test_serve_and_fewshot_refuse_an_untrusted_run_before_anything_loads(remote_code_run, capsys,
                                                                           monkeypatch):
    import hyperpelt.serving.server as server

    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("serve started"))
    assert main(["serve", str(remote_code_run), "--port", "0"]) == 2
    assert main(["fewshot", str(remote_code_run), "--task", "cb", "--mode", "taskembed", "--k", "4",
                 "--seeds", "1", "--set", "data.data_dir=tests/fixtures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("pass --trust-remote-code if you trust" in line for line in err), err
