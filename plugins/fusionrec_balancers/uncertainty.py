"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): a learned log-variance per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import LossBalancer, PositiveFloat


class UncertaintyWeights(LossBalancer):
    """``L = sum_i alpha_i * (exp(-s_i) * L_i + s_i)`` with a learned ``s_i = log sigma_i^2`` per task.

    For fixed losses the minimum over ``s_i`` is at ``exp(-s_i) = 1 / L_i``: each task is weighted by
    the inverse of its loss scale. This is the paper's regression form ``L_i / (2 sigma_i^2) + log
    sigma_i`` times 2, i.e. the same minimum without the 1/2 that would halve the network's gradient;
    at ``s = 0`` it starts as the fixed weighted sum. ``learning_rate`` (default: the model's) is the
    log-variances' own Adam learning rate.
    """

    def __init__(self, weights: dict[str, float], init_log_variance: float = 0.0,
                 learning_rate: PositiveFloat | None = None):
        super().__init__(weights)
        self.log_variance = nn.Parameter(torch.full((len(self.tasks),), float(init_log_variance)))  # [T]
        self.learning_rate = learning_rate

    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        stacked = self.stacked(losses).float()  # [T]
        return (self.alpha * (torch.exp(-self.log_variance) * stacked + self.log_variance)).sum()

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, (self.alpha * torch.exp(-self.log_variance)).tolist()))
