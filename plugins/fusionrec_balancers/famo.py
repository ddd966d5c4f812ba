"""FAMO, Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023): O(1) per step, no
per-task gradients; task weights steered by how fast each task's log-loss falls."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import LossBalancer, NonNegativeFloat, PositiveFloat

EPSILON = 1e-8  # keeps log(L_i) finite for a loss that reaches 0 (losses are assumed >= 0)


class FastAdaptiveMultitaskOptimization(LossBalancer):
    """Learned logits ``xi`` (``[T]``, start 0), ``z = softmax(xi)``. The network trains on

        ``L = sum_i alpha_i z_i log(L_i) / c``,  ``c = sum_j alpha_j z_j / L_j / sum(alpha)``  (z, c detached),

    i.e. the gradient ``sum_i w_i grad L_i`` with effective weights ``w_i = alpha_i z_i / (c L_i)``,
    which sum to ``sum(alpha)`` (T with the default weights, as the fixed sum). ``xi`` trains on
    ``d_i = log L_i(previous step) - log L_i(this step)``, how much each log-loss fell across the
    last update: its gradient is ``J_softmax(xi)^T d + regularization * xi``, so a task whose loss
    falls slower gains weight. The paper re-evaluates the batch after the update to get ``d``; here
    ``d`` compares consecutive training batches (one step late, no extra forward pass), so it is
    noisier but costs nothing. The logits are checkpointed; after a resume the first step has no
    previous losses and leaves them as they are.
    ``learning_rate`` is ``xi``'s own Adam learning rate, ``regularization`` the paper's gamma.
    The returned loss is the log-loss objective above (it can be negative).
    """

    def __init__(self, weights: dict[str, float], learning_rate: PositiveFloat | None = 0.025,
                 regularization: NonNegativeFloat = 0.01):
        super().__init__(weights)
        self.learning_rate = learning_rate
        self.regularization = float(regularization)
        tasks = len(self.tasks)
        self.logits = nn.Parameter(torch.zeros(tasks))  # [T], xi
        # Not buffers: DDP overwrites buffers with process 0's before every forward, and each process
        # compares its own losses.
        self.previous_log_losses: Tensor | None = None  # [T]
        self.weight = self.alpha.clone()  # [T], the last effective weights, for logging

    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        stacked = self.stacked(losses).float()  # [T]
        log_losses = (stacked + EPSILON).log()
        current = log_losses.detach()
        # The first step has no change to learn from: d = 0 still puts xi in the graph, as DDP wants
        # every parameter used.
        previous = current if self.previous_log_losses is None else self.previous_log_losses
        fell = previous - current  # [T], d
        self.previous_log_losses = current
        z = torch.softmax(self.logits, 0)
        logits_objective = (z * fell).sum() + 0.5 * self.regularization * self.logits.square().sum()
        prior = self.alpha * z.detach()
        scale = (prior / current.exp()).sum() / self.alpha.sum()  # c
        self.weight = prior / (scale * current.exp())
        # Only the gradient of the logits' objective is wanted, not its value.
        return (prior * log_losses).sum() / scale + logits_objective - logits_objective.detach()

    def task_weights(self) -> dict[str, float]:
        return dict(zip(self.tasks, self.weight.tolist()))
