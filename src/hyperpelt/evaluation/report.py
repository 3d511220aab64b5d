"""Per-task tables for the terminal and the run folder."""

from __future__ import annotations


def results_table(results: dict, title: str = "") -> str:
    """A plain-text table: one row per task with its metrics and score, then the average."""
    rows = []
    for name, entry in results["tasks"].items():
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in entry["metrics"].items())
        rows.append((name, metrics, f"{entry['score']:.2f}"))
    rows.append(("average", "", f"{results['average']:.2f}"))
    widths = [max(len(r[i]) for r in rows + [("task", "metrics", "score")]) for i in range(3)]
    line = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
    out = [title] if title else []
    out += [line(("task", "metrics", "score")), "-" * (sum(widths) + 4)]
    out += [line(r) for r in rows]
    if "trainable_params" in results:
        share = 100 * results["trainable_params"] / results["total_params"]
        out.append(f"trained parameters: {results['trainable_params']:,} of {results['total_params']:,} ({share:.2f}%)")
    return "\n".join(out)
