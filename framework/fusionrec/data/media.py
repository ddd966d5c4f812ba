"""Media fields (text, image and audio files): each row names an item's content, and a batch carries
every distinct item once.

A split's media column is a code per row into the list of its distinct contents (-1: none). A batch
gathers the codes of its rows, keeps the distinct ones and either runs the encoder's ``prepare``
(decoding, tokenising, transforms -- in the DataLoader worker that builds the batch, never in the
training step) or, for a frozen encoder, looks up the features computed once per item
(:mod:`fusionrec.data.feature_cache`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fusionrec.features.base import FeatureType


@dataclass
class MediaBatch:
    """The distinct items of a batch: ``inputs`` (``prepare``'s tensors, or ``{"features": [U, width]}``
    from the cache), ``present`` ``Bool[U]``, ``inverse`` ``Long[B]`` (row -> item) and ``problems``
    ``[(content, split row, reason)]`` for items that could not be read."""

    inputs: dict[str, Tensor]
    present: Tensor
    inverse: Tensor
    problems: list[tuple[str, int, str]] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "MediaBatch":
        return MediaBatch({k: v.to(device) for k, v in self.inputs.items()}, self.present.to(device),
                          self.inverse.to(device), self.problems)

    def present_rows(self) -> Tensor:
        """``Bool[B]``: whether each row's item has usable content."""
        return self.present.index_select(0, self.inverse)

    def missing_rows(self) -> Tensor:
        """How many of the batch's rows have no usable content."""
        return (~self.present_rows()).sum()


@dataclass
class MediaColumn:
    """One split's media field. ``prepare`` (the encoder's) or ``features`` + ``feature_present``
    (cached, frozen encoders) are attached by the model before the loaders run."""

    codes: Tensor
    contents: list[str]
    prepare: Callable[[list], dict[str, Any]] | None = None
    features: Tensor | None = None
    feature_present: Tensor | None = None

    def batch(self, index: Tensor) -> MediaBatch:
        codes = self.codes.index_select(0, index)
        unique, inverse = torch.unique(codes, return_inverse=True)
        known = unique >= 0
        if self.features is not None:
            if not len(self.features):  # no row of the split has content: nothing was encoded
                empty = self.features.new_zeros(len(unique), *self.features.shape[1:])
                return MediaBatch({"features": empty}, torch.zeros_like(known), inverse)
            rows = unique.clamp(min=0)
            present = known & self.feature_present.index_select(0, rows)
            return MediaBatch({"features": self.features.index_select(0, rows)}, present, inverse)
        if self.prepare is None:
            raise RuntimeError("media column used before the model attached its encoder")
        items = [self.contents[code] if code >= 0 else None for code in unique.tolist()]
        prepared = dict(self.prepare(items))
        reasons = dict(prepared.pop("problems", []))
        present = known & prepared["present"]
        problems = []
        for position, item in enumerate(items):
            if item is not None and item in reasons:  # no content at all is missing, not a problem
                row = int(index[(inverse == position).nonzero()[0, 0]])
                problems.append((item, row, reasons[item]))
        return MediaBatch(prepared, present, inverse, problems)


def media_column(values: pd.Series, kind: FeatureType) -> MediaColumn:
    """The column's items as its content type reads them (``kind.contents``), each distinct item once."""
    # The content rule runs once per distinct raw value (nulls are -1 already), not once per row; values
    # that read as one item (" a" and "a") are merged by the second factorize. An object column holding
    # other than strings goes row by row: factorize takes 7 and 7.0 as one key, the rule as two items.
    raw_codes, raw = pd.factorize(values, use_na_sentinel=True)
    raw = np.asarray(raw, dtype=object)
    if values.dtype == object and not all(type(value) is str for value in raw):
        raw_codes, raw = np.arange(len(values)), values.astype(object).where(values.notna(), None).to_numpy()
    item_codes, uniques = pd.factorize(pd.Series(kind.contents(raw), dtype=object), use_na_sentinel=True)
    codes = np.append(item_codes, -1).astype("int64")[raw_codes]
    return MediaColumn(torch.from_numpy(codes), [str(u) for u in uniques])
