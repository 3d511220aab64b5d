"""Low-resource multi-task training (Hyperformer §3.3, Figure 2): every task of a recipe cut to n training
examples, each method of the recipe trained for every n and seed, the average test score against n.

The recipe is a comparison file (``base`` and ``methods``, label → overrides of the base, as ``hyperpelt
compare`` reads it; its ``seeds`` and ``report`` are not used here) or a plain run config (one method,
labelled by its name). Each (method, n, seed) is a run folder under OUT/runs whose n examples per task are
drawn at random by the seed (a task with fewer keeps them all); a folder holding results.json is reused
and an interrupted run continues from its newest training state, so an interrupted sweep resumes; a
finished run's training states are removed. lowresource.json, lowresource.md and lowresource.png give the
mean ± standard deviation over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from ..config import apply_overrides, read_yaml, run_config
from ..errors import UserError
from ..evaluation.plots import mean_std, plot_scores, size_table
from ..methods import DEFAULT_METHOD
from .compare import merge_config

COMPARISON_KEYS = {"base", "seeds", "methods", "report", "title", "other_images"}


def load_recipe(path: str | Path) -> tuple[dict, dict[str, dict]]:
    """(base config, {method label: overrides of the base}) of a comparison file or a run config."""
    path = Path(path)
    data = read_yaml(path)
    if "base" not in data and "methods" not in data:
        method = data.get("method") or {}
        return data, {method.get("name", DEFAULT_METHOD) if isinstance(method, dict) else DEFAULT_METHOD: {}}
    unknown = set(data) - COMPARISON_KEYS
    if unknown or not isinstance(data.get("methods"), dict) or not data["methods"]:
        raise UserError(f"{path}: a comparison file needs base and methods (a mapping label -> overrides)"
                        + (f"; unknown keys {', '.join(sorted(unknown))}" if unknown else ""))
    return data.get("base") or {}, data["methods"]


def plan(path, ns: list[int], seeds: int, out=None, overrides: list[str] = ()) -> tuple[Path, dict]:
    """The output folder and one checked RunConfig per (method label, n, seed), before anything trains."""
    base, methods = load_recipe(path)
    if seeds < 1 or not ns or min(ns) < 1:
        raise UserError("--seeds and every --n must be >= 1")
    output_dir = (base.get("train") or {}).get("output_dir", "runs")
    folder = Path(out) if out is not None else Path(output_dir) / f"lowresource-{Path(path).stem}"
    configs = {}
    for label, override in methods.items():
        for n in ns:
            for seed in range(seeds):
                settings = [*overrides, f"data.max_train_examples={n}", f"data.train_sample_seed={seed}",
                            f"train.seed={seed}", f"train.output_dir={folder / 'runs'}",
                            f"train.run_name={label}-n{n}-seed{seed}"]
                try:
                    configs[label, n, seed] = run_config(apply_overrides(merge_config(base, override or {}),
                                                                         settings))
                except UserError as err:
                    raise UserError(f"{path}: methods.{label}: {err}") from None
    kinds = {config.eval.average for config in configs.values()}
    if len(kinds) > 1:
        raise UserError(f"{path}: every method must use one eval.average, got {', '.join(sorted(kinds))}")
    return folder, configs


def run_lowresource(path, ns: list[int], seeds: int, out=None, overrides: list[str] = (),
                    progress: bool = True) -> tuple[Path, dict]:
    """Train every run not finished yet, then write the summary files; returns the folder and summary."""
    from ..training.sweep import drop_states, finished_results, train_run

    folder, configs = plan(path, ns, seeds, out, overrides)
    results = {}
    bar = tqdm(configs.items(), desc="lowresource", disable=not progress, unit="run")
    for (label, n, seed), config in bar:
        run_dir = Path(config.train.output_dir) / config.train.run_name
        done = run_dir / "results.json"
        bar.set_postfix_str(f"{label} n={n} seed={seed}" + (" (done)" if done.is_file() else ""))
        if not done.is_file():
            train_run(config, run_dir)
        drop_states(run_dir)
        results[label, n, seed] = finished_results(done)
    config = next(iter(configs.values()))
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, config.data.tasks, config.eval.average, str(path))
    (folder / "lowresource.json").write_text(json.dumps(summary, indent=2))
    (folder / "lowresource.md").write_text(render_markdown(summary))
    series = {label: {int(n): entry["scores"] for n, entry in per_n.items()}
              for label, per_n in summary["methods"].items()}
    plot_scores(series, folder / "lowresource.png",
                f"Low-resource multi-task training ({', '.join(config.data.tasks)})",
                "training examples per task n (log scale)",
                f"test average over tasks ({config.eval.average})")
    return folder, summary


def summarize(results: dict, tasks: list[str], average: str, recipe: str) -> dict:
    methods: dict = {}
    for (label, n, _seed), entry in results.items():
        methods.setdefault(label, {}).setdefault(str(n), {"scores": [], "tasks": {t: [] for t in tasks}})
        cell = methods[label][str(n)]
        cell["scores"].append(entry["average"])
        for task in tasks:
            cell["tasks"][task].append(entry["tasks"][task]["score"])
    for per_n in methods.values():
        for cell in per_n.values():
            cell["mean"], cell["std"] = mean_std(cell["scores"])
    ns = sorted({n for _, n, _ in results})
    seeds = sorted({seed for _, _, seed in results})
    return {"recipe": recipe, "tasks": tasks, "average": average, "ns": ns, "seeds": seeds,
            "methods": methods}


def render_markdown(summary: dict) -> str:
    labels = list(summary["methods"])
    lines = [
        f"# Low-resource multi-task training: {summary['recipe']}", "",
        f"Every task ({', '.join(summary['tasks'])}) cut to n training examples drawn per seed; test average "
        f"({summary['average']}) of the best validation checkpoint; mean ± standard deviation over seeds "
        f"{summary['seeds']}.", "",
        *size_table("n", summary["ns"], {label: summary["methods"][label] for label in labels}),
    ]
    return "\n".join(lines) + "\n"
