"""History encoders: a ``sequence`` field (a user's earlier items, left-padded) in, ``[B, output_dim]`` out."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components.encoder import FieldEncoder
from fusionrec.components.options import PositiveInt
from fusionrec.features.base import PADDING, FieldInfo

# As the categorical encoder's tables: an id training never updates stays near the neutral point.
EMBEDDING_INIT_STD = 1e-4


class SequenceEncoder(FieldEncoder):
    """Base of every history encoder.

    Input ``history: Long[B, L, P]``: L elements, left-padded with 0 (PADDING) in every part, the most
    recent element at position L-1; part 0 is the element's id, parts 1.. its side ids (e.g. its
    category). Each part has a ``dim``-wide embedding table: its own, or the table of the categorical
    feature it shares (``field.extra["parts"][p]["shares"]``), which the model hands over with
    :meth:`share` before the first forward. An element's embedding is the sum of its parts' (``[B, L, dim]``).

    An element is padding when its part 0 is 0; padding never reaches the output (whatever its ids or
    the embedding of id 0), and an empty history encodes as the zero vector.

    ``reads_target`` (class attribute, or set in ``__init__`` when an option decides it): the encoder
    reads the candidate, and the model passes ``target: Long[B, P]``, the candidate's id in each part's
    shared vocabulary (part 0: the candidate item id), embedded with the same tables.

    ``encodes_positions``: the encoder implements :meth:`encode_positions`, every prefix's encoding at
    once, which next-item retrieval training needs (each element is the target of the prefix before it).
    """

    reads_target: bool = False
    encodes_positions: bool = False

    def __init__(self, field: FieldInfo, dim: PositiveInt):
        super().__init__(field, dim)
        self.embedding_dim = dim  # the tables' width; an encoder may output more (output_dim)
        self.parts = [dict(part) for part in field.extra["parts"]]
        self.length = field.width
        # Shared parts' tables arrive with share(); building a table here only to drop it would hold
        # a second copy of a large id vocabulary.
        self.tables = nn.ModuleDict()
        for index, part in enumerate(self.parts):
            if part.get("shares") is None:
                table = nn.Embedding(part["cardinality"], dim)
                nn.init.normal_(table.weight, std=EMBEDDING_INIT_STD)
                self.tables[str(index)] = table

    def share(self, part: int, table: nn.Embedding) -> None:
        """Use ``table`` (``[cardinality, dim]``, the shared feature's own module) for ``part``."""
        self.tables[str(part)] = table

    def embed(self, ids: Tensor) -> Tensor:
        """``Long[..., P] -> [..., dim]``: the sum of the parts' embeddings (padding not masked here)."""
        missing = [self.parts[index]["shares"] for index in range(len(self.parts)) if str(index) not in self.tables]
        if missing:
            raise RuntimeError(f"sequence field {self.field.name!r}: the table of {', '.join(missing)} was never "
                               f"handed over (SequenceEncoder.share)")
        total = self.tables["0"](ids[..., 0])
        for index in range(1, len(self.parts)):
            total = total + self.tables[str(index)](ids[..., index])
        return total

    def embed_history(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """``Long[B, L, P] -> ([B, L, dim] with padding zeroed, Bool[B, L] element present)``."""
        present = history[..., 0] != PADDING
        # where, not a product: a non-finite padding row must not leak through 0 * inf.
        embedded = torch.where(present.unsqueeze(-1), self.embed(history), 0.0)
        return embedded, present

    def forward(self, history: Tensor, target: Tensor | None = None) -> Tensor:
        """``history: Long[B, L, P]``, ``target: Long[B, P]`` (only when ``reads_target``) -> ``[B, dim]``."""
        raise NotImplementedError

    def encode_positions(self, history: Tensor) -> Tensor:
        """``Long[B, L, P] -> [B, L, output_dim]``: position l encodes the elements up to and including l
        only (a padded position: zeros); position L-1 is ``forward(history)``."""
        raise NotImplementedError
