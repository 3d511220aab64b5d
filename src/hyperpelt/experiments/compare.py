"""Run several methods over several seeds on the same tasks and write one markdown report.

A comparison file holds a ``base`` run config, ``seeds``, ``methods`` (name → overrides of the base) and
``report`` (where the markdown goes); optionally ``title`` and ``other_images`` (true: runs that read
images are scored again with every test question paired with another image). Each (method, seed) trains
in its own run folder; a folder that already holds results.json is reused, and an interrupted run continues
from its newest training state (see ``training.sweep``), so an interrupted comparison resumes where it
stopped.
"""

from __future__ import annotations

import copy
import statistics
from collections import Counter
from pathlib import Path

from ..config import RunConfig, read_yaml, run_config
from ..errors import UserError
from ..evaluation.evaluator import averages
from ..evaluation.plots import mean_std
from ..provenance import describe_machine


def merge_config(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "method":
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_comparison(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"comparison file not found: {path}")
    spec = read_yaml(path)
    unknown = set(spec) - {"base", "seeds", "methods", "report", "title", "other_images"}
    if unknown:
        raise UserError(f"{path}: unknown keys {', '.join(sorted(unknown))} (expected base, seeds, methods, "
                        f"report; optional title, other_images)")
    for key in ("base", "seeds", "methods", "report"):
        if key not in spec:
            raise UserError(f"{path}: missing '{key}'")
    for key, kind in (("base", dict), ("methods", dict), ("seeds", list), ("report", str)):
        if not isinstance(spec[key], kind) or (not spec[key] and key != "base"):
            raise UserError(f"{path}: '{key}' must be a{'' if key == 'base' else ' non-empty'} "
                            f"{kind.__name__.replace('dict', 'mapping')}")
    if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in spec["seeds"]):
        raise UserError(f"{path}: 'seeds' must be a list of integers")
    return spec


def run_configs(spec: dict) -> dict[tuple[str, int], RunConfig]:
    """One checked RunConfig per (method label, seed)."""
    configs = {}
    for label, override in spec["methods"].items():
        for seed in spec["seeds"]:
            data = merge_config(spec["base"], override or {})
            data.setdefault("train", {})
            data["train"]["seed"] = seed
            data["train"]["run_name"] = f"{label}-seed{seed}"
            try:
                configs[(label, seed)] = run_config(data)
            except UserError as err:
                raise UserError(f"methods.{label}: {err}") from None
    return configs


def run_comparison(path: str | Path, command: str, quiet: bool = True) -> Path:
    """Train every (method, seed) not already finished, then write the report."""
    from ..training.sweep import drop_states, finished_results, train_run

    spec = load_comparison(path)
    results, configs = {}, run_configs(spec)
    kinds = {config.eval.average for config in configs.values()}
    if len(kinds) > 1:
        raise UserError(f"{path}: every method must use one eval.average, got {', '.join(sorted(kinds))}")
    for (label, seed), config in configs.items():
        run_dir = Path(config.train.output_dir) / config.train.run_name
        done = run_dir / "results.json"
        if not done.is_file():
            print(f"training {label} seed {seed} -> {run_dir}", flush=True)
            train_run(config, run_dir, quiet=quiet)
        drop_states(run_dir)  # (again, where a crash came between the results and the removal)
        results[(label, seed)] = finished_results(done)
        if spec.get("other_images") and config.data.feature_cache is not None:
            results[(label, seed)]["other_images"] = _other_images(run_dir)
    report = Path(spec["report"])
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(spec, results, command, kinds.pop()))
    return report


def _other_images(run_dir: Path) -> dict:
    """The run's test scores with every question paired with another image (computed once, then read)."""
    from ..inference import evaluate_run
    from ..training.sweep import finished_results

    done = run_dir / "eval_test_other_images.json"
    if done.is_file():
        return finished_results(done)
    return evaluate_run(run_dir, "test", other_images=True)[0]


