"""Columnar batches: a split is a set of tensors, and a batch is a gather of rows from them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from fusionrec.data.media import MediaBatch, MediaColumn

if TYPE_CHECKING:
    from fusionrec.data.history import HistoryColumn


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
    no per-row Python; media columns add their batch's distinct items (see :mod:`fusionrec.data.media`).

    ``groups`` (``[N]`` or None): the group of each row, rows of a group next to each other
    (see :class:`GroupedBatchIndices`); gathered into ``Batch.groups``.
    ``lazy``: columns too large to hold whole, each gathering a batch's tensor with ``batch(index)``
    (histories built from the log, :class:`fusionrec.data.history.HistoryColumn`).
    """

    def __init__(self, features: dict[str, Tensor], labels: dict[str, Tensor], num_rows: int,
                 media: dict[str, MediaColumn] | None = None, groups: Tensor | None = None,
                 lazy: dict[str, HistoryColumn] | None = None):
        self.features, self.labels, self.num_rows = features, labels, num_rows
        self.media = media or {}
        self.groups = groups
        self.lazy = lazy or {}

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, rows: Tensor | Sequence[int]) -> Batch:
        index = torch.as_tensor(rows, dtype=torch.long)
        # index_select, not v[index]: advanced indexing is several times slower on CPU for the
        # same gather, and far slower again when other processes compete for the cores.
        features: dict[str, Tensor | MediaBatch] = {k: v.index_select(0, index) for k, v in self.features.items()}
        features.update({k: column.batch(index) for k, column in self.media.items()})
        features.update({k: column.batch(index) for k, column in self.lazy.items()})
        groups = None if self.groups is None else self.groups.index_select(0, index)
        return Batch(features, {k: v.index_select(0, index) for k, v in self.labels.items()}, index, groups)


class EpochShuffle(Sampler[Tensor]):
    """What the batch samplers share: the epoch's permutation. It draws from torch's global generator,
    as ``RandomSampler`` does (``seed_everything`` makes it reproducible), or, with ``seed`` set, from a
    generator seeded with ``seed + epoch`` (Lightning calls ``set_epoch``): then every process of a
    distributed run draws the same permutation, and a resumed run the one it would have drawn."""

    shuffle: bool
    seed: int | None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, count: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(count)
        if self.seed is None:
            return torch.randperm(count)
        return torch.randperm(count, generator=torch.Generator().manual_seed(self.seed + getattr(self, "epoch", 0)))


class BatchIndices(EpochShuffle):
    """The row numbers of every batch of an epoch, each a ``LongTensor``: slices of one
    permutation (shuffled) or of ``arange`` (in order), so no Python int is made per row."""

    def __init__(self, num_rows: int, batch_size: int, shuffle: bool, seed: int | None = None):
        self.num_rows, self.batch_size, self.shuffle, self.seed = num_rows, batch_size, shuffle, seed

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        order = self.permutation(self.num_rows)
        for start in range(0, self.num_rows, self.batch_size):
            # A copy, so a kept batch (e.g. a prediction's index) doesn't pin the whole permutation.
            yield order[start:start + self.batch_size].clone()


class GroupedBatchIndices(EpochShuffle):
    """Like :class:`BatchIndices`, but whole groups: each epoch shuffles the order of the groups
    (not of the rows) and packs consecutive groups into batches of about ``batch_size`` rows (a
    group starts in the batch its first row falls into, so a batch can run over by one group).

    ``sizes``: ``[G]`` rows per group, the groups' rows contiguous and in group order in the table.
    ``len()`` is ``ceil(rows / batch_size)``, the most batches an epoch can have: a group longer than
    a batch leaves the next batch out, so an epoch can have fewer (a loader stops at either).
    """

    def __init__(self, sizes: Tensor, batch_size: int, shuffle: bool, seed: int | None = None):
        self.sizes, self.batch_size, self.shuffle, self.seed = sizes, batch_size, shuffle, seed
        self.starts = torch.cumsum(sizes, 0) - sizes

    def _packing(self, order: Tensor) -> tuple[Tensor, Tensor]:
        """The table rows in the order of ``order``'s groups, and the number of rows of each batch."""
        sizes = self.sizes[order]
        offsets = torch.cumsum(sizes, 0) - sizes  # where each group starts in the epoch's row order
        rows = torch.repeat_interleave(self.starts[order] - offsets, sizes) + torch.arange(int(sizes.sum()))
        batch_of_group = torch.div(offsets, self.batch_size, rounding_mode="floor")
        counts = torch.bincount(batch_of_group, weights=sizes.double()).long()
        return rows, counts[counts > 0]

    def __len__(self) -> int:
        return -(-int(self.sizes.sum()) // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        rows, counts = self._packing(self.permutation(len(self.sizes)))
        for batch in torch.split(rows, counts.tolist()):
            yield batch.clone()


class DistributedBatches(DistributedSampler):
    """The batches of ``batches`` (a :class:`BatchIndices` or :class:`GroupedBatchIndices` with a
    ``seed``, so that every process draws the same permutation) split between the processes of a
    distributed run: process ``rank`` takes batches rank, rank + W, ...

    Training (``pad``) repeats the epoch's first batches so that every process runs the same number of
    steps, which DDP's gradient all-reduce needs; evaluation never pads, so each row is counted once
    (processes may then run one batch more or less: metrics synchronise at the epoch's end).

    A ``DistributedSampler`` so that Lightning does not wrap it in another one.
    """

    def __init__(self, batches: BatchIndices | GroupedBatchIndices, num_replicas: int, rank: int, pad: bool):
        if batches.shuffle and batches.seed is None:
            raise ValueError("distributed shuffling needs a seed shared by every process")
        super().__init__(range(len(batches)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.batches, self.pad = batches, pad

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        total = len(self.batches)
        if self.pad:
            return -(-total // self.num_replicas)
        return len(range(self.rank, total, self.num_replicas))

    def __iter__(self) -> Iterator[Tensor]:
        epoch = list(self.batches)
        if self.pad and len(epoch) % self.num_replicas:
            epoch += epoch[:self.num_replicas - len(epoch) % self.num_replicas]
        return iter(epoch[self.rank::self.num_replicas])


def group_sizes(groups: Tensor) -> Tensor:
    """``[N]`` group ids, rows of a group contiguous -> ``[G]`` rows per group."""
    return torch.unique_consecutive(groups, return_counts=True)[1]


def batch_loader(table: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int | None = None,
                 processes: tuple[int, int] | None = None) -> DataLoader:
    """Batches of ``table`` (gathered whole by its ``__getitem__``): :class:`GroupedBatchIndices` for a
    table with groups, :class:`BatchIndices` otherwise, shuffled with ``seed`` (see
    :class:`EpochShuffle`). ``processes``: ``(world_size, rank)`` of a distributed run, whose
    processes share the batches out (:class:`DistributedBatches`)."""
    distributed = processes is not None and processes[0] > 1
    if distributed and not shuffle:
        # Every process must have a batch to evaluate, however small the split.
        batch_size = max(1, min(batch_size, -(-len(table) // processes[0])))
    groups = getattr(table, "groups", None)
    sampler = (BatchIndices(len(table), batch_size, shuffle, seed) if groups is None
               else GroupedBatchIndices(group_sizes(groups), batch_size, shuffle, seed))
    if distributed:
        sampler = DistributedBatches(sampler, *processes, pad=shuffle)
    return DataLoader(table, batch_size=None, sampler=sampler,
                      num_workers=num_workers, persistent_workers=num_workers > 0)
