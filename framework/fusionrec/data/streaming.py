"""Streaming data: Parquet shards (local paths, globs or any fsspec URL) read a piece at a time, so
a split never has to fit in memory (``data.streaming``; docs/streaming.md).

- :class:`ParquetShards`: a split's files and their row groups, read from the files' footers.
- :func:`fit_streaming`: the preprocessing fitted in one pass over the training shards (or over
  their first ``fit_rows`` rows), chunk by chunk with :class:`~fusionrec.data.preprocessing.IncrementalFit`.
- :class:`StreamingDataset`: an ``IterableDataset`` of whole :class:`~fusionrec.data.batches.Batch`
  objects, encoded by the fitted ``Preprocessor``.

Exactly once per epoch: an epoch's rows (row groups in an order drawn from ``seed + epoch`` when
shuffling, in file order otherwise) are cut into ``ranks x workers`` contiguous ranges whose sizes
differ by at most one row, and each (rank, DataLoader worker) reads only its own range. Every
process computes the same cut from the footers alone, so no process talks to another.

Equal steps: DDP needs every rank to run the same number of training steps (a rank that stops early
leaves the others waiting in the gradient all-reduce). The training ranges differ by at most one
row, and every worker cuts its range into the same number of batches,
``min(ceil(longest range / batch_size), shortest range)``, as equal in size as they can be: at most
``batch_size`` rows (with a batch size of 1, some batches have 2). So no row is dropped or repeated
to even out the ranks. Evaluation ranges are cut into full batches and one shorter one: ranks may
differ by a batch there, which Lightning allows.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import fsspec.core
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fusionrec.data.batches import Batch
from fusionrec.data.preprocessing import IncrementalFit, Preprocessor
from fusionrec.data.schema import FeatureSpec, TaskSpec
from fusionrec.errors import ConfigError, DataError
from fusionrec.plugins import Registry, get_registry

PARQUET_SUFFIXES = (".parquet", ".pq")
ROW_NUMBER = "__fusionrec_row__"  # carries each row's number in the split through the shuffle buffer

# Lightning warns that a sized IterableDataset may repeat rows across workers; this one splits its
# rows between workers itself, and its length is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


@dataclass(frozen=True)
class StreamingSpec:
    """``data.streaming``: each split's sources, the shuffle buffer, and the bound on the fit."""

    splits: dict[str, list[str]]  # split name -> paths, globs or URLs
    shuffle_buffer: int = 10_000
    fit_rows: int | None = None


STREAMING_OPTIONS = ("train", "val", "test", "shuffle_buffer", "fit_rows")


