"""Content caching: what the batches of a media field carry, a frozen encoder's cached features or
the inputs its ``prepare`` makes from each item."""

from __future__ import annotations

from typing import Any

import torch

from fusionrec.data.feature_cache import FeatureCache
from fusionrec.data.synthetic import cache_dir
from fusionrec.models.content import ContentField


def attach_content_encoders(fields: dict[str, ContentField], tables: dict[str, Any]) -> None:
    """Give the media columns of every table in ``tables`` (``{split: TensorTable}``) what their
    batches need for each of ``fields``: a frozen encoder's features, computed once per distinct
    item through the on-disk cache, or the encoder's ``prepare`` (run by the DataLoader workers)."""
    if not fields:
        return
    cache = FeatureCache(cache_dir() / "features")
    for name, content in fields.items():
        # A table without the field (a retrieval tower's side, a field only a graph encoder reads) needs nothing.
        encoder, columns = content.encoder, [table.media[name] for table in tables.values() if name in table.media]
        if not columns:
            continue
        if encoder.trainable_backbone:
            for column in columns:
                column.prepare = encoder.prepare
            continue
        # One lookup over the items of every split, so an item shown in several is hashed once.
        items = list(dict.fromkeys(item for column in columns for item in column.contents))
        features, present = cache.features(encoder, items)
        row = {item: i for i, item in enumerate(items)}
        for column in columns:
            rows = torch.tensor([row[item] for item in column.contents], dtype=torch.long)
            column.features, column.feature_present = features[rows], present[rows]
