"""GradNorm (Chen et al., ICML 2018): task weights learned so the tasks' gradient norms on the
shared trunk train at rates set by how far each task's loss still has to fall."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import LossBalancer, PositiveFloat


class GradientNormalization(LossBalancer):
    """The network trains on ``sum_i w_i * L_i`` with ``w`` detached; ``w`` trains only on

        ``L_grad = sum_i | G_i - mean_j(G_j) * r_i ** alpha |``,  ``G_i = || grad_shared (w_i L_i) || = w_i ||g_i||``,
        ``r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))``,

    with the target ``mean(G) * r ** alpha`` held constant, and ``w`` is renormalised to sum to T
    before every step. ``g_i`` is task i's gradient on the trunk's shared parameters (``shared``),
    one extra backward pass per task; ``L_i(0)`` are the first training step's losses (checkpointed).
    The config's weights are the starting ``w`` (rescaled to sum to T). ``alpha`` is the asymmetry:
    larger pulls harder towards tasks that lag. ``learning_rate``: ``w``'s own Adam learning rate.
    """

    def __init__(self, weights: dict[str, float], alpha: PositiveFloat = 1.5,
                 learning_rate: PositiveFloat | None = 0.025):
        super().__init__(weights)
        self.asymmetry = float(alpha)
        self.learning_rate = learning_rate
        self.weight = nn.Parameter(self.alpha * len(self.tasks) / self.alpha.sum())  # [T]
        self.register_buffer("initial_losses", torch.full((len(self.tasks),), float("nan")))  # [T]

    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        with torch.no_grad():
            # The paper renormalises after each update; doing it before each use is the same.
            self.weight.copy_(self.normalized())
        stacked = self.stacked(losses)  # [T]
        detached = stacked.detach().float()
        # Set on the first step; torch.where rather than `if`: no host-device sync per step.
        self.initial_losses.copy_(torch.where(torch.isnan(self.initial_losses), detached, self.initial_losses))
        norms = self.task_gradients(stacked, shared).float().norm(dim=1)  # [T], ||g_i||
        weighted_norms = self.weight * norms  # [T], G_i: depends on w only
        ratios = detached / self.initial_losses
        target = (weighted_norms.mean() * (ratios / ratios.mean()) ** self.asymmetry).detach()
        objective = (weighted_norms - target).abs().sum()
        # Only its gradient is wanted: the returned value (logged as train/loss) stays the weighted sum.
        return stacked @ self.weight.detach().to(stacked.dtype) + objective - objective.detach()

    def normalized(self) -> Tensor:
        """``[T]``: ``w`` rescaled to sum to T. The floor keeps a weight that Adam pushed below zero
        from flipping its task's gradient."""
        weight = self.weight.detach().clamp(min=1e-3)
        return weight * len(self.tasks) / weight.sum()

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.normalized().tolist()))
