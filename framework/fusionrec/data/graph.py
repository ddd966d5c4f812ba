"""What graph encoders read from the data besides the training edges: each item id's content vector."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fusionrec.data.batches import TensorTable
from fusionrec.errors import ConfigError
from fusionrec.features.base import RESERVED


def item_content(tables: list[TensorTable], item: str, fields: dict[str, int], cardinality: int, key: str
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``({field: [I, D_f]}, {field: Bool[I]})``: each ``item`` id's vector of each content field, from
    its first row in the first of ``tables`` (the catalogue, then the training split) whose rows have
    it. ``fields``: ``{field: its vocabulary size}`` (0 where it has none). A field's vector is a
    vector feature's values, a frozen content encoder's cached features, or a multi_categorical
    feature's multi-hot (an item's genres). A table without the column gives its items no vector."""
    vectors, present = {}, {}
    for field, width in fields.items():
        for table in tables:
            if item not in table.features or not has_column(table, field):
                continue
            ids = table.features[item]
            first = torch.from_numpy(np.unique(ids.numpy(), return_index=True)[1])
            rows, known = row_vectors(table, field, width, key)
            if field not in vectors:
                vectors[field] = torch.zeros(cardinality, rows.shape[1])
                present[field] = torch.zeros(cardinality, dtype=torch.bool)
            # Ids the earlier tables gave a vector keep it.
            new = first[known[first] & ~present[field][ids[first]]]
            vectors[field][ids[new]] = rows[new].float()
            present[field][ids[new]] = True
        if field not in vectors:
            raise ConfigError(f"{key}.content: '{field}' is no column of the training split"
                              f"{' or data.catalogue' if len(tables) > 1 else ''}")
    return vectors, present


def has_column(table: TensorTable, field: str) -> bool:
    return field in table.features or field in table.media


def row_vectors(table: TensorTable, field: str, width: int, key: str) -> tuple[Tensor, Tensor]:
    """``([N, D] vectors, Bool[N] has one)``: each row's vector of ``field``."""
    values = table.features.get(field)
    if values is not None and values.is_floating_point() and values.dim() == 2:  # a vector per row
        return values, torch.ones(len(values), dtype=torch.bool)
    if values is not None and values.dim() == 2 and width:  # ids per row, 0-padded: their multi-hot
        hot = torch.zeros(len(values), width).scatter_(1, values, 1.0)
        hot[:, :RESERVED] = 0  # padding and out of vocabulary say nothing of the item
        return hot, hot.sum(1) > 0
    if field in table.media and table.media[field].features is not None:
        column = table.media[field]
        if not len(column.features):  # no row has content
            return torch.zeros(len(column.codes), 1), torch.zeros(len(column.codes), dtype=torch.bool)
        codes = column.codes.clamp(min=0)
        return column.features[codes], (column.codes >= 0) & column.feature_present[codes]
    raise ConfigError(f"{key}.content: '{field}' is not a vector feature, a multi_categorical feature or a content "
                      f"field read by a frozen encoder (mode: frozen), whose item vectors the item graph is built from")
