"""The series a training plot shows, read from a run's ``metrics.csv`` (Lightning's CSVLogger).

The module logs ``train/<task>/loss`` and ``train/<task>/weight`` (the balancer's weight) every
``log_every_n_steps`` steps, and ``val/<task>/loss`` and ``val/loss`` once per validation epoch; each
row of the file carries the global ``step`` and ``epoch`` it was logged at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fusionrec.errors import DataError
from fusionrec.reporting.files import METRICS_FILE


@dataclass
class Curve:
    """``values[i]`` logged at global step ``steps[i]`` (both ``[N]``, in step order)."""

    steps: np.ndarray
    values: np.ndarray


@dataclass
class TrainingLog:
    """``losses[task]``: ``{"train": Curve, "val": Curve}`` (either may be absent); ``weights[task]``:
    the balancer's weight; ``best``: ``(step, epoch)`` of the lowest ``val/loss``, or None."""

    losses: dict[str, dict[str, Curve]] = field(default_factory=dict)
    weights: dict[str, Curve] = field(default_factory=dict)
    best: tuple[int, int] | None = None


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """A run directory's ``metrics.csv``; a missing directory or file is a DataError naming it."""
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: no such run directory")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{path}: no such file; reports are built from the CSV logger's {METRICS_FILE} "
                        f"(fusionrec fit writes it with the default trainer.logger)")
    try:
        metrics = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    if "step" not in metrics.columns:
        raise DataError(f"{path}: no 'step' column; not a Lightning CSVLogger metrics file")
    return metrics


def _curve(metrics: pd.DataFrame, column: str) -> Curve:
    logged = metrics[["step", column]].dropna().sort_values("step", kind="stable")
    return Curve(logged["step"].to_numpy(dtype=np.int64), logged[column].to_numpy(dtype=np.float64))


def training_log(metrics: pd.DataFrame) -> TrainingLog:
    """Every task's train and validation loss curves and the balancer's weights in ``metrics``."""
    log = TrainingLog()
    for column in metrics.columns:
        parts = column.split("/")
        if len(parts) != 3 or metrics[column].isna().all():
            continue
        stage, task, name = parts
        if name == "loss" and stage in ("train", "val"):
            log.losses.setdefault(task, {})[stage] = _curve(metrics, column)
        elif name == "weight" and stage == "train":
            log.weights[task] = _curve(metrics, column)
    log.losses = dict(sorted(log.losses.items()))
    log.weights = dict(sorted(log.weights.items()))
    if "val/loss" in metrics.columns and metrics["val/loss"].notna().any():
        best = metrics.loc[metrics["val/loss"].idxmin()]
        log.best = (int(best["step"]), int(best["epoch"]))
    return log
