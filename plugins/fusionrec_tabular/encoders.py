"""One encoder per tabular feature type; each maps its field to ``[B, dim]``."""

from __future__ import annotations

from torch import Tensor, nn

from fusionrec.components import FieldEncoder, FieldInfo

EMBEDDING_INIT_STD = 0.05  # small enough that rare ids start near the mean, large enough to train fast


class CategoricalEncoder(FieldEncoder):
    """An embedding table: ``Long[B] -> [B, dim]``."""

    def __init__(self, field: FieldInfo, dim: int):
        super().__init__(field, dim)
        self.embedding = nn.Embedding(field.cardinality, dim)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_INIT_STD)

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids)


class MultiCategoricalEncoder(FieldEncoder):
    """Mean of the embeddings of a row's ids, padding excluded: ``Long[B, L] -> [B, dim]``."""

    def __init__(self, field: FieldInfo, dim: int):
        super().__init__(field, dim)
        self.embedding = nn.EmbeddingBag(field.cardinality, dim, mode="mean", padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_INIT_STD)  # the padding row is never read

    def forward(self, ids: Tensor) -> Tensor:
        return self.embedding(ids)


class NumericEncoder(FieldEncoder):
    """A linear map of (standardised value, missing flag): ``Float[B, 2] -> [B, dim]``, so a
    missing value gets its own learned vector."""

    def __init__(self, field: FieldInfo, dim: int):
        super().__init__(field, dim)
        self.projection = nn.Linear(2, dim)

    def forward(self, values: Tensor) -> Tensor:
        return self.projection(values)


class VectorEncoder(FieldEncoder):
    """A linear projection of a precomputed vector: ``Float[B, width] -> [B, dim]``."""

    def __init__(self, field: FieldInfo, dim: int):
        super().__init__(field, dim)
        self.projection = nn.Linear(field.width, dim)

    def forward(self, vectors: Tensor) -> Tensor:
        return self.projection(vectors)
