"""Figures as PNG files (matplotlib, Agg backend): scores against a sample size, and task embeddings."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def size_table(size_name: str, sizes: list, columns: dict[str, dict]) -> list[str]:
    """Markdown rows of a score-against-size table: one row per size, one "mean ± std" cell per column;
    ``columns[name][str(size)]`` holds that cell's "mean" and "std"."""
    lines = [f"| {size_name} | " + " | ".join(columns) + " |", "|---:|" + "---:|" * len(columns)]
    for size in sizes:
        cells = [column[str(size)] for column in columns.values()]
        lines.append(f"| {size} | " + " | ".join(f"{c['mean']:.2f} ± {c['std']:.2f}" for c in cells) + " |")
    return lines


def plot_scores(series: dict[str, dict[int, list[float]]], path: str | Path, title: str, xlabel: str,
                ylabel: str, baseline: tuple[str, float] | None = None) -> Path:
    """One line per series (label → {x: scores over seeds}) through the means, with a band of ± one
    standard deviation, on a logarithmic x axis ticked at the x values, as the papers' few-shot and
    low-resource figures; ``baseline`` (label, score), e.g. the majority class, a dashed level line."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs_all = sorted({x for points in series.values() for x in points})
    for label, points in series.items():
        xs = sorted(points)
        stats = np.array([mean_std(points[x]) for x in xs])
        line, = ax.plot(xs, stats[:, 0], marker="o", markersize=4, linewidth=1.8, label=label)
        ax.fill_between(xs, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], color=line.get_color(),
                        alpha=0.2, linewidth=0)
    if baseline is not None:
        ax.axhline(baseline[1], color="0.35", linestyle="--", linewidth=1.2, label=baseline[0])
    if len(xs_all) > 1:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs_all))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", frameon=True)
    fig.tight_layout()
    return _save(fig, path)


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows projected on their first two principal components, and the share of variance each explains."""
    centred = vectors - vectors.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / max((singular**2).sum(), 1e-30)
    points = centred @ components[:2].T
    if points.shape[1] < 2:  # two vectors span one direction: the second coordinate is 0
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
        variance = np.pad(variance, (0, 2 - len(variance)))
    return points, variance[:2]


def plot_embeddings(labels: list[str], groups: list[str], vectors: np.ndarray, path: str | Path,
                    title: str) -> Path:
    """A 2-D PCA of the vectors (one per row), each point labelled, one colour and marker per group."""
    plt = _pyplot()
    points, variance = pca_2d(vectors)
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=120)
    markers = ("o", "^", "s", "D")
    order = list(dict.fromkeys(groups))
    for index, group in enumerate(order):
        rows = [i for i, g in enumerate(groups) if g == group]
        ax.scatter(points[rows, 0], points[rows, 1], s=60, marker=markers[index % len(markers)], label=group)
    for (x, y), label, offset in zip(points, labels, label_offsets(points, groups)):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, fontsize=10,
                    ha="left" if offset[0] > 0 else "right")
    ax.set_xlabel(f"first principal component ({100 * variance[0]:.0f}% of the variance)")
    ax.set_ylabel(f"second principal component ({100 * variance[1]:.0f}% of the variance)")
    ax.set_title(title)
    ax.margins(0.15)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", frameon=True)
    fig.tight_layout()
    return _save(fig, path)


def label_offsets(points: np.ndarray, groups: list[str], near: float = 0.03) -> list[tuple[int, int]]:
    """Where each point's label goes, in points from it: the first group's labels above right, the next
    group's below right (a few-shot task that stayed by its source stays readable), and labels of one group
    whose points lie within ``near`` of the plot's span of each other stacked a line apart."""
    corners = ((6, 5), (6, -14), (-6, 5), (-6, -14))
    order = list(dict.fromkeys(groups))
    span = np.ptp(points, axis=0) + 1e-12
    placed: list[tuple[np.ndarray, str]] = []
    out = []
    for point, group in zip(points, groups):
        x, y = corners[order.index(group) % len(corners)]
        stacked = sum(g == group and bool(np.all(np.abs(p - point) < near * span)) for p, g in placed)
        out.append((x, y + (12 if y > 0 else -12) * stacked))
        placed.append((point, group))
    return out


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
