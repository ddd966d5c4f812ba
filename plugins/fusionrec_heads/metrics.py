"""Metrics torchmetrics does not ship."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

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
