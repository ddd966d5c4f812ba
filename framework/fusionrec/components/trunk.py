"""Shared trunks: the fused representation in, one representation per task out."""

from __future__ import annotations

from torch import Tensor, nn


class Trunk(nn.Module):
    """Base of every trunk plugin: ``(input_dim, tasks: list[str], **options)``.

    Sets ``output_dims = {task: D_t}``; ``forward(x: [B, D]) -> {task: [B, D_t]}``.
    """

    output_dims: dict[str, int]

    def __init__(self, input_dim: int, tasks: list[str]):
        super().__init__()
        self.input_dim = input_dim
        self.tasks = list(tasks)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError
