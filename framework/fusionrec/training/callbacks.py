"""Callbacks the CLI adds: the metrics it prints (a line per validation during fit, the full table
for the tested checkpoint), the test split's calibration bins, and a Parquet writer for predictions."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fusionrec.reporting.files import CALIBRATION_FILE, run_directory, write_atomically
from fusionrec.reporting.reliability import COLUMNS, ReliabilityBins, bins_frame

UNDEFINED_NOTE = "n/a: not defined on these rows (e.g. an AUC where every row has the same label)"


@dataclass
class StageMetrics:
    """One stage's logged metrics, regrouped for printing: ``tasks[task][metric]`` from
    ``"{stage}/{task}/{metric}"``, ``scenarios[(task, scenario)][metric]`` from
    ``"{stage}/{task}/{metric}/{scenario}"``, and ``missing_rows[field]``, the rows of a media field
    without usable content, from ``"{stage}/{field}/missing_rows"``."""

    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    scenarios: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    missing_rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, logged: dict[str, Any], stage: str, tasks: list[str]) -> StageMetrics:
        grouped = cls()
        for key, value in logged.items():
            parts = key.split("/")
            if parts[0] != stage or len(parts) not in (3, 4):
                continue
            name, metric = parts[1], parts[2]
            if len(parts) == 4:
                grouped.scenarios.setdefault((name, parts[3]), {})[metric] = float(value)
            elif name in tasks:
                grouped.tasks.setdefault(name, {})[metric] = float(value)
            elif metric == "missing_rows":
                grouped.missing_rows[name] = int(value)
        return grouped


def format_metric(value: float | None) -> str:
    # A NaN metric is one not defined on these rows (an AUC over rows of one class), never a score.
    return "" if value is None else "n/a" if math.isnan(value) else f"{value:.4f}"


def metrics_table(title: str, metrics: StageMetrics) -> Table:
    """Every metric of every task, a section of per-scenario rows (``click [home]``) below them."""
    rows = [*metrics.tasks.values(), *metrics.scenarios.values()]
    columns = sorted({name for row in rows for name in row}, key=lambda name: (name == "loss", name))
    undefined = any(math.isnan(value) for row in rows for value in row.values())
    table = Table(title=title, caption=UNDEFINED_NOTE if undefined else None)
    table.add_column("task")
    for column in columns:
        table.add_column(column, justify="right")
    for task, row in metrics.tasks.items():
        table.add_row(escape(task), *(format_metric(row.get(column)) for column in columns))
    if metrics.scenarios:
        table.add_section()
    for (task, scenario), row in metrics.scenarios.items():
        # escape: "click [home]" is a row name, not rich markup.
        table.add_row(escape(f"{task} [{scenario}]"), *(format_metric(row.get(column)) for column in columns))
    return table


class MetricsTable(Callback):
    """What a run prints about its metrics.

    During fit, one line per validation run: the checkpoint callback's monitored value (``val/loss``
    unless configured otherwise) and each task's main metric (its head's ``primary_metric``), with
    ``*`` on each run that is the best so far by that value, i.e. the checkpoint fit goes on to test.
    After a test (and a ``validate`` on its own), the full table: every metric of every task, the
    per-scenario rows, and the rows of each media field without usable content.
    """

    def __init__(self):
        # Off a terminal (a log file, CI) rich assumes 80 columns and would cut metric names short.
        self.console = Console(width=None if sys.stdout.isatty() else 200)
        self.best: float | None = None
        self.header_printed = False
        self.undefined_noted = False

    def write(self, *lines: str | Table) -> None:
        """Rendered here, written with print(): under Lightning's rich progress bar sys.stdout is rich's
        proxy, which puts the text above the bar; a console of its own would write across the bar."""
        with self.console.capture() as captured:
            for line in lines:
                plain = isinstance(line, str)  # a table's cells are markup (its task names escaped)
                self.console.print(line, markup=not plain, highlight=False, soft_wrap=plain)
        print(captured.get(), end="", flush=True)

    @staticmethod
    def monitored(trainer: Trainer) -> tuple[str, str]:
        """The value the best checkpoint is chosen by, and whether lower (``min``) or higher is better."""
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.monitor:
            return checkpoint.monitor, checkpoint.mode
        return "val/loss", "min"

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resumed fit carries on from the best the checkpoint callback has restored.
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_score if checkpoint is not None else None
        self.best = None if best is None else float(best)
        self.header_printed = self.undefined_noted = False

    @rank_zero_only
    def _print_epoch_line(self, trainer: Trainer, pl_module: LightningModule) -> None:
        monitor, mode = self.monitored(trainer)
        logged = trainer.callback_metrics
        heads = pl_module.model.heads
        keys = [monitor, *(f"val/{task}/{head.primary_metric}" for task, head in heads.items())]
        names = ["epoch", monitor, *(f"{task} {head.primary_metric}" for task, head in heads.items())]
        values = [float(logged[key]) if key in logged else None for key in keys]
        current = values[0]
        improved = current is not None and not math.isnan(current) and (
            self.best is None or (current < self.best if mode == "min" else current > self.best))
        if improved:
            self.best = current
        widths = [max(len(name), 6) for name in names]
        lines = []
        if not self.header_printed:
            lines += [f"validation: each task's main metric; * = best {monitor} so far (the best checkpoint)",
                      "  ".join(name.rjust(width) for name, width in zip(names, widths))]
            self.header_printed = True
        cells = [str(trainer.current_epoch), *(format_metric(value) for value in values)]
        lines.append("  ".join(cell.rjust(width) for cell, width in zip(cells, widths)) + ("  *" if improved else ""))
        if "n/a" in cells and not self.undefined_noted:
            lines.append(UNDEFINED_NOTE)
            self.undefined_noted = True
        self.write(*lines)

    @rank_zero_only
    def _print_table(self, trainer: Trainer, pl_module: LightningModule, stage: str, title: str) -> None:
        metrics = StageMetrics.read(trainer.callback_metrics, stage, list(pl_module.model.heads))
        if not metrics.tasks:
            return
        if trainer.ckpt_path:
            title += f", {Path(trainer.ckpt_path).name}"
        lines: list[str | Table] = [metrics_table(title, metrics)]
        if metrics.missing_rows:
            counts = ", ".join(f"{name} {count:,}" for name, count in metrics.missing_rows.items())
            lines.append(f"{stage} rows without usable content (a learned missing vector stands in): {counts}")
        self.write(*lines)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._print_epoch_line(trainer, pl_module)
        else:
            self._print_table(trainer, pl_module, "val", "validation metrics")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._print_table(trainer, pl_module, "test", "test metrics")


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
        keys = [name for name, spec in datamodule.feature_specs.items() if spec.feature_type.key_column]
        frame = datamodule.predict_frame()[keys].iloc[order].reset_index(drop=True)
        for task in pl_module.model.heads:
            scores = np.concatenate([step[task].float().cpu().numpy() for step in steps])
            frame[task] = list(scores) if scores.ndim > 1 else scores
        self.output.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.output, lambda partial: frame.to_parquet(partial, index=False))
        print(f"wrote {len(frame)} rows of predictions to {self.output}")
