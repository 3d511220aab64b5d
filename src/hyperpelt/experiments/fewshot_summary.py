"""What a few-shot grid shows, as markdown: the mean ± standard deviation per mode and k, the majority-class
floor, where each mode started, and the papers' comparisons as paired gaps over seeds."""

from __future__ import annotations

from ..evaluation.plots import size_table
from .compare import paired_gap
from .fewshot_modes import describe


def render_markdown(summary: dict) -> str:
    modes = list(summary["modes"])
    lines = [
        f"# Few-shot transfer to {summary['task']} from {summary['run']}", "",
        f"Test {summary['metric']} after training on k examples of {summary['task']} (drawn "
        f"{summary['sample']} per seed); mean ± standard deviation over seeds {summary['seeds']}. The new "
        f"task's weights start from {summary['source']}'s where the mode grows the run.", "",
        *size_table("k", summary["ks"], {m: summary["modes"][m]["k"] for m in modes}),
    ]
    lines.append("| trained parameters | " + " | ".join(
        f"{summary['modes'][m]['trainable_params']:,}" for m in modes) + " |")
    if summary.get("majority") is not None:
        lines += ["", f"Majority class (the training split's most frequent class, on the same test "
                      f"examples): {summary['majority']:.2f}."]
    return "\n".join(lines + _start_lines(summary) + _gap_lines(summary)) + "\n"


def _start_lines(summary: dict) -> list[str]:
    """Where each mode's cells started (a summary from before starts were recorded has none)."""
    starts = summary.get("starts")
    if not starts:
        return []
    return ["", "## Starts", "", *(f"- {mode}: {'grown from ' if start else ''}{describe(start)}"
                                   for mode, start in starts.items())]


# The comparisons the papers make: the parameter-matched pair (a new task embedding against as many soft
# prompt weights), then HyperPELT against the baselines of Hyperformer's Table 2.
GAPS = (("taskembed", "prompt"), ("hyperpelt", "adapters-shared"), ("hyperpelt", "full"))


def _gap_lines(summary: dict) -> list[str]:
    """Per k, each pair of GAPS that the grid holds: the paired gap over seeds (a seed draws the same k
    examples for every mode)."""
    pairs = [(a, b) for a, b in GAPS if a in summary["modes"] and b in summary["modes"]]
    lines = ["", "## Gaps", ""] if pairs else []
    for a, b in pairs:
        for k in summary["ks"]:
            ours, theirs = (summary["modes"][m]["k"][str(k)]["scores"] for m in (a, b))
            lines.append(f"- k = {k}, {a} against {b}: {paired_gap(ours, theirs)}.")
    return lines
