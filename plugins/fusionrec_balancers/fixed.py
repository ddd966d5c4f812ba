"""The seed article's weighting: ``L = sum_i alpha_i * L_i`` with alpha_i from the config."""

from __future__ import annotations

import torch
from torch import Tensor

from fusionrec.components import LossBalancer


class FixedWeights(LossBalancer):
    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self.register_buffer("alpha", torch.tensor([weights[task] for task in self.tasks]), persistent=False)

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        return torch.stack([losses[task] for task in self.tasks]) @ self.alpha.to(losses[self.tasks[0]].dtype)

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.alpha.tolist()))
