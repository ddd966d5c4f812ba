"""What retrieval training needs besides the batches: the training split's catalogue of items and
who had which positive.

Items and users are identified by their raw key columns (``model.retrieval.item_key``/``user_key``),
not by a feature's vocabulary, in which rare ids may share the out-of-vocabulary id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from fusionrec.data.batches import TensorTable
from fusionrec.data.reading import require_columns
from fusionrec.errors import DataError


@dataclass
class RetrievalCatalogue:
    """Catalogue items ``0..I-1``: the distinct items of the training split. ``items``: the training
    split's table with its item-side fields only, ``first_rows``: ``[I]`` each item's first row in it
    (:meth:`features` gathers them); ``keys``: the items' keys; ``counts``: ``[I]`` training positives
    per item; ``item_rows``/``user_codes``: ``{split: [N]}`` each row's catalogue item (-1: not in the
    training split) and user number; ``positives``: the training positives as sorted codes
    ``user * I + item``."""

    items: TensorTable
    first_rows: Tensor
    keys: np.ndarray
    counts: Tensor
    item_rows: dict[str, Tensor]
    user_codes: dict[str, Tensor]
    positives: Tensor

    @classmethod
    def build(cls, splits: dict[str, pd.DataFrame], tables: dict[str, TensorTable], task: str, user_key: str,
              item_key: str, item_fields: list[str]) -> "RetrievalCatalogue":
        """From the labelled splits (frames and their tables, row for row); ``task``: the retrieval task,
        whose label 1 marks a positive."""
        labelled = [name for name in splits if name != "predict"]
        for name in labelled:
            require_columns(splits[name], {user_key: "model.retrieval.user_key", item_key: "model.retrieval.item_key"})
        train, train_table = splits["train"], tables["train"]
        item_keys = {name: splits[name][item_key].astype("string").to_numpy(dtype=object) for name in labelled}
        codes, keys = pd.factorize(item_keys["train"])
        if (codes < 0).any():
            raise DataError(f"model.retrieval.item_key: column '{item_key}' of {train.attrs.get('source')} has a "
                            f"missing value ({int((codes < 0).sum())} row(s)); every row needs its item")
        first_rows = torch.as_tensor(np.unique(codes, return_index=True)[1], dtype=torch.long)
        items = TensorTable({name: column for name, column in train_table.features.items() if name in item_fields},
                            {}, len(train_table),
                            {name: column for name, column in train_table.media.items() if name in item_fields},
                            lazy={name: column for name, column in train_table.lazy.items() if name in item_fields})
        catalogue = pd.Index(keys)
        item_rows = {name: torch.as_tensor(catalogue.get_indexer(item_keys[name]), dtype=torch.long)
                     for name in labelled}
        users, _ = pd.factorize(np.concatenate([splits[name][user_key].astype("string").to_numpy(dtype=object)
                                                for name in labelled]))
        ends = np.cumsum([len(splits[name]) for name in labelled])
        user_codes = {name: torch.as_tensor(part, dtype=torch.long)
                      for name, part in zip(labelled, np.split(users, ends[:-1]))}
        positive = train_table.labels[task] > 0.5
        counts = torch.bincount(item_rows["train"][positive], minlength=len(keys)).float()
        positives = torch.unique(user_codes["train"][positive] * len(keys) + item_rows["train"][positive])
        return cls(items, first_rows, np.asarray(keys, dtype=object), counts, item_rows, user_codes, positives)

    def __len__(self) -> int:
        return len(self.keys)

    def features(self, items: Tensor, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """The item-side fields of catalogue items ``items`` (``Long[N]``), as a batch holds them, on ``device``."""
        return self.items[self.first_rows.index_select(0, items.cpu())].to(device).features

    def to(self, device: torch.device | str) -> "RetrievalCatalogue":
        """The per-row and per-item tensors on ``device`` (the item fields stay where the tables are)."""
        return RetrievalCatalogue(self.items, self.first_rows, self.keys, self.counts.to(device),
                                  {name: rows.to(device) for name, rows in self.item_rows.items()},
                                  {name: codes.to(device) for name, codes in self.user_codes.items()},
                                  self.positives.to(device))
