"""The two report figures, drawn with matplotlib's object API on the Agg canvas: no pyplot, so
no global figure state and no display needed."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fusionrec.reporting.files import write_atomically
from fusionrec.reporting.reliability import ReliabilityCurve
from fusionrec.reporting.training_log import TrainingLog

TRAINING_PANEL = (4.8, 3.4)  # inches per panel
CALIBRATION_PANEL = (4.8, 4.6)  # a reliability diagram over its histogram
MAX_COLUMNS = 3
LINE_STYLES = ("-", "--", ":", "-.")


def figure_grid(count: int, panel: tuple[float, float], title: str) -> tuple[Figure, int, int]:
    """An empty figure sized for ``count`` panels in rows of at most MAX_COLUMNS: (figure, rows, columns)."""
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(panel[0] * columns, panel[1] * rows + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    return figure, rows, columns


def _mark_best(axes: Axes, log: TrainingLog) -> None:
    if log.best is not None:
        step, epoch = log.best
        axes.axvline(step, color="grey", linestyle=":", linewidth=1, label=f"lowest val/loss (epoch {epoch})")


def training_figure(log: TrainingLog, title: str) -> Figure:
    """One panel per task (train loss per logged step, validation loss per epoch, against the global
    step), then one panel with every task's balancer weight, when weights were logged."""
    count = len(log.losses) + bool(log.weights)
    figure, rows, columns = figure_grid(count, TRAINING_PANEL, title)
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    axes = axes[:count]
    for panel, (task, curves) in zip(axes, log.losses.items()):
        if "train" in curves:
            panel.plot(curves["train"].steps, curves["train"].values, linewidth=1, alpha=0.7, label="train")
        if "val" in curves:
            panel.plot(curves["val"].steps, curves["val"].values, marker="o", markersize=4, label="validation")
        _mark_best(panel, log)
        panel.set(title=f"{task}: loss", xlabel="step", ylabel="loss")
        panel.grid(alpha=0.3)
        panel.legend(fontsize="small")
    if log.weights:
        panel = axes[-1]
        for position, (task, curve) in enumerate(log.weights.items()):
            # Dashes apart: equal fixed weights would otherwise hide each other.
            panel.plot(curve.steps, curve.values, linewidth=1.5, label=task, linestyle=LINE_STYLES[position % 4])
        _mark_best(panel, log)
        panel.set(title="balancer weight per task", xlabel="step", ylabel="weight")
        panel.grid(alpha=0.3)
        panel.legend(fontsize="small")
    return figure


def calibration_figure(curves: dict[str, ReliabilityCurve], split: str, title: str) -> Figure:
    """Per task, a reliability diagram (observed positive rate against mean predicted probability
    per bin, and the diagonal of perfect calibration; the expected calibration error in its title)
    over a histogram of the predictions per bin (log scale: sparse bins are the noisy ones)."""
    figure, rows, columns = figure_grid(len(curves), CALIBRATION_PANEL, title)
    grid = figure.add_gridspec(2 * rows, columns, height_ratios=[3, 1] * rows)
    for position, (task, curve) in enumerate(curves.items()):
        row, column = divmod(position, columns)
        diagram = figure.add_subplot(grid[2 * row, column])
        histogram = figure.add_subplot(grid[2 * row + 1, column], sharex=diagram)
        diagram.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfectly calibrated")
        diagram.plot(curve.mean_predicted, curve.observed, marker="o", markersize=4, label=split)
        diagram.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed positive rate",
                    title=f"{task}: ECE {curve.expected_calibration_error:.4f} (n={curve.total:,})")
        diagram.tick_params(labelbottom=False)
        diagram.grid(alpha=0.3)
        diagram.legend(fontsize="small", loc="upper left")
        histogram.bar(curve.lower, curve.count, width=curve.upper - curve.lower, align="edge",
                      color="grey", edgecolor="white")
        # From below 1, so a bin of a single prediction still shows.
        histogram.set(yscale="log", ylim=(0.7, None), xlabel="predicted probability", ylabel="predictions")
        histogram.grid(alpha=0.3)
    return figure


def save_png(figure: Figure, path: Path) -> None:
    write_atomically(path, lambda partial: figure.savefig(partial, format="png", dpi=100))
