"""Build a run's report PNGs from its log files: what ``fit`` does at the end of a run and what
``fusionrec report RUN_DIR`` does afterwards."""

from __future__ import annotations

from pathlib import Path

from fusionrec.reporting.figures import calibration_figure, save_png, training_figure
from fusionrec.reporting.files import CALIBRATION_FILE, CALIBRATION_PLOT, METRICS_FILE, TRAINING_PLOT
from fusionrec.reporting.reliability import read_calibration, reliability_curve
from fusionrec.reporting.training_log import read_metrics, training_log


def write_report(run_dir: str | Path) -> list[str]:
    """Writes ``training.png`` from ``metrics.csv`` and ``calibration.png`` from ``calibration.csv``
    into ``run_dir``; returns one line per plot saying where it went or why there is none.
    A missing ``run_dir`` or ``metrics.csv`` is a DataError."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    name = f"{run_dir.parent.name}/{run_dir.name}"  # e.g. lightning_logs/version_3
    lines = []

    log = training_log(metrics)
    if log.losses or log.weights:
        save_png(training_figure(log, f"training: {name}"), run_dir / TRAINING_PLOT)
        lines.append(f"wrote {run_dir / TRAINING_PLOT}")
    else:
        lines.append(f"no training plot: {run_dir / METRICS_FILE} has no train or val losses")

    calibration = run_dir / CALIBRATION_FILE
    if not calibration.is_file():
        lines.append(f"no calibration plot: no {calibration} (it is written when a checkpoint is tested: "
                     f"fit's test of the best checkpoint, or fusionrec test)")
        return lines
    bins = read_calibration(calibration)
    if bins.empty:
        lines.append("no calibration plot: no task of this run scores a probability")
        return lines
    split = bins["split"].iloc[0]
    curves = {task: reliability_curve(rows) for task, rows in bins.groupby("task", sort=True)}
    save_png(calibration_figure(curves, split, f"calibration on the {split} split: {name}"), run_dir / CALIBRATION_PLOT)
    lines.append(f"wrote {run_dir / CALIBRATION_PLOT}")
    return lines
