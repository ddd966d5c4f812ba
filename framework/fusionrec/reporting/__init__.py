"""Run reports: plots of a run's training log and of the calibration of its probability tasks,
written next to the logs (``training.png``, ``calibration.png``) and rebuilt from them by
``fusionrec report RUN_DIR``."""

from fusionrec.reporting.report import write_report

__all__ = ["write_report"]
