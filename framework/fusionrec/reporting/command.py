"""``fusionrec report RUN_DIR``: rebuild a run's report PNGs from its logs."""

from __future__ import annotations

from pathlib import Path

from fusionrec.errors import CommandParser
from fusionrec.reporting.report import write_report


def run_report(argv: list[str]) -> int:
    parser = CommandParser(
        prog="fusionrec report",
        description="Rebuild training.png (from metrics.csv) and calibration.png (from calibration.csv) "
                    "in a run's log directory.")
    parser.add_argument("run_dir", type=Path, help="the run's log directory, e.g. lightning_logs/version_0")
    arguments = parser.parse_args(argv)
    for line in write_report(arguments.run_dir):
        print(line)
    return 0
