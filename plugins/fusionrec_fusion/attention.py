"""Self-attention over one token per field, absent content fields masked out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import Dropout, Fusion, PositiveInt
from fusionrec.errors import ConfigError


def fields_in_use(fields: list[str], present: dict[str, Tensor] | None, rows: Tensor) -> Tensor:
    """``Bool[B, F]`` (B = ``len(rows)``): True where a row uses a field. Fields not in ``present``
    are always used; a row with no field present uses them all (their learned missing vectors), so
    that no row is left with nothing to attend to or weigh (a softmax over nothing is NaN)."""
    always = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    keep = torch.stack([(present or {}).get(name, always) for name in fields], dim=1)
    return keep | ~keep.any(dim=1, keepdim=True)


class AttentionFusion(Fusion):
    """``{field: [B, D_f]} -> [B, dim]``: each field becomes a token (its own Linear to ``dim`` plus
    a learned field embedding), a ``layers``-deep transformer encoder runs over the ``[B, F, dim]``
    tokens with absent content fields masked as keys, and the output is the mean of the present
    tokens."""

    def __init__(self, input_dims: dict[str, int], dim: PositiveInt = 32, heads: PositiveInt = 2,
                 layers: PositiveInt = 1, dropout: Dropout = 0.0):
        super().__init__(input_dims)
        if dim % heads:
            raise ConfigError(f"model.fusion.dim: {dim} is not divisible by heads ({heads})")
        self.projections = nn.ModuleDict({name: nn.Linear(width, dim) for name, width in input_dims.items()})
        # Tells the encoder which field a token is: attention itself is order-blind.
        self.field_embeddings = nn.Parameter(torch.empty(len(input_dims), dim).normal_(std=0.02))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True)
        # A nested tensor saves nothing on a handful of tokens; the masked mean drops absent ones.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.output_dim = dim

    def forward(self, encoded: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        fields = list(self.input_dims)
        tokens = torch.stack([self.projections[name](encoded[name]) for name in fields], dim=1)  # [B, F, dim]
        keep = fields_in_use(fields, present, tokens)  # [B, F]
        tokens = self.encoder(tokens + self.field_embeddings, src_key_padding_mask=~keep)
        weights = keep.unsqueeze(2).to(tokens.dtype)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1)
