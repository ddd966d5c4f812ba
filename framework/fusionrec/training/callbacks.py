"""Callbacks the CLI adds: a per-task metrics table, the test split's calibration bins, and a
Parquet writer for predictions."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fusionrec.reporting.files import CALIBRATION_FILE, run_directory, write_atomically
from fusionrec.reporting.reliability import COLUMNS, ReliabilityBins, bins_frame


def metrics_by_task(metrics: dict[str, Any], stage: str) -> dict[str, dict[str, float]]:
    """``{"val/click/auc": 0.7, ...}`` -> ``{"click": {"auc": 0.7}}`` (per task, never pooled);
    a per-scenario ``"val/click/auc/app"`` becomes the row ``"click [app]"``."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            table[parts[1]][parts[2]] = float(value)
        elif len(parts) == 4 and parts[0] == stage:
            table[f"{parts[1]} [{parts[3]}]"][parts[2]] = float(value)
    return dict(table)


def format_metric(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


class MetricsTable(Callback):
    """Prints one row per task and one column per metric after each validation and test run."""

    def __init__(self, console: Console | None = None):
        # Off a terminal (a log file, CI) rich assumes 80 columns and would cut metric names short.
        self.console = console or Console(width=None if sys.stdout.isatty() else 200)

    @rank_zero_only
    def _print(self, trainer: Trainer, stage: str, title: str) -> None:
        by_task = metrics_by_task(trainer.callback_metrics, stage)
        if not by_task:
            return
        columns = sorted({name for metrics in by_task.values() for name in metrics}, key=lambda n: (n == "loss", n))
        undefined = any(math.isnan(value) for metrics in by_task.values() for value in metrics.values())
        # A NaN metric is one not defined on these rows (an AUC over rows of one class), never a score.
        table = Table(title=title, caption="n/a: not defined on these rows (e.g. an AUC where every row has the "
                                           "same label)" if undefined else None)
        table.add_column("task")
        for column in columns:
            table.add_column(column, justify="right")
        for task, metrics in by_task.items():
            # escape: "click [home]" is a row name, not rich markup.
            table.add_row(escape(task), *(format_metric(metrics[c]) if c in metrics else "" for c in columns))
        self.console.print(table)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._print(trainer, "val", f"validation metrics, epoch {trainer.current_epoch}")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print(trainer, "test", "test metrics")


class CalibrationWriter(Callback):
    """Counts every probability task's test predictions into reliability bins and writes them to
    ``calibration.csv`` in the CSV logger's run directory (rank 0, atomically) when testing ends.

    The test split, not validation: fit tests the best checkpoint on rows that took no part in
    choosing it. A task counts when its head's ``score_kind`` is ``"probability"``, on the rows that
    carry its label, each served probability against the task's own 0/1 label (for a conditional
    head, the last column of its target; a multilabel head's classes are pooled). A run without such
    a task gets a header-only file. Needs ``test_step`` to return the model's raw outputs per task.
    """

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.bins = {task: ReliabilityBins().to(pl_module.device) for task, head in pl_module.model.heads.items()
                     if head.score_kind == "probability"}

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: dict[str, Any],
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        for task, bins in self.bins.items():
            head = pl_module.model.heads[task]
            output, target, _ = pl_module._labelled(task, outputs[task], batch)
            bins.update(head.predict(output), target[..., -1] if head.parent is not None else target)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        states = {task: bins.compute() for task, bins in self.bins.items()}  # every rank: sums across ranks
        run_dir = run_directory(trainer)
        if not trainer.is_global_zero or run_dir is None:
            return
        frames = [bins_frame("test", task, state) for task, state in states.items()]
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
        write_atomically(run_dir / CALIBRATION_FILE, lambda partial: table.to_csv(partial, index=False))


class ParquetPredictionWriter(BasePredictionWriter):
    """Writes one row per predicted row: its categorical key columns, then one score column per task
    (a list column for multi-output tasks). Written to a temporary file and renamed into place."""

    def __init__(self, output: str | Path):
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: list,
                           batch_indices: Any) -> None:
        steps = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        order = np.concatenate([step["index"].cpu().numpy() for step in steps])
        datamodule = trainer.datamodule
        keys = [name for name, spec in datamodule.feature_specs.items() if spec.type == "categorical"]
        frame = datamodule.predict_frame()[keys].iloc[order].reset_index(drop=True)
        for task in pl_module.model.heads:
            scores = np.concatenate([step[task].float().cpu().numpy() for step in steps])
            frame[task] = list(scores) if scores.ndim > 1 else scores
        self.output.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.output, lambda partial: frame.to_parquet(partial, index=False))
        print(f"wrote {len(frame)} rows of predictions to {self.output}")
