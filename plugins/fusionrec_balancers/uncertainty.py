"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): a learned log-variance per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import LossBalancer
from fusionrec.components.balancer import positive
from fusionrec.errors import ConfigError


class UncertaintyWeights(LossBalancer):
    """``L = sum_i alpha_i * (exp(-s_i) * L_i + s_i)`` with a learned ``s_i = log sigma_i^2`` per task.

    For fixed losses the minimum over ``s_i`` is at ``exp(-s_i) = 1 / L_i``: each task is weighted by
    the inverse of its loss scale. This is the paper's regression form ``L_i / (2 sigma_i^2) + log
    sigma_i`` times 2, i.e. the same minimum without the 1/2 that would halve the network's gradient;
    at ``s = 0`` it starts as the fixed weighted sum. ``learning_rate`` (default: the model's) is the
    log-variances' own Adam learning rate.
    """

    def __init__(self, weights: dict[str, float], init_log_variance: float = 0.0,
                 learning_rate: float | None = None):
        super().__init__(weights)
        if isinstance(init_log_variance, bool) or not isinstance(init_log_variance, (int, float)):
            raise ConfigError(f"model.balancer.init_log_variance: expected a number, got {init_log_variance!r}")
        self.log_variance = nn.Parameter(torch.full((len(self.tasks),), float(init_log_variance)))  # [T]
        self.learning_rate = None if learning_rate is None else positive("learning_rate", learning_rate)

    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        stacked = self.stacked(losses).float()  # [T]
        return (self.alpha * (torch.exp(-self.log_variance) * stacked + self.log_variance)).sum()

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, (self.alpha * torch.exp(-self.log_variance)).tolist()))
