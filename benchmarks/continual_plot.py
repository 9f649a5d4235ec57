"""The continual suite's figure: accuracy on every task after the last one and backward transfer per approach
(top), and each approach's accuracy matrix R[i][j] as an annotated heat map (bottom)."""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path


def draw(
    document: dict, path: Path, names: list[str], matrices: dict[str, list[list[float]]], transfer: dict[str, float]
) -> None:
    """``matrices[approach]`` is R (row i: accuracies on tasks 0..i after task i); ``transfer[approach]`` its BWT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy

    approaches = list(matrices)
    figure = plt.figure(figsize=(4.2 * len(approaches), 8.4))
    grid = figure.add_gridspec(2, len(approaches), height_ratios=[1, 1.1])
    bars = figure.add_subplot(grid[0, : len(approaches) - 1])
    width = 0.8 / len(approaches)
    labels = [*names, "average"]
    for k, approach in enumerate(approaches):
        last = matrices[approach][-1]
        values = [*last, statistics.fmean(last)]
        bars.bar(numpy.arange(len(labels)) + (k - (len(approaches) - 1) / 2) * width, values, width, label=approach)
    bars.set_xticks(range(len(labels)))
    bars.set_xticklabels(labels)
    bars.set_ylim(0, 1.15)
    bars.set_title("accuracy on each task after training the last one", fontsize=10)
    bars.legend(fontsize=8, loc="upper center", ncol=len(approaches))

    forgetting = figure.add_subplot(grid[0, len(approaches) - 1])
    forgetting.bar(
        range(len(approaches)), [transfer[a] for a in approaches], color=[f"C{k}" for k in range(len(approaches))]
    )
    forgetting.axhline(0, color="black", linewidth=0.8)
    forgetting.set_xticks(range(len(approaches)))
    forgetting.set_xticklabels([textwrap.fill(a, 12) for a in approaches], fontsize=7)
    forgetting.set_title("backward transfer (negative: forgetting)", fontsize=10)

    for k, approach in enumerate(approaches):
        axis = figure.add_subplot(grid[1, k])
        matrix = numpy.array([row + [numpy.nan] * (len(names) - len(row)) for row in matrices[approach]], dtype=float)
        axis.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        for (i, j), value in numpy.ndenumerate(matrix):
            if not numpy.isnan(value):
                axis.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value < 0.6 else "black",
                )
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels(names, fontsize=8)
        axis.set_yticks(range(len(matrix)))
        axis.set_yticklabels([f"after {n}" for n in names[: len(matrix)]], fontsize=8)
        axis.set_title(f"R[i][j]: {approach}", fontsize=9)
    quick = ", quick" if document["quick"] else ""
    figure.suptitle(f"{document['suite']} — {document['device']}{quick}: 4 tweet tasks in sequence", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
