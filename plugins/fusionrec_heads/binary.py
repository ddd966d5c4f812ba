"""Binary classification: BCE on logits; AUC, logloss, accuracy."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import BinaryAccuracy

from fusionrec.components import Dropout, PositiveInt, TaskHead
from fusionrec.components.head import BinaryLabels
from fusionrec_heads.metrics import BinaryLogLoss, DefinedBinaryAUROC


class BinaryHead(BinaryLabels, TaskHead):
    """``[B, D_t] -> logits [B]``; serves the probability.

    Labels are 0/1, or any number with ``threshold`` set (positive when ``label >= threshold``,
    e.g. ``liked = rating >= 4``).
    """

    score_kind = "probability"
    primary_metric = "auc"
    can_be_parent = True

    def __init__(self, input_dim: int, label_state: dict, tower: list[PositiveInt] = (64,),
                 dropout: Dropout = 0.0, threshold: float | None = None):
        super().__init__(input_dim, label_state, tower, dropout)
        self.output = nn.Linear(self.tower.output_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.output(self.tower(h)).squeeze(-1)

    def loss(self, output: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(output, target)

    def predict(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output)

    def metrics(self) -> dict[str, Metric]:
        return {"auc": DefinedBinaryAUROC(), "logloss": BinaryLogLoss(), "accuracy": BinaryAccuracy()}

    def update_metrics(self, metrics: nn.ModuleDict, output: Tensor, target: Tensor,
                       groups: Tensor | None = None) -> None:
        super().update_metrics(metrics, output, target.long())
