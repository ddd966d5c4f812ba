"""Columnar batches: a split is a set of tensors, and a batch is a slice of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler


@dataclass
class Batch:
    """``features[field]``: ``[B, ...]`` per field; ``labels[task]``: ``[B, ...]``; ``index``: ``[B]``
    row numbers in the split. Lightning moves dataclasses to the device field by field."""

    features: dict[str, Tensor]
    labels: dict[str, Tensor]
    index: Tensor

    def __len__(self) -> int:
        return len(self.index)


class TensorTable(Dataset):
    """A whole split as tensors. Indexed by a list of rows, it returns one ``Batch``: the loader
    hands it the index lists of a ``BatchSampler``, so no per-row Python runs per batch."""

    def __init__(self, features: dict[str, Tensor], labels: dict[str, Tensor], num_rows: int):
        self.features, self.labels, self.num_rows = features, labels, num_rows

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, rows: list[int]) -> Batch:
        index = torch.as_tensor(rows, dtype=torch.long)
        return Batch({k: v[index] for k, v in self.features.items()},
                     {k: v[index] for k, v in self.labels.items()}, index)


def batch_loader(table: TensorTable, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader:
    order = RandomSampler(range(len(table))) if shuffle else SequentialSampler(range(len(table)))
    return DataLoader(table, batch_size=None, sampler=BatchSampler(order, batch_size, drop_last=False),
                      num_workers=num_workers, persistent_workers=num_workers > 0)
