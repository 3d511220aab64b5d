"""The benchmark's runs, cached under runs/bench_serve/: their recipes, data folder and processes' env."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.serving.workload import TASKS

ROOT = Path(__file__).resolve().parents[2]
COMMON_RUN = {"data": {"tasks": list(TASKS), "max_train_examples": 16, "max_eval_examples": 8},
              "train": {"steps": 1, "eval_every": 1, "batch_size": 8, "eval_batch_size": 8, "seed": 42}}
MODELS = {
    # configs/demo.yaml's model, method and heads; no probe fit (it would only cost set-up time)
    "minilm": {"model": {"name": "minilm-l6", "max_input_length": 64},
               "method": {"name": "hyperpelt", "prefix_length": 16, "hyper_dim": 32, "task_dim": 128,
                          "projector_hidden": 128, "adapter_dim": 8},
               "heads": {"pair_encoding": "separate", "pair_head": "alignment", "probe_examples": 0}},
    # random weights; the paper's HyperPELT sizes (the method's defaults)
    "t5": {"model": {"name": "t5-small", "pretrained": False, "max_input_length": 128,
                     "max_target_length": 6},
           "method": {"name": "hyperpelt"}},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child_env(args) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads),
            "MKL_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "HYPERPELT_DATA_DIR": str(args.data)}


def data_folder(cache: Path) -> Path:
    """The runs' data folder: links to every real file, and QNLI's dev file also as its training file
    (the pack has none; it only feeds the runs' one training step)."""
    from hyperpelt.tasks.sources import default_data_dir

    real, folder = default_data_dir().resolve(), cache / "data"
    if not (real / "glue").is_dir():
        raise SystemExit(f"no data at {real}: set HYPERPELT_DATA_DIR to the data folder")
    for source in sorted(real.rglob("*")):
        if source.is_file():
            link = folder / source.relative_to(real)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(source)
    qnli = folder / "glue" / "QNLI" / "train.tsv"
    if not qnli.exists():
        qnli.symlink_to(real / "glue" / "QNLI" / "dev.tsv")
    return folder


def run_recipe(model: str) -> dict:
    recipe = json.loads(json.dumps(COMMON_RUN))
    for section, values in MODELS[model].items():
        recipe.setdefault(section, {}).update(values)
    return recipe


def make_run(model: str, args) -> Path:
    """The model's 8-task run, trained (one step) unless runs/bench_serve holds it from the same recipe."""
    import shutil

    import yaml

    recipe = run_recipe(model)
    recipe["train"].update(output_dir=str(args.cache), run_name=model)
    recipe_file, run_dir = args.cache / f"{model}.yaml", args.cache / model
    text = yaml.safe_dump(recipe, sort_keys=False)
    if recipe_file.exists() and recipe_file.read_text() == text and (run_dir / "best").exists():
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    recipe_file.write_text(text)
    command = [sys.executable, "-m", "hyperpelt", "train", str(recipe_file), "--quiet"]
    log(f"making the {model} run: {' '.join(command)}")
    done = subprocess.run(command, env=child_env(args), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        recipe_file.unlink(missing_ok=True)
        raise RuntimeError(f"training the {model} run failed:\n{done.stderr[-3000:]}")
    return run_dir
