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
    training split) and user number; ``positive_items``: the items of each user's training positives,
    user by user, user u's from ``positive_starts[u]`` to ``positive_starts[u + 1]``; ``sequence_ends``:
    ``Bool[N]`` the training rows next-item training reads (:func:`sequence_ends`), or None."""

    items: TensorTable
    first_rows: Tensor
    keys: np.ndarray
    counts: Tensor
    item_rows: dict[str, Tensor]
    user_codes: dict[str, Tensor]
    positive_items: Tensor
    positive_starts: Tensor
    sequence_ends: Tensor | None = None

    @classmethod
    def build(cls, splits: dict[str, pd.DataFrame], tables: dict[str, TensorTable], task: str, user_key: str,
              item_key: str, item_fields: list[str], sequences: tuple[str | None, int] | None = None
              ) -> "RetrievalCatalogue":
        """From the labelled splits (frames and their tables, row for row); ``task``: the retrieval task,
        whose label 1 marks a positive; ``sequences``: ``(time column or None, history length)`` for
        next-item training."""
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
        pairs = torch.unique(user_codes["train"][positive] * len(keys) + item_rows["train"][positive])  # sorted by user
        starts = torch.zeros(int(users.max(initial=-1)) + 2, dtype=torch.long)
        starts[1:] = torch.bincount(pairs // len(keys), minlength=len(starts) - 1).cumsum(0)
        ends = None if sequences is None else torch.as_tensor(
            sequence_ends(train, positive.numpy(), user_codes["train"].numpy(), *sequences))
        return cls(items, first_rows, np.asarray(keys, dtype=object), counts, item_rows, user_codes,
                   pairs % len(keys), starts, ends)

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
                                  self.positive_items.to(device), self.positive_starts.to(device),
                                  None if self.sequence_ends is None else self.sequence_ends.to(device))

    def other_positives(self, users: Tensor, targets: Tensor, candidates: Tensor) -> Tensor:
        """``Bool[R, C]``: candidate c (``candidates``: sorted items) is a training positive of example r's
        user (``users [R]``) other than its target (``targets [R]``)."""
        starts, ends = self.positive_starts[users], self.positive_starts[users + 1]
        counts = ends - starts  # [R]
        example = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)  # [P]
        first = torch.repeat_interleave(starts - (counts.cumsum(0) - counts), counts)
        items = self.positive_items[first + torch.arange(len(example), device=users.device)]  # [P]
        columns = torch.searchsorted(candidates, items).clamp(max=len(candidates) - 1)
        hit = (candidates[columns] == items) & (items != targets[example])
        mask = torch.zeros(len(users), len(candidates), dtype=torch.bool, device=users.device)
        mask[example[hit], columns[hit]] = True
        return mask


def sequence_ends(frame: pd.DataFrame, positive: np.ndarray, users: np.ndarray, time: str | None,
                  length: int) -> np.ndarray:
    """``Bool[N]``: each user's last positive row and every ``length``-th positive row before it, in
    ``time`` order (file order without one). A row's history holds the ``length`` events before it, so
    next-item training on these rows' every position sees each event about once per epoch, where
    every row would see it up to ``length`` times."""
    rows = np.flatnonzero(positive)
    order = pd.factorize(frame[time], sort=True)[0][rows] if time else np.arange(len(rows))
    ranked = pd.DataFrame({"user": users[rows], "order": order, "row": rows}).sort_values(["user", "order"],
                                                                                        kind="stable")
    from_end = ranked.groupby("user").cumcount(ascending=False).to_numpy()
    ends = np.zeros(len(frame), dtype=bool)
    ends[ranked["row"].to_numpy()[from_end % length == 0]] = True
    return ends
