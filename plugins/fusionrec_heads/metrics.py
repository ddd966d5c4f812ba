"""Metrics torchmetrics does not ship."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MultilabelAUROC
from torchmetrics.utilities import dim_zero_cat

EPSILON = 1e-7


class BinaryLogLoss(Metric):
    """Mean binary cross-entropy of probabilities; sums and counts synchronise across processes."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probabilities: Tensor, target: Tensor) -> None:
        p = probabilities.double().clamp(EPSILON, 1 - EPSILON)
        t = target.double()
        self.total += -(t * p.log() + (1 - t) * (1 - p).log()).sum()
        self.count += t.numel()

    def compute(self) -> Tensor:
        return self.total / self.count


class PresentLabelsAUROC(MultilabelAUROC):
    """Macro AUC over the labels that have both positive and negative rows in the evaluated data.

    torchmetrics scores a label with no positives as 0 and averages it in, so one genre absent from
    a test split would cap the macro AUC below 1."""

    def __init__(self, num_labels: int):
        super().__init__(num_labels, average="none")

    def compute(self) -> Tensor:
        per_label = super().compute()
        positives = dim_zero_cat(self.target).sum(0)
        present = (positives > 0) & (positives < dim_zero_cat(self.target).shape[0])
        return per_label[present].mean() if present.any() else torch.tensor(float("nan"))
