"""``poisson``: count regression with a log-link, scored by MAE and mean Poisson deviance."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, Metric, TweedieDevianceScore

from fusionrec.components import TaskHead
from fusionrec.components.head import as_tensor, numeric_labels
from fusionrec.errors import DataError

MIN_RATE = 1e-8


def count_labels(values: pd.Series, where: str) -> np.ndarray:
    """Labels as float64, failing on a missing, non-numeric or negative value with its row number."""
    numbers = numeric_labels(values, where)
    negative = numbers < 0
    if negative.any():
        position = int(np.flatnonzero(negative)[0])  # reported as its index label: the source file's row
        raise DataError(f"{where}: a poisson label must be a non-negative count, found {numbers[position]:g} "
                        f"at row {values.index[position]} ({int(negative.sum())} such row(s))")
    return numbers


class PoissonHead(TaskHead):
    """``[B, D_t] -> log-rate [B]`` trained with the Poisson negative log-likelihood; serves the
    expected count ``exp(log-rate)``. Labels are non-negative numbers (counts, or rates)."""

    score_kind = "value"

    def __init__(self, input_dim: int, label_state: dict, tower: list[int] = (64,), dropout: float = 0.0):
        super().__init__(input_dim, label_state, tower, dropout)
        self.output = nn.Linear(self.tower.output_dim, 1)
        # Start at the training mean rate, so the first steps fit the features, not the offset.
        nn.init.constant_(self.output.bias, math.log(max(label_state["mean"], MIN_RATE)))

    @classmethod
    def fit_labels(cls, values: pd.Series, where: str, options: dict[str, Any]) -> dict:
        return {"mean": float(count_labels(values, where).mean())}

    @classmethod
    def encode_labels(cls, values: pd.Series, state: dict, where: str) -> Tensor:
        return as_tensor(count_labels(values, where), torch.float32)  # [N]

    def forward(self, h: Tensor) -> Tensor:
        return self.output(self.tower(h)).squeeze(-1)

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        return nn.functional.poisson_nll_loss(output, target, log_input=True)

    def predict(self, output: Tensor) -> Tensor:
        return torch.exp(output)

    def metrics(self) -> dict[str, Metric]:
        # Tweedie deviance with power 1 is the mean Poisson deviance.
        return {"mae": MeanAbsoluteError(), "deviance": TweedieDevianceScore(power=1.0)}
