"""Loss balancers: per-task losses in, the one loss to back-propagate out."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LossBalancer(nn.Module):
    """Base of every balancer plugin: ``(weights: {task: alpha_i}, **options)``.

    ``weights`` are the per-task ``weight`` values of the config. ``forward(losses, shared)`` gets
    ``{task: L_i}`` and the trunk's trainable parameters (for methods that compare the tasks'
    gradients there) and returns the loss to back-propagate; ``task_weights()`` reports the
    weights in force, for logging; ``on_train_epoch_end()`` is called after every training epoch.
    """

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.tasks = list(weights)
        self.register_buffer("alpha", torch.tensor([weights[task] for task in self.tasks]), persistent=False)

    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        raise NotImplementedError

    def stacked(self, losses: dict[str, Tensor]) -> Tensor:
        """``[T]``, in the order of ``self.tasks``."""
        return torch.stack([losses[task] for task in self.tasks])

    def weighted_sum(self, losses: dict[str, Tensor]) -> Tensor:
        """``sum_i alpha_i * L_i`` with the config's weights: the validation and test loss."""
        stacked = self.stacked(losses)
        return stacked @ self.alpha.to(stacked.dtype)

    def task_weights(self) -> dict[str, float]:
        raise NotImplementedError

    def on_train_epoch_end(self) -> None:
        pass
