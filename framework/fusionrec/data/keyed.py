"""Keyed tables, one row per id (a users table, an item catalogue), with their share of the model's
features as tensors, encoded with the fitted preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from fusionrec.data.batches import TensorTable
from fusionrec.data.preprocessing import Preprocessor
from fusionrec.data.reading import read_table, require_columns
from fusionrec.errors import DataError
from fusionrec.plugins import get_registry


@dataclass
class Side:
    """One table: ``keys`` (its key column as strings, one per row, distinct), ``fields`` (the model
    features it carries) and ``table`` (those features as tensors, row i = ``keys[i]``)."""

    frame: pd.DataFrame
    keys: pd.Index
    fields: list[str]
    table: TensorTable | None = None


def read_side(path: str, key: str, option: str) -> Side:
    """Read a users or items table; its key column must exist and hold each id once."""
    frame = read_table(path, option)
    require_columns(frame, {key: f"{option} key"})
    keys = frame[key].astype("string")
    repeated = keys.duplicated()
    if repeated.any():
        raise DataError(f"{option}: {path}, column '{key}': id {keys[repeated].iloc[0]!r} appears more than once "
                        f"({int(repeated.sum())} repeated row(s)); each id must have one row")
    return Side(frame.reset_index(drop=True), pd.Index(keys.to_numpy(dtype=object)), [])


def transform_side(side: Side, preprocessing: dict) -> None:
    """The side's features as tensors, with the checkpoint's vocabularies and statistics. A history
    (a list per user) is encoded through the vocabulary of the id feature it shares, which the
    other side holds: every feature is rebuilt and linked, the side's own are applied."""
    preprocessor = Preprocessor({"features": preprocessing["features"], "tasks": {}})
    preprocessor.types = {name: preprocessor.types[name] for name in side.fields}
    side.table = preprocessor.transform(side.frame, get_registry(), with_labels=False)
