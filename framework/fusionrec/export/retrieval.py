"""A retrieval bundle's catalogue: the item tower's vector of every item of an items table, with its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fusionrec.errors import DataError
from fusionrec.features.base import FeatureValueError
from fusionrec.features.values import id_token
from fusionrec.data.keyed import read_side
from fusionrec.recommend.towers import TowerSearch, tower_side
from fusionrec.training.module import MultiTaskModule

CHUNK_ROWS = 4096  # items per item-tower run: one chunk's activations bound the memory beyond the table's


def catalogue_vectors(module: MultiTaskModule, path: str | Path, item_key: str, chunk_rows: int = CHUNK_ROWS
                      ) -> tuple[list[Any], np.ndarray]:
    """``(keys [N], float32 [N, D])``: the items of the table ``path`` (``--items``: ``item_key`` and the item
    tower's fields as columns, one row per item, content fields as in training) by the checkpoint's item
    tower, its content encoders included, ``chunk_rows`` at a time.
    Keys are kept as the table holds them (numbers stay numbers) and must be distinct ids."""
    items = read_side(str(path), item_key, "--items")  # an empty table or a repeated key is refused there
    keys = items.frame[item_key].tolist()
    for row, key in enumerate(keys):
        try:
            token = id_token(key, row)
        except FeatureValueError as error:
            raise DataError(f"--items: {path}, column '{item_key}': row {row}: {error.message}") from None
        if token is None:
            raise DataError(f"--items: {path}, column '{item_key}': row {row} has no key; every item needs one")
    tower_side(module, items, "item", "--items")
    module.attach_content_encoders({"items": items.table})  # its media columns batch nothing before
    vectors = TowerSearch(module, max_rows=chunk_rows).vectors(items, np.arange(len(keys)), "items")
    return keys, vectors.numpy()
