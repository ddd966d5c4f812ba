"""Loss balancers: per-task losses in, the one loss to back-propagate out."""

from __future__ import annotations

from torch import Tensor, nn


class LossBalancer(nn.Module):
    """Base of every balancer plugin: ``(weights: {task: alpha_i}, **options)``.

    ``weights`` are the per-task ``weight`` values of the config. ``forward({task: L_i}) -> L``;
    ``task_weights()`` reports the weights in force, for logging.
    """

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.tasks = list(weights)

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def task_weights(self) -> dict[str, float]:
        raise NotImplementedError
