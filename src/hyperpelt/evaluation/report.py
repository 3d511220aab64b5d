"""Plain-text tables for the terminal and the run folder."""

from __future__ import annotations

from ..tables import text_table

AVERAGE_NAMES = {"pooled": "mean of every metric value", "per_task": "mean of the task scores"}


def average_rows(results: dict) -> list[tuple[str, str, str]]:
    """The selected average first (``average_kind``), then the other one, each named; results written
    before both were kept have one plain average row."""
    kind = results.get("average_kind")
    if kind not in AVERAGE_NAMES or "average_pooled" not in results:
        return [("average", "", f"{results['average']:.2f}")]
    rows = [(f"average ({kind})", AVERAGE_NAMES[kind], f"{results['average']:.2f}")]
    for other in AVERAGE_NAMES:
        if other != kind:
            rows.append((f"average ({other})", AVERAGE_NAMES[other], f"{results[f'average_{other}']:.2f}"))
    return rows


def results_table(results: dict, title: str = "") -> str:
    """One row per task with its metrics and score, then both averages, the selected one first (and the
    trained parameters)."""
    rows = []
    for name, entry in results["tasks"].items():
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in entry["metrics"].items())
        rows.append((name, metrics, f"{entry['score']:.2f}"))
    rows += average_rows(results)
    out = [title] if title else []
    out += text_table(("task", "metrics", "score"), rows, right=(2,))
    if "trainable_params" in results:
        share = 100 * results["trainable_params"] / results["total_params"]
        out.append(
            f"trained parameters: {results['trainable_params']:,} of {results['total_params']:,} "
            f"({share:.2f}%)"
        )
    return "\n".join(out)
