"""The two sides of top-K scoring: a users table and an items table, keyed, each with its share of
the model's features, turned into tensors with the checkpoint's fitted preprocessing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fusionrec.data.keyed import Side
from fusionrec.data.reading import read_table, require_columns
from fusionrec.errors import DataError


def assign_fields(preprocessing: dict, users: Side, items: Side, user_option: str, item_option: str) -> None:
    """Every model feature comes from exactly one side: the table that has it as a column."""
    for name in preprocessing["features"]:
        in_users, in_items = name in users.frame.columns, name in items.frame.columns
        if in_users and in_items:
            raise DataError(f"feature '{name}' is a column of both {user_option} ({users.frame.attrs['source']}) "
                            f"and {item_option} ({items.frame.attrs['source']}); keep it in one of them")
        if not in_users and not in_items:
            raise DataError(f"feature '{name}' of the model is a column of neither {user_option} "
                            f"({users.frame.attrs['source']}) nor {item_option} ({items.frame.attrs['source']})")
        (users if in_users else items).fields.append(name)


def pairs_by_row(path: str, user_key: str, item_key: str, users: pd.Index, items: pd.Index, option: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(user rows [P], item rows [P])`` of the (user, item) pairs in a table (e.g. a history to
    exclude, or test interactions), as row numbers into ``users`` and ``items``; pairs whose user
    or item is not among them are dropped, repeated pairs kept once."""
    frame = read_table(path, option)
    require_columns(frame, {user_key: f"{option} user key", item_key: f"{option} item key"})
    user_rows = users.get_indexer(frame[user_key].astype("string").to_numpy(dtype=object))
    item_rows = items.get_indexer(frame[item_key].astype("string").to_numpy(dtype=object))
    known = (user_rows >= 0) & (item_rows >= 0)
    codes = np.unique(user_rows[known].astype(np.int64) * len(items) + item_rows[known])
    return codes // len(items), codes % len(items)
