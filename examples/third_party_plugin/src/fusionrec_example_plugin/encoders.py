"""``bucketized_numeric``: a numeric field as the embedding of its bucket."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fusionrec.components import FieldEncoder, FieldInfo
from fusionrec.errors import ConfigError


class BucketizedNumericEncoder(FieldEncoder):
    """``Float[B, 2]`` (standardised value, missing flag) ``-> [B, dim]``.

    The standardised value falls into one of ``num_buckets`` equal-width buckets spanning
    ``range`` (values outside it go to the first or last bucket); each bucket has a learned
    embedding, and a missing value has one more of its own. Unlike the built-in linear
    ``numeric`` encoder this can learn any piecewise-constant, non-monotonic effect.

    Options: ``num_buckets`` (default 16), ``range`` in standard deviations (default ``[-3, 3]``).
    """

    def __init__(self, field: FieldInfo, dim: int, num_buckets: int = 16,
                 range: tuple[float, float] = (-3.0, 3.0)):  # noqa: A002 - the config's option name
        super().__init__(field, dim)
        key = f"model.encoders.{field.name}"
        if not isinstance(num_buckets, int) or isinstance(num_buckets, bool) or num_buckets < 1:
            raise ConfigError(f"{key}.num_buckets: expected an integer >= 1, got {num_buckets!r}")
        try:
            low, high = (float(bound) for bound in range)
        except (TypeError, ValueError):
            low = high = None
        if low is None or not low < high:
            raise ConfigError(f"{key}.range: expected [low, high] with low < high, got {range!r}")
        self.num_buckets = num_buckets
        # The num_buckets - 1 inner boundaries: [num_buckets - 1]; derived from options, not saved.
        edges = torch.linspace(low, high, num_buckets + 1)[1:-1]
        self.register_buffer("boundaries", edges, persistent=False)
        self.embedding = nn.Embedding(num_buckets + 1, dim)  # row num_buckets: missing value
        nn.init.normal_(self.embedding.weight, std=0.05)

    def bucket_ids(self, values: Tensor) -> Tensor:
        """``Float[B, 2] -> Long[B]`` in ``[0, num_buckets]``, ``num_buckets`` meaning missing."""
        buckets = torch.bucketize(values[:, 0].contiguous(), self.boundaries)
        return torch.where(values[:, 1] > 0.5, torch.full_like(buckets, self.num_buckets), buckets)

    def forward(self, values: Tensor) -> Tensor:
        return self.embedding(self.bucket_ids(values))
