"""Field encoders: one preprocessed field of a batch in, ``[B, output_dim]`` out."""

from __future__ import annotations

from torch import Tensor, nn

from fusionrec.components.options import PositiveInt
from fusionrec.features.base import FieldInfo  # numpy only: serving reads it too


class FieldEncoder(nn.Module):
    """Base of every encoder plugin.

    Subclasses take ``(field: FieldInfo, dim: int, **options)``, set ``self.output_dim`` and
    implement ``forward(values) -> Tensor[B, output_dim]``. The input per feature type:
    categorical ``Long[B]``, numeric ``Float[B, 2]`` (standardised value, missing flag),
    multi_categorical ``Long[B, L]`` (0 = padding), vector ``Float[B, width]``.
    """

    output_dim: int

    def __init__(self, field: FieldInfo, dim: PositiveInt):
        super().__init__()
        self.field = field
        self.output_dim = dim

    @classmethod
    def default_dim(cls, field: FieldInfo, embedding_dim: int) -> int:
        """The width used when the config gives the field no ``dim``: ``model.embedding_dim``,
        unless an encoder knows a better one for its field."""
        return embedding_dim

    def id_embedding(self) -> nn.Embedding | None:
        """The table mapping the field's ids to vectors, when the encoder has one: a sequence sharing
        the field's vocabulary embeds its elements with it (:class:`SequenceEncoder`)."""
        return None

    def forward(self, values: Tensor) -> Tensor:
        raise NotImplementedError
