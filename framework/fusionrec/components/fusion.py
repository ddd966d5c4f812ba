"""Fusion layers: the per-field encodings in, one representation ``[B, output_dim]`` out."""

from __future__ import annotations

from torch import Tensor, nn


class Fusion(nn.Module):
    """Base of every fusion plugin: ``(input_dims: {field: D_f}, **options)``, sets ``output_dim``.

    ``forward(encoded, present)``: ``present`` maps each content (text/image/audio) field to
    ``Bool[B]``, False for rows whose item has no usable content (their encoding is then the field's
    learned missing vector); a fusion may mask those fields, or ignore the map."""

    output_dim: int

    def __init__(self, input_dims: dict[str, int]):
        super().__init__()
        self.input_dims = dict(input_dims)

    def forward(self, encoded: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        raise NotImplementedError
