"""The learned task embeddings of a run and of its few-shot transfers in two dimensions (Hyperformer
Figure 3): a PCA of every task's embedding, each flattened to one vector (HyperPELT's N × d_τ rows).

A few-shot folder gives its task's embedding from the cell with the most examples (the figure's "largest
number of samples"), of the run's own method's mode where it ran (else ``taskembed``), lowest seed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import UserError
from ..run_folders import finished_run

CELL = re.compile(r"k(\d+)-seed(\d+)")


def fewshot_embedding(folder: str | Path, run_dir: Path, method: str) -> tuple[str, object]:
    """(label, embedding) of a few-shot folder's task, made from ``run_dir``."""
    from ..checkpoint import read_weights

    folder = Path(folder)
    settings_file = folder / "settings.json"
    if not settings_file.is_file():
        raise UserError(f"{folder} is not a few-shot folder: settings.json is missing")
    settings = json.loads(settings_file.read_text())
    if Path(settings["run"]) != run_dir.resolve():
        raise UserError(f"{folder} transferred from {settings['run']}, not from {run_dir}")
    found = []
    for mode, rank in ((method, 0), ("taskembed", 1)):
        for path in (folder / "cells" / mode).glob("k*-seed*/task_embedding.safetensors"):
            match = CELL.fullmatch(path.parent.name)
            if match and (path.parent / "cell.json").is_file():
                found.append((rank, -int(match[1]), int(match[2]), mode, path))
    if not found:
        raise UserError(f"{folder}: no finished cell of mode {method} or taskembed holds a task embedding")
    _, k, _, mode, path = min(found)
    task = settings["task"]
    return f"{task} (k={-k}, {mode})", read_weights(path)[task]


def embed_plot(run_dir, fewshot_dirs=(), out=None) -> Path:
    """Write the PNG (default RUN_DIR/task_embeddings.png); returns its path."""
    import torch

    from ..checkpoint import read_checkpoint_config
    from ..evaluation.plots import plot_embeddings
    from ..transfer import task_embeddings

    run_dir = finished_run(run_dir)
    method = read_checkpoint_config(run_dir / "best")["method"]["name"]
    table = task_embeddings(run_dir / "best")
    if table is None:
        raise UserError(f"the run's method {method} has no task embedding to plot")
    names, rows = table
    labels, groups, vectors = list(names), ["source tasks (multi-task run)"] * len(names), list(rows)
    for folder in fewshot_dirs:
        label, vector = fewshot_embedding(folder, run_dir, method)
        if vector.shape != rows.shape[1:]:
            raise UserError(f"{folder}: its task embedding {tuple(vector.shape)} is not shaped as the run's "
                            f"{tuple(rows.shape[1:])}")
        labels.append(label)
        groups.append("few-shot tasks")
        vectors.append(vector)
    if len(vectors) < 2:
        raise UserError("a task-embedding plot needs two tasks or more; the run has one: add a few-shot dir")
    matrix = torch.stack(vectors).flatten(1).double().numpy()
    path = Path(out) if out is not None else run_dir / "task_embeddings.png"
    return plot_embeddings(labels, groups, matrix, path, f"Task embeddings of {run_dir.name} ({method}), PCA")
