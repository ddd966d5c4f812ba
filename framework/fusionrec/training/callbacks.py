"""Callbacks the CLI adds: a per-task metrics table, and a Parquet writer for predictions."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table


def metrics_by_task(metrics: dict[str, Any], stage: str) -> dict[str, dict[str, float]]:
    """``{"val/click/auc": 0.7, ...}`` -> ``{"click": {"auc": 0.7}}`` (per task, never pooled)."""
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            table[parts[1]][parts[2]] = float(value)
    return dict(table)


class MetricsTable(Callback):
    """Prints one row per task and one column per metric after each validation and test run."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()

    @rank_zero_only
    def _print(self, trainer: Trainer, stage: str, title: str) -> None:
        by_task = metrics_by_task(trainer.callback_metrics, stage)
        if not by_task:
            return
        columns = sorted({name for metrics in by_task.values() for name in metrics}, key=lambda n: (n == "loss", n))
        table = Table(title=title)
        table.add_column("task")
        for column in columns:
            table.add_column(column, justify="right")
        for task, metrics in by_task.items():
            table.add_row(task, *(f"{metrics[c]:.4f}" if c in metrics else "" for c in columns))
        self.console.print(table)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._print(trainer, "val", f"validation metrics, epoch {trainer.current_epoch}")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print(trainer, "test", "test metrics")


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
        partial = self.output.with_name(f".{self.output.name}.{os.getpid()}.partial")
        frame.to_parquet(partial, index=False)
        os.replace(partial, self.output)
        print(f"wrote {len(frame)} rows of predictions to {self.output}")
