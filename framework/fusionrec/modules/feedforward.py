"""A plain feed-forward network (multi-layer perceptron), the block most components are built from."""

from __future__ import annotations

from torch import Tensor, nn


class FeedForward(nn.Sequential):
    """``[B, input_dim] -> [B, output_dim]`` through Linear-ReLU-Dropout per hidden width.

    With no widths it is the identity and ``output_dim == input_dim``.
    """

    def __init__(self, input_dim: int, widths: list[int], dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(input_dim, width), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            input_dim = width
        super().__init__(*layers)
        self.output_dim = input_dim

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)
