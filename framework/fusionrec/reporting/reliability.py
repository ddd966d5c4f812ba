"""Reliability bins: how well a task's predicted probabilities match the observed positive rate.

Predictions are counted into equal-width bins of [0, 1]; per bin we keep the count, the sum of the
predicted probabilities and the sum of the 0/1 labels. Those sums are all a reliability diagram and
the expected calibration error need, they have a fixed size whatever the number of rows, and they
add up across processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchmetrics import Metric

from fusionrec.errors import DataError

NUM_BINS = 15
COLUMNS = ["split", "task", "bin", "lower", "upper", "count", "prediction_sum", "label_sum"]


class ReliabilityBins(Metric):
    """Per bin of [0, 1]: ``count``, ``prediction_sum``, ``label_sum`` (each ``[num_bins]``, float64).

    ``update(probabilities, labels)`` takes any shape (``[B]``, or ``[B, C]`` for per-class
    probabilities, every cell counted once). Bin ``k`` holds ``k/n <= p < (k+1)/n``; ``p = 1`` goes to
    the last bin. States are summed across processes (``dist_reduce_fx="sum"``).
    """

    full_state_update = False

    def __init__(self, num_bins: int = NUM_BINS):
        super().__init__()
        self.num_bins = num_bins
        for name in ("count", "prediction_sum", "label_sum"):
            self.add_state(name, torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probabilities: Tensor, labels: Tensor) -> None:
        probabilities = probabilities.detach().reshape(-1).to(torch.float64)
        labels = labels.detach().reshape(-1).to(torch.float64)
        bins = (probabilities * self.num_bins).long().clamp_(0, self.num_bins - 1)
        self.count.index_add_(0, bins, torch.ones_like(probabilities))
        self.prediction_sum.index_add_(0, bins, probabilities)
        self.label_sum.index_add_(0, bins, labels)

    def compute(self) -> dict[str, Tensor]:
        return {"count": self.count, "prediction_sum": self.prediction_sum, "label_sum": self.label_sum}


def bins_frame(split: str, task: str, state: dict[str, Tensor]) -> pd.DataFrame:
    """One row per bin, in the columns of ``calibration.csv``."""
    num_bins = len(state["count"])
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return pd.DataFrame({
        "split": split, "task": task, "bin": np.arange(num_bins), "lower": edges[:-1], "upper": edges[1:],
        **{name: state[name].cpu().numpy() for name in ("count", "prediction_sum", "label_sum")}})[COLUMNS]


def read_calibration(path: Path) -> pd.DataFrame:
    """``calibration.csv`` as written by :class:`~fusionrec.training.callbacks.CalibrationWriter`."""
    frame = pd.read_csv(path)
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: not a fusionrec calibration file, column(s) {', '.join(missing)} missing")
    return frame


@dataclass
class ReliabilityCurve:
    """What a reliability diagram shows for one task: per non-empty bin (arrays ``[K]``) its edges,
    count, mean predicted probability and observed positive rate; and the expected calibration error
    ``sum_k count_k / total * |mean_predicted_k - observed_k|`` over all ``total`` predictions."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    total: int
    expected_calibration_error: float


def reliability_curve(bins: pd.DataFrame) -> ReliabilityCurve:
    """The curve of one task's rows of ``calibration.csv``."""
    bins = bins.sort_values("bin")
    filled = bins[bins["count"] > 0]
    count = filled["count"].to_numpy()
    total = float(count.sum())
    # count_k / total * |S_p,k / count_k - S_y,k / count_k| = |S_p,k - S_y,k| / total
    gaps = (filled["prediction_sum"] - filled["label_sum"]).abs().sum()
    return ReliabilityCurve(
        lower=filled["lower"].to_numpy(), upper=filled["upper"].to_numpy(), count=count,
        mean_predicted=filled["prediction_sum"].to_numpy() / count, observed=filled["label_sum"].to_numpy() / count,
        total=int(total), expected_calibration_error=float(gaps / total) if total else float("nan"))
