"""Loss balancers: per-task losses in, the one loss to back-propagate out."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LossBalancer(nn.Module):
    """Base of every balancer plugin: ``(weights: {task: alpha_i}, **options)``.

    ``weights`` are the per-task ``weight`` values of the config. ``forward(losses, shared)`` gets
    ``{task: L_i}`` and the parameters the trunk shares (``Trunk.shared_parameters()``, for methods
    that compare the tasks' gradients there) and returns the loss to back-propagate;
    ``task_weights()`` reports the weights in force, for logging; ``on_train_epoch_end()`` is called
    after every training epoch.

    Learned task weights are ``nn.Parameter`` s of the balancer, trained by the model's optimiser in
    a group of their own: learning rate ``self.learning_rate`` (``None``: the model's) and no weight
    decay. State that must survive a resume lives in persistent buffers, so it is checkpointed.
    """

    learning_rate: float | None = None

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
        """The weights in force; the config's unless a method changes them."""
        return dict(zip(self.tasks, self.alpha.tolist()))

    def on_train_epoch_end(self) -> None:
        pass

    @staticmethod
    def task_gradients(losses: Tensor, shared: list[nn.Parameter]) -> Tensor:
        """``[T] -> [T, P]``: each loss's gradient on ``shared``, flattened (P = their total size).

        One extra backward pass per task through the heads and the trunk (never the embedding
        tables, which lie upstream of ``shared``); the graph is kept for the training step's own
        backward. A parameter a task does not reach gets zeros.
        """
        rows = []
        for loss in losses:
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True, materialize_grads=True)
            rows.append(torch.cat([grad.reshape(-1) for grad in grads]))
        return torch.stack(rows)

    @staticmethod
    def gradient_correction(shared: list[nn.Parameter], delta: Tensor) -> Tensor:
        """A scalar whose value is 0 and whose gradient on ``shared`` is ``delta`` (``[P]``, flattened
        like :meth:`task_gradients`). Added to the returned loss it turns the shared parameters'
        gradient ``g`` into ``g + delta`` under Lightning's ordinary backward; being linear in the loss,
        it is scaled with it by an fp16 GradScaler and averaged with it by DDP."""
        parts = delta.detach().split([p.numel() for p in shared])
        return sum(((p - p.detach()) * part.view_as(p).to(p.dtype)).sum() for p, part in zip(shared, parts))

