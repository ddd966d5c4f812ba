"""Fusion layers: the per-field encodings in, one representation ``[B, output_dim]`` out."""

from __future__ import annotations

from torch import Tensor, nn


class Fusion(nn.Module):
    """Base of every fusion plugin: ``(input_dims: {field: D_f}, **options)``, sets ``output_dim``."""

    output_dim: int

    def __init__(self, input_dims: dict[str, int]):
        super().__init__()
        self.input_dims = dict(input_dims)

    def forward(self, encoded: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError
