"""Regression: MSE on standardised targets; RMSE and MAE on the original scale."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric

from fusionrec.components import Dropout, PositiveInt, TaskHead
from fusionrec.components.head import as_tensor, numeric_labels


class RegressionHead(TaskHead):
    """``[B, D_t] -> [B]`` in units of the label's training standard deviation, so a task's loss
    starts near 1 whatever its scale (comparable alphas); serves the value on the label's scale."""

    score_kind = "value"
    primary_metric = "rmse"

    def __init__(self, input_dim: int, label_state: dict, tower: list[PositiveInt] = (64,),
                 dropout: Dropout = 0.0):
        super().__init__(input_dim, label_state, tower, dropout)
        self.output = nn.Linear(self.tower.output_dim, 1)
        self.register_buffer("mean", torch.tensor(float(label_state["mean"])))
        self.register_buffer("std", torch.tensor(float(label_state["std"])))

    @classmethod
    def fit_labels(cls, values: pd.Series, where: str, options: dict[str, Any]) -> dict:
        numbers = numeric_labels(values, where)
        std = float(numbers.std())
        return {"mean": float(numbers.mean()), "std": std if std > 0 else 1.0}

    @classmethod
    def encode_labels(cls, values: pd.Series, state: dict, where: str) -> Tensor:
        return as_tensor(numeric_labels(values, where), torch.float32)

    def forward(self, h: Tensor) -> Tensor:
        return self.output(self.tower(h)).squeeze(-1)

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        return nn.functional.mse_loss(output, (target - self.mean) / self.std)

    def predict(self, output: Tensor) -> Tensor:
        return output * self.std + self.mean

    def metrics(self) -> dict[str, Metric]:
        return {"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError()}
