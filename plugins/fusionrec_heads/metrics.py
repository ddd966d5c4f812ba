"""Metrics torchmetrics does not ship."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MultilabelAUROC
from torchmetrics.utilities import dim_zero_cat

EPSILON = 1e-7


class BinaryLogLoss(MeanMetric):
    """Mean binary cross-entropy of probabilities; MeanMetric keeps the sums and syncs them across processes."""

    higher_is_better = False

    def update(self, probabilities: Tensor, target: Tensor) -> None:
        p = probabilities.double().clamp(EPSILON, 1 - EPSILON)
        t = target.double()
        super().update(-(t * p.log() + (1 - t) * (1 - p).log()))


class PresentLabelsAUROC(MultilabelAUROC):
    """Macro AUC over the labels that have both positive and negative rows in the evaluated data.

    torchmetrics scores a label with no positives as 0 and averages it in, so one genre absent from
    a test split would cap the macro AUC below 1."""

    def __init__(self, num_labels: int):
        super().__init__(num_labels, average="none")

    def compute(self) -> Tensor:
        per_label = super().compute()
        target = dim_zero_cat(self.target)
        positives = target.sum(0)
        present = (positives > 0) & (positives < target.shape[0])
        return per_label[present].mean() if present.any() else torch.tensor(float("nan"))
