"""What graph encoders read from the training split besides its edges: each item id's content vector."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fusionrec.data.batches import TensorTable
from fusionrec.errors import ConfigError


def item_content(table: TensorTable, item: str, fields: list[str], cardinality: int, key: str
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``({field: [I, D_f]}, {field: Bool[I]})``: each ``item`` id's vector of each content field, from its
    first row of ``table``: a vector feature's values, or a frozen content encoder's cached features."""
    ids = table.features[item]
    first = torch.from_numpy(np.unique(ids.numpy(), return_index=True)[1])
    vectors, present = {}, {}
    for field in fields:
        values = table.features.get(field)
        if values is not None and values.is_floating_point() and values.dim() == 2:  # a vector per row
            rows, known = values, torch.ones(len(ids), dtype=torch.bool)
        elif field in table.media and table.media[field].features is not None:
            column = table.media[field]
            codes = column.codes.clamp(min=0)
            rows = column.features[codes] if len(column.features) else torch.zeros(len(ids), 1)
            known = (column.codes >= 0) & (column.feature_present[codes] if len(column.features) else False)
        else:
            raise ConfigError(f"{key}.content: '{field}' is not a vector feature or a content field read by a "
                              f"frozen encoder (mode: frozen), whose item vectors the item graph is built from")
        vectors[field] = torch.zeros(cardinality, rows.shape[1]).index_copy_(0, ids[first], rows[first].float())
        present[field] = torch.zeros(cardinality, dtype=torch.bool).index_copy_(0, ids[first], known[first])
    return vectors, present
