"""Where a run's report files live, and how they are written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

METRICS_FILE = "metrics.csv"
CALIBRATION_FILE = "calibration.csv"
TRAINING_PLOT = "training.png"
CALIBRATION_PLOT = "calibration.png"


def run_directory(trainer: Trainer) -> Path | None:
    """The CSV logger's version directory (where it writes metrics.csv), or None without one:
    reports are built from that file, so they live next to it."""
    for logger in trainer.loggers:
        if isinstance(logger, CSVLogger):
            return Path(logger.log_dir)
    return None


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(partial)`` to a temporary file beside ``path``, then rename it into place, so a
    reader never sees half a file, and a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
