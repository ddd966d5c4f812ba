"""Columnar batches: a split is a set of tensors, and a batch is a gather of rows from them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fusionrec.data.media import MediaBatch, MediaColumn


@dataclass
class Batch:
    """``features[field]``: ``[B, ...]`` per field (a :class:`MediaBatch` for media fields);
    ``labels[task]``: ``[B, ...]``; ``index``: ``[B]`` row numbers in the split.

    ``groups``: ``[B]`` the group (request, session, a positive with its sampled negatives) of each
    row, numbered across the split, rows of one group next to each other; None without groups.
    ``label_rows[task]``: ``[B]`` bool, the rows that carry a label for the task (e.g. not a
    sampled negative); a task missing from it is labelled on every row.
    """

    features: dict[str, Tensor | MediaBatch]
    labels: dict[str, Tensor]
    index: Tensor
    groups: Tensor | None = None
    label_rows: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.features.items()},
                     {k: v.to(device) for k, v in self.labels.items()}, self.index.to(device),
                     None if self.groups is None else self.groups.to(device),
                     {k: v.to(device) for k, v in self.label_rows.items()})


class TensorTable(Dataset):
    """A whole split as tensors. Indexed by the row numbers of a batch (a ``LongTensor`` from
    :class:`BatchIndices`, or a list), it returns one ``Batch``: one ``index_select`` per column,
    no per-row Python; media columns add their batch's distinct items (see :mod:`fusionrec.data.media`)."""

    def __init__(self, features: dict[str, Tensor], labels: dict[str, Tensor], num_rows: int,
                 media: dict[str, MediaColumn] | None = None):
        self.features, self.labels, self.num_rows = features, labels, num_rows
        self.media = media or {}

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, rows: Tensor | Sequence[int]) -> Batch:
        index = torch.as_tensor(rows, dtype=torch.long)
        # index_select, not v[index]: advanced indexing is several times slower on CPU for the
        # same gather, and far slower again when other processes compete for the cores.
        features: dict[str, Tensor | MediaBatch] = {k: v.index_select(0, index) for k, v in self.features.items()}
        features.update({k: column.batch(index) for k, column in self.media.items()})
        return Batch(features, {k: v.index_select(0, index) for k, v in self.labels.items()}, index)


class BatchIndices(Sampler[Tensor]):
    """The row numbers of every batch of an epoch, each a ``LongTensor``: slices of one
    ``randperm`` (shuffled) or of ``arange`` (in order), so no Python int is made per row.

    The permutation draws from torch's global generator, as ``RandomSampler`` does, so
    ``seed_everything`` makes the order reproducible.
    """

    def __init__(self, num_rows: int, batch_size: int, shuffle: bool):
        self.num_rows, self.batch_size, self.shuffle = num_rows, batch_size, shuffle

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        order = torch.randperm(self.num_rows) if self.shuffle else torch.arange(self.num_rows)
        for start in range(0, self.num_rows, self.batch_size):
            # A copy, so a kept batch (e.g. a prediction's index) doesn't pin the whole permutation.
            yield order[start:start + self.batch_size].clone()


def batch_loader(table: TensorTable, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader:
    return DataLoader(table, batch_size=None, sampler=BatchIndices(len(table), batch_size, shuffle),
                      num_workers=num_workers, persistent_workers=num_workers > 0)
