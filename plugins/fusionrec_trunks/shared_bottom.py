"""Shared-bottom (Caruana 1997): one MLP whose output every task reads."""

from __future__ import annotations

from torch import Tensor

from fusionrec.components import Dropout, PositiveInt, Trunk
from fusionrec.modules.feedforward import FeedForward


class SharedBottom(Trunk):
    """``[B, D] -> {task: [B, hidden[-1]]}``, the same tensor for every task."""

    def __init__(self, input_dim: int, tasks: list[str], hidden: list[PositiveInt] = (256, 128),
                 dropout: Dropout = 0.0):
        super().__init__(input_dim, tasks)
        self.bottom = FeedForward(input_dim, list(hidden), dropout)
        self.output_dims = {task: self.bottom.output_dim for task in self.tasks}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.bottom(x)
        return {task: shared for task in self.tasks}