def parse_streaming(config: Mapping[str, Any], key: str = "data.streaming") -> StreamingSpec:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{key}: expected a mapping like {{train: 'data/train/*.parquet', val: ...}}, got {config!r}")
    unknown = sorted(set(config) - set(STREAMING_OPTIONS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(STREAMING_OPTIONS)}")
    if not config.get("train"):
        raise ConfigError(f"{key}.train: required: the training shards (a path, glob or URL, or a list of them)")
    splits = {}
    for name in ("train", "val", "test"):
        sources = config.get(name)
        if sources is None:
            continue
        sources = [sources] if isinstance(sources, str) else sources
        if not isinstance(sources, Sequence) or not sources or not all(isinstance(s, str) and s for s in sources):
            raise ConfigError(f"{key}.{name}: expected a path, glob or URL, or a list of them, "
                              f"got {config.get(name)!r}")
        splits[name] = list(sources)
    buffer, fit_rows = config.get("shuffle_buffer", 10_000), config.get("fit_rows")
    if not isinstance(buffer, int) or isinstance(buffer, bool) or buffer < 0:
        raise ConfigError(f"{key}.shuffle_buffer: expected a number of rows >= 0 (0: no shuffle buffer), "
                          f"got {buffer!r}")
    if fit_rows is not None and (not isinstance(fit_rows, int) or isinstance(fit_rows, bool) or fit_rows < 1):
        raise ConfigError(f"{key}.fit_rows: expected a positive number of rows, or null for a full pass, "
                          f"got {fit_rows!r}")
    return StreamingSpec(splits, buffer, fit_rows)


@dataclass(frozen=True)
class RowGroup:
    file: int  # position in ParquetShards.files
    index: int  # row group number inside the file
    rows: int
    first_row: int  # number of its first row in the split (files in order)
    file_row: int  # number of its first row in its file


class ParquetShards:
    """The Parquet files of one split, resolved from ``sources`` (paths, globs, directories or fsspec
    URLs such as ``s3://bucket/train/*.parquet``; each source's matches sorted by path), and their row
    groups. Only the footers are read here. ``key`` names the config key in messages."""

    def __init__(self, sources: Sequence[str], key: str):
        self.key = key
        self.files: list[tuple[fsspec.AbstractFileSystem, str]] = []
        for source in sources:
            self.files += _resolve(source, key)
        self.metadata = [self._footer(filesystem, path) for filesystem, path in self.files]
        self.row_groups: list[RowGroup] = []
        first_row = 0
        for file, metadata in enumerate(self.metadata):
            file_row = 0
            for index in range(metadata.num_row_groups):
                rows = metadata.row_group(index).num_rows
                if rows:
                    self.row_groups.append(RowGroup(file, index, rows, first_row, file_row))
                    first_row, file_row = first_row + rows, file_row + rows
        self.num_rows = first_row
        if not self.num_rows:
            raise DataError(f"{key}: the Parquet files ({', '.join(sources)}) have no rows")

    def _footer(self, filesystem: fsspec.AbstractFileSystem, path: str) -> pq.FileMetaData:
        try:
            with filesystem.open(path, "rb") as file:
                return pq.ParquetFile(file).metadata
        except (OSError, ValueError) as error:
            raise DataError(f"{self.key}: cannot read {_url(filesystem, path)} as Parquet: {error}") from None

    def require_columns(self, needed: Mapping[str, str]) -> None:
        """``needed``: column -> the config key that asks for it; every file must have them all."""
        for (filesystem, path), metadata in zip(self.files, self.metadata):
            columns = metadata.schema.to_arrow_schema().names
            for column, key in needed.items():
                if column not in columns:
                    raise DataError(f"{key}: no column '{column}' in {_url(filesystem, path)} ({self.key}); "
                                    f"columns: {', '.join(columns)}")

    def read(self, group: RowGroup, columns: list[str]) -> pa.Table:
        filesystem, path = self.files[group.file]
        try:
            with filesystem.open(path, "rb") as file:
                # The footer read at start, so a remote file costs one request for the row group alone.
                return pq.ParquetFile(file, metadata=self.metadata[group.file]).read_row_group(group.index, columns)
        except (OSError, ValueError) as error:
            raise DataError(f"{self.key}: cannot read row group {group.index} of {_url(filesystem, path)}: "
                            f"{error}") from None

    def describe(self) -> str:
        """Where a streamed batch's rows come from, for messages that give a row number."""
        if len(self.files) == 1:
            return _url(*self.files[0])
        return f"{self.key} ({len(self.files)} files; row numbers count across them in path order)"


def _url(filesystem: fsspec.AbstractFileSystem, path: str) -> str:
    """A local file as its path, any other with its protocol (``s3://...``)."""
    protocols = (filesystem.protocol,) if isinstance(filesystem.protocol, str) else filesystem.protocol
    return path if "file" in protocols else filesystem.unstrip_protocol(path)


def _resolve(source: str, key: str) -> list[tuple[fsspec.AbstractFileSystem, str]]:
    """A path, glob, directory (its Parquet files, recursively) or URL -> its files, sorted."""
    try:
        filesystem, path = fsspec.core.url_to_fs(source)
        if fsspec.core.has_magic(path):
            paths = filesystem.glob(path)
        elif filesystem.isdir(path):
            paths = [p for p in filesystem.find(path) if p.lower().endswith(PARQUET_SUFFIXES)]
        else:
            paths = [path] if filesystem.isfile(path) else []
    except (OSError, ValueError, ImportError) as error:
        raise DataError(f"{key}: cannot list {source}: {error}") from None
    if not paths:
        raise DataError(f"{key}: no Parquet file at {source}")
    return [(filesystem, p) for p in sorted(paths)]


def fit_streaming(shards: ParquetShards, features: dict[str, FeatureSpec], tasks: dict[str, TaskSpec],
                  registry: Registry, scenario: str | None = None, fit_rows: int | None = None,
                  catalogue: pd.DataFrame | None = None) -> Preprocessor:
    """The preprocessing of the training shards from one pass over them, a row group at a time; with
    ``fit_rows``, from their first ``fit_rows`` rows (files in path order): ids first seen after them
    take the out-of-vocabulary id, and numeric statistics are those of the sample. ``catalogue``: as
    :meth:`Preprocessor.fit`'s."""
    fit = IncrementalFit(features, tasks, registry, scenario)
    columns = list(dict.fromkeys([*features, *(task.label for task in tasks.values())]))
    remaining = shards.num_rows if fit_rows is None else fit_rows
    for group in shards.row_groups:
        if remaining <= 0:
            break
        table = shards.read(group, columns).slice(0, remaining)
        remaining -= table.num_rows
        frame = table.to_pandas()
        # Row numbers within the file, so that a message names a row the user can find.
        frame.index = pd.RangeIndex(group.file_row, group.file_row + len(frame))
        frame.attrs["source"] = _url(*shards.files[group.file])
        fit.update(frame)
    if catalogue is not None:
        fit.add_items(catalogue)
    return fit.result()


class StreamingDataset(IterableDataset):
    """One split's rows as whole batches, each row read by exactly one (rank, worker) per epoch.

    Args:
        shards: the split's files.
        preprocessor: the fitted preprocessing that encodes every batch.
        columns: the columns to read (features and labels).
        batch_size: rows per batch (at most; see the module docstring).
        training: shuffle (row groups and the buffer) and give every rank the same number of batches.
        shuffle_buffer: rows held to draw each training batch from at random (0: none).
        seed: with the epoch (:meth:`set_epoch`), seeds the shuffling; must be equal on every rank.
        rank, world_size: this process among the distributed ones.
        num_workers: the DataLoader's workers, for ``len()``.
    """

    def __init__(self, shards: ParquetShards, preprocessor: Preprocessor, columns: list[str], batch_size: int,
                 training: bool, shuffle_buffer: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0):
        self.shards, self.preprocessor, self.columns = shards, preprocessor, columns
        self.batch_size, self.training, self.shuffle_buffer = batch_size, training, shuffle_buffer
        self.seed, self.rank, self.world_size, self.num_workers = seed, rank, world_size, num_workers
        self.epoch = 0
        ranges = world_size * max(1, num_workers)
        if shards.num_rows < ranges:
            raise DataError(f"{shards.key}: {shards.num_rows} row(s) cannot give each of the {world_size} rank(s) x "
                            f"{max(1, num_workers)} DataLoader worker(s) a row")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # --- which rows, in which batches ---

    def _batch_sizes(self, ranges: int, position: int) -> list[int]:
        """Rows of each batch of range ``position`` out of ``ranges``."""
        total = self.shards.num_rows
        rows = (position + 1) * total // ranges - position * total // ranges
        if not self.training:
            full, rest = divmod(rows, self.batch_size)
            return [self.batch_size] * full + ([rest] if rest else [])
        longest, shortest = -(-total // ranges), total // ranges
        count = max(1, min(-(-longest // self.batch_size), shortest))
        return [rows // count + (batch < rows % count) for batch in range(count)]

    def __len__(self) -> int:
        """Batches this rank yields in an epoch, over all its workers."""
        workers = max(1, self.num_workers)
        ranges = self.world_size * workers
        return sum(len(self._batch_sizes(ranges, self.rank * workers + worker)) for worker in range(workers))

    def _pieces(self, begin: int, end: int) -> Iterator[pa.Table]:
        """Rows ``[begin, end)`` of the epoch's row order, a row group (or the part of one in range) at
        a time, with each row's number in the split in the column ``ROW_NUMBER``."""
        order = np.arange(len(self.shards.row_groups))
        if self.training:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        position = 0
        for number in order:
            group = self.shards.row_groups[number]
            start, stop = max(begin - position, 0), min(end - position, group.rows)
            position += group.rows
            if start < stop:
                table = self.shards.read(group, self.columns).slice(start, stop - start)
                rows = pa.array(np.arange(group.first_row + start, group.first_row + stop, dtype=np.int64))
                yield table.append_column(ROW_NUMBER, rows)
            if position >= end:
                return

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        ranges, position = self.world_size * workers, self.rank * workers + worker_id
        total = self.shards.num_rows
        pieces = self._pieces(position * total // ranges, (position + 1) * total // ranges)
        rng = np.random.default_rng([self.seed, self.epoch, position])
        buffered = self.shuffle_buffer if self.training else 0  # rows to hold and mix
        buffer: pa.Table | None = None
        registry = get_registry()  # this process's: a worker may have been started with spawn
        for size in self._batch_sizes(ranges, position):
            wanted = max(size, buffered)
            if buffer is None or buffer.num_rows < wanted:
                buffer = _refill(buffer, pieces, wanted)
                if buffered:
                    # Mix the rows held with those just read; batches are then taken from the front, which
                    # draws each at random from the buffer, with one copy per refill instead of per batch.
                    buffer = buffer.take(rng.permutation(buffer.num_rows))
            rows, buffer = buffer.slice(0, size), buffer.slice(size)
            yield self._encode(rows, registry)

    def _encode(self, rows: pa.Table, registry: Registry) -> Batch:
        frame = rows.to_pandas()
        numbers = frame.pop(ROW_NUMBER).to_numpy(copy=True)  # writable, for torch.from_numpy
        frame.index = numbers
        frame.attrs["source"] = self.shards.describe()
        table = self.preprocessor.transform(frame, registry)
        return Batch(table.features, table.labels, torch.from_numpy(numbers))


def _refill(buffer: pa.Table | None, pieces: Iterator[pa.Table], rows: int) -> pa.Table:
    """``buffer`` with pieces appended until it holds ``rows`` rows or the pieces run out."""
    held = [] if buffer is None else [buffer]
    count = sum(table.num_rows for table in held)
    for piece in pieces:
        held.append(piece)
        count += piece.num_rows
        if count >= rows:
            break
    # Shards written at different times may type a column differently (int32, int64): unify them.
    return pa.concat_tables(held, promote_options="permissive")


class StreamingLoader(DataLoader):
    """A DataLoader over a :class:`StreamingDataset` that gives the dataset the epoch before every
    pass: Lightning calls ``set_epoch`` on samplers only, and an iterable dataset has none. Workers
    are started afresh each pass so that they see the new epoch."""

    def __init__(self, dataset: StreamingDataset, num_workers: int, current_epoch: Callable[[], int]):
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.current_epoch = current_epoch

    def __iter__(self) -> Iterator[Batch]:
        self.dataset.set_epoch(self.current_epoch())
        return super().__iter__()
