"""Gated fusion: a per-row softmax over fields weighs their projections."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import Fusion, PositiveInt
from fusionrec_fusion.attention import fields_in_use


class GatedFusion(Fusion):
    """``{field: [B, D_f]} -> [B, dim]``: ``sum_f w_f * Linear_f(x_f)``, where ``w = softmax(gate(
    concat_f x_f))`` over the F fields, ``[B, F]``, with absent content fields at weight 0.
    ``last_weights``: ``{field: mean weight}`` over the last batch, to see which fields the model
    relies on."""

    def __init__(self, input_dims: dict[str, int], dim: PositiveInt = 32):
        super().__init__(input_dims)
        self.projections = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in input_dims.items()})
        self.gate = nn.Linear(sum(input_dims.values()), len(input_dims))
        self.output_dim = dim
        self.mean_weights: Tensor | None = None  # [F], detached; read through last_weights

    def forward(self, encoded: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        fields = list(self.input_dims)
        keep = fields_in_use(fields, present, encoded[fields[0]])  # [B, F]
        # Zeroed in the gate's input, an absent field's missing vector cannot steer the other weights.
        gate_input = torch.cat([encoded[name] * keep[:, i:i + 1] for i, name in enumerate(fields)], dim=1)
        weights = self.gate(gate_input).masked_fill(~keep, float("-inf")).softmax(dim=1)  # [B, F]
        self.mean_weights = weights.detach().mean(dim=0)
        projected = torch.stack([self.projections[name](encoded[name]) for name in fields], dim=1)  # [B, F, dim]
        return (weights.unsqueeze(2) * projected).sum(dim=1)

    @property
    def last_weights(self) -> dict[str, float]:
        if self.mean_weights is None:
            return {}
        return dict(zip(self.input_dims, self.mean_weights.tolist()))