def _mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def render_report(spec: dict, results: dict, command: str, average: str = "pooled") -> str:
    """The comparison table; averages are ``average`` (eval.average), recomputed from each run's task
    metrics, so runs written before both averages were kept read the same way."""
    labels = list(spec["methods"])
    seeds = spec["seeds"]
    tasks = list(next(iter(results.values()))["tasks"])
    timed = all(r.get("train_seconds") is not None for r in results.values())
    validated = all(r.get("validation_average") is not None for r in results.values())
    shuffled = any("other_images" in r for r in results.values())
    lines = [
        f"# {spec.get('title', 'Method comparison')}",
        "",
        f"Regenerate with `{command}` (every number below is read from the run folders it writes).",
        "",
        f"Code the runs were made with: {_tally(results, lambda r: r.get('code_version'))}.",
        "",
        f"Machines: {_tally(results, lambda r: describe_machine(r['machine']) if 'machine' in r else None)}"
        f"; dates: {_tally(results, lambda r: r.get('date'))}.",
        "",
        f"Tasks: {', '.join(tasks)}; seeds: {', '.join(map(str, seeds))}; test split of the best-average "
        "validation checkpoint; mean ± standard deviation over seeds. Trained/task: trained parameters "
        "divided by the number of tasks, as a percentage of the backbone. Average: "
        + ("the mean of every metric value of every task (the papers' Avg; a task with two metrics counts "
           "twice)" if average == "pooled" else "the mean of the task scores (each the mean of its metrics)")
        + f" (eval.average: {average}); min: the lowest seed's average."
        + (" Validation: the best validation average, the one that picked the checkpoint (what a "
           "learning-rate sweep reads)." if validated else "")
        + (" Other images: the test average with every question paired with another test image (a fixed "
           "derangement of the images); '-' for a run without images." if shuffled else "")
        + (" Train time: the training loop with its validations, in minutes of wall-clock time and of CPU "
           "time (all the process's threads; other jobs on the machine change it far less)."
           if timed else ""),
        "",
        "| method | trained/task | " + " | ".join(tasks) + f" | average ({average}) | min |"
        + (" validation |" if validated else "") + (" other images |" if shuffled else "")
        + (" train time | CPU time |" if timed else ""),
        "|---|---:|" + "---:|" * (len(tasks) + 2 + validated + shuffled + 2 * timed),
    ]
    summary, per_seed = {}, {}
    for label in labels:
        runs = [results[(label, s)] for s in seeds]
        per_task = 100 * runs[0]["trainable_params"] / len(tasks) / runs[0]["backbone_params"]
        run_averages = [averages(r["tasks"], average)["average"] for r in runs]
        summary[label] = (statistics.mean(run_averages), per_task)
        per_seed[label] = run_averages
        cells = [_mean_std([r["tasks"][t]["score"] for r in runs]) for t in tasks]
        cells += [_mean_std(run_averages), f"{min(run_averages):.2f}"]
        if validated:
            cells.append(_mean_std([r["validation_average"] for r in runs]))
        if shuffled:
            other = [averages(r["other_images"]["tasks"], average)["average"] for r in runs
                     if "other_images" in r]
            cells.append(_mean_std(other) if len(other) == len(runs) else "-")
            summary[label] += (statistics.mean(other) if len(other) == len(runs) else None,)
        if timed:
            cells.append(f"{statistics.mean(r['train_seconds'] for r in runs) / 60:.1f} min")
            cpu = [r.get("train_cpu_seconds") for r in runs]
            cells.append("-" if None in cpu else f"{statistics.mean(cpu) / 60:.1f} min")
        lines.append(f"| {label} | {per_task:.3f}% | " + " | ".join(cells) + " |")
    lines += ["", "## What this shows", ""]
    if "hyperpelt" in summary:
        ours, ours_params = summary["hyperpelt"]
        for other in ("adapters-shared", "prefix"):
            if other in summary:
                theirs, their_params = summary[other]
                fewer = "fewer" if ours_params < their_params else "more"
                lines.append(
                    f"- HyperPELT against {other}: {paired_gap(per_seed['hyperpelt'], per_seed[other])} "
                    f"({ours:.2f} vs {theirs:.2f}), with {fewer} trained parameters per task "
                    f"({ours_params:.3f}% vs {their_params:.3f}%)."
                )
    lines += _visual_lines(summary)
    best = max(summary, key=lambda k: summary[k][0])
    lines.append(f"- Best average ({average}): {best} ({summary[best][0]:.2f}).")
    return "\n".join(lines) + "\n"


def paired_gap(ours: list[float], theirs: list[float]) -> str:
    """The gap of two methods run on the same seeds, per seed (a paired test: the seeds fix the data order
    and initialisation both runs share), and whether it stands out of the spread of those differences:
    a two-sided paired t-test at 5% (scipy's ``ttest_rel``), "within noise" otherwise."""
    from scipy.stats import ttest_rel

    gaps = [a - b for a, b in zip(ours, theirs)]
    mean, std = mean_std(gaps)
    text = f"gap {mean:+.2f} ± {std:.2f} over {len(gaps)} paired seed{'s' * (len(gaps) > 1)}"
    if len(gaps) < 2 or std == 0:
        return f"{text}, too few differing seeds to test"
    p = ttest_rel(ours, theirs).pvalue
    verdict = ("ahead" if mean > 0 else "behind") if p < 0.05 else "within noise"
    return f"{text}, {verdict} (paired t-test p = {p:.3f})"


def _tally(results: dict, read) -> str:
    """Each value of ``read(run)`` over the runs and how many runs gave it ("not recorded" for None)."""
    counts = Counter(read(r) or "not recorded" for r in results.values())
    return "; ".join(f"{value} ({n} run{'s' * (n > 1)})" for value, n in counts.most_common())


def _visual_lines(summary: dict) -> list[str]:
    """What the V&L rows show: each image-reading method against the question-only model, and how much
    it loses when the images are another question's."""
    lines = []
    floor = summary.get("question-only")
    for label, entry in summary.items():
        if len(entry) < 3 or entry[2] is None:
            continue
        if floor is not None:
            lines.append(f"- {label} is {entry[0] - floor[0]:.2f} points above the question-only model "
                         f"({entry[0]:.2f} vs {floor[0]:.2f}).")
        lines.append(f"- {label} loses {entry[0] - entry[2]:.2f} points when every question is paired with "
                     f"another image ({entry[0]:.2f} -> {entry[2]:.2f}).")
    return lines
