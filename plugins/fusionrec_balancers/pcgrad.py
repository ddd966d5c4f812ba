"""PCGrad (Yu et al., NeurIPS 2020): project away the conflicting part of each task's gradient on
the shared trunk."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import LossBalancer


class ProjectingConflictingGradients(LossBalancer):
    """Gradient surgery on the trunk's shared parameters (``shared``); every other parameter (embeddings,
    fusion, heads) gets the plain gradient of ``sum_i alpha_i * L_i``.

    With ``g_i`` the gradient of ``alpha_i * L_i`` on ``shared``: for each task i, for each other
    task j in a random order, if ``g_i' . g_j < 0`` then ``g_i' -= (g_i' . g_j / ||g_j||^2) g_j``;
    the shared parameters then get ``sum_i g_i'``. One extra backward pass per task plus O(T^2 P)
    dot products. The returned loss has the value of the weighted sum. Under DDP each process
    projects its own gradients and DDP averages the results. ``task_weights()`` are the config's.
    """

    def forward(self, losses: dict[str, Tensor], shared: list[nn.Parameter]) -> Tensor:
        stacked = self.stacked(losses)  # [T]
        weighted = stacked * self.alpha.to(stacked.dtype)
        grads = self.task_gradients(weighted, shared).float()  # [T, P]
        squared_norms = grads.square().sum(1).clamp_min(torch.finfo(grads.dtype).tiny)  # [T]
        projected = grads.clone()
        for i in range(len(self.tasks)):
            for j in torch.randperm(len(self.tasks)).tolist():
                if j != i:
                    # clamp instead of `if dot < 0`: no host-device sync per pair.
                    dot = (projected[i] @ grads[j]).clamp(max=0)
                    projected[i] -= dot / squared_norms[j] * grads[j]
        return weighted.sum() + self.gradient_correction(shared, (projected - grads).sum(0))
