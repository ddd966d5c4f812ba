"""Concatenation of every field's encoding."""

from __future__ import annotations

import torch
from torch import Tensor

from fusionrec.components import Fusion


class ConcatFusion(Fusion):
    """``{field: [B, D_f]} -> [B, sum(D_f)]`` in the order fields were declared."""

    def __init__(self, input_dims: dict[str, int]):
        super().__init__(input_dims)
        self.output_dim = sum(input_dims.values())

    def forward(self, encoded: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        # The missing vector of an absent item already stands in its place: no mask needed.
        return torch.cat([encoded[name] for name in self.input_dims], dim=1)
