"""Fitted preprocessing: vocabularies and numeric statistics learned on the training split.

The fitted state is plain data (lists, dicts, numbers), so it travels inside checkpoints and
export bundles. Every transform is columnar: whole columns go through pandas/numpy at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from fusionrec.components.encoder import FieldInfo
from fusionrec.data.batches import TensorTable
from fusionrec.data.hashing import hashed_ids
from fusionrec.data.media import MEDIA_TYPES, media_column
from fusionrec.data.schema import FeatureSpec, TaskSpec
from fusionrec.errors import DataError, describe_value
from fusionrec.plugins import Registry

PADDING, OUT_OF_VOCABULARY = 0, 1  # reserved ids of every vocabulary; tokens start at 2
RESERVED = 2


def _where(frame: pd.DataFrame, column: str) -> str:
    return f"{frame.attrs.get('source', 'data')}, column '{column}'"


def _tokens(values: pd.Series) -> pd.Series:
    """Ids as strings, so 7, 7.0 read from different files and '7' map to one token."""
    if pd.api.types.is_float_dtype(values) and values.dropna().mod(1).eq(0).all():
        values = values.astype("Int64")
    return values.astype("string")


def _split_multi(values: pd.Series, separator: str) -> pd.Series:
    """Each cell as a list of tokens: a separated string or an existing list/array."""
    sample = values.dropna()
    if len(sample) and not isinstance(sample.iloc[0], str):
        return values.map(lambda cell: [] if cell is None or (np.ndim(cell) == 0 and pd.isna(cell)) else list(cell))
    return values.fillna("").astype(str).str.split(separator).map(lambda parts: [p for p in parts if p])


def _vocabulary(counts: pd.Series, min_count: int, max_size: int | None) -> list[str]:
    """Tokens by descending count (ties by token), from ``{token: count}``."""
    counts = counts[counts >= min_count]
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ordered[:max_size]]


def _lookup(tokens: pd.Series | np.ndarray, vocabulary: pd.Index) -> np.ndarray:
    positions = vocabulary.get_indexer(pd.Series(tokens, dtype="string"))
    return np.where(positions < 0, OUT_OF_VOCABULARY, positions + RESERVED).astype(np.int64)


def _hashed(tokens: pd.Series, buckets: int) -> np.ndarray:
    """Ids by the hashing trick (:mod:`fusionrec.data.hashing`), each distinct token hashed once."""
    codes, distinct = pd.factorize(tokens)
    # A missing value's code, -1, picks the out-of-vocabulary id appended last.
    return np.append(hashed_ids(distinct.tolist(), buckets), OUT_OF_VOCABULARY)[codes]


def _add_counts(counts: list[pd.Series]) -> pd.Series:
    return counts[0] if len(counts) == 1 else pd.concat(counts).groupby(level=0, sort=False).sum()


def _numbers(values: pd.Series, where: str, na_values: list[str]) -> np.ndarray:
    if len(na_values):
        values = values.mask(values.astype("string").isin(na_values))
    numbers = pd.to_numeric(values, errors="coerce")
    wrong = numbers.isna() & values.notna()
    if wrong.any():
        position = int(np.flatnonzero(wrong.to_numpy())[0])
        raise DataError(f"{where}: numeric column holds a non-number, {describe_value(values, position)} "
                        f"({int(wrong.sum())} such row(s))")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    # "inf", or "1e400", which overflows float64: not a value, and missing would hide the row.
    infinite = np.isinf(numbers)
    if infinite.any():
        position = int(np.flatnonzero(infinite)[0])
        raise DataError(f"{where}: numeric column holds an infinite value or one beyond float64, "
                        f"{describe_value(values, position)} ({int(infinite.sum())} such row(s))")
    return numbers


class Preprocessor:
    """Turns a table into tensors with state fitted on the training split.

    ``state = {"features": {name: {...}}, "tasks": {name: {"head", "label", "parent", "labels"}}, "scenario": column}``
    (``scenario``: the categorical feature naming each row's scenario, or None).
    """

    def __init__(self, state: dict[str, Any]):
        self.state = state
        # Each vocabulary's lookup table, built once: streamed data is encoded a batch at a time, and
        # rebuilding a 50k-id table took 10 ms a batch.
        self.vocabularies = {name: pd.Index(entry["vocabulary"], dtype="string")
                             for name, entry in state["features"].items() if "vocabulary" in entry}

    # --- fitting ---

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: dict[str, FeatureSpec], tasks: dict[str, TaskSpec],
            registry: Registry, scenario: str | None = None) -> "Preprocessor":
        fit = IncrementalFit(features, tasks, registry, scenario)
        fit.update(frame)
        return fit.result()

    # --- applying ---

    def field_infos(self) -> dict[str, FieldInfo]:
        infos = {}
        for name, entry in self.state["features"].items():
            if "hash_buckets" in entry:
                infos[name] = FieldInfo(name, "categorical", cardinality=entry["hash_buckets"] + RESERVED)
            elif entry["type"] in ("categorical", "multi_categorical"):
                infos[name] = FieldInfo(name, entry["type"], cardinality=len(entry["vocabulary"]) + RESERVED,
                                        width=entry.get("max_length", 1))
            elif entry["type"] == "vector":
                infos[name] = FieldInfo(name, "vector", width=entry["width"])
            elif entry["type"] in MEDIA_TYPES:
                infos[name] = FieldInfo(name, entry["type"], extra={"strict": entry.get("strict", False)})
            else:
                infos[name] = FieldInfo(name, entry["type"], width=2)
        return infos

    def transform(self, frame: pd.DataFrame, registry: Registry, with_labels: bool = True) -> TensorTable:
        features = {name: self._transform_feature(frame[name], entry, _where(frame, name),
                                                  self.vocabularies.get(name))
                    for name, entry in self.state["features"].items() if entry["type"] not in MEDIA_TYPES}
        media = {name: media_column(frame[name], entry["type"], entry.get("root"))
                 for name, entry in self.state["features"].items() if entry["type"] in MEDIA_TYPES}
        labels = {}
        if with_labels:
            for name, task in self.state["tasks"].items():
                head = registry.get("heads", task["head"], f"model.tasks.{name}.head").factory
                labels[name] = head.encode_labels(frame[task["label"]], task["labels"],
                                                  _where(frame, task["label"]) + f" (task '{name}')")
            for name, task in self.state["tasks"].items():
                if task.get("parent") is not None:  # checkpoints from before conditional tasks lack the key
                    self._check_after_parent(frame, name, labels)
        return TensorTable(features, labels, len(frame), media)

    def _check_after_parent(self, frame: pd.DataFrame, task: str, labels: dict[str, torch.Tensor]) -> None:
        """A conditional task's event only happens after its parent's (no conversion without a
        click): its label must be 0 wherever the parent's is."""
        column, parent = self.state["tasks"][task]["label"], self.state["tasks"][task]["parent"]
        orphans = ((labels[task] != 0) & (labels[parent] == 0)).numpy()
        if orphans.any():
            parent_column = self.state["tasks"][parent]["label"]
            raise DataError(f"{_where(frame, column)} (task '{task}'): label "
                            f"{describe_value(frame[column], int(np.flatnonzero(orphans)[0]))} is positive where "
                            f"the parent task '{parent}' (column '{parent_column}') is 0, in {int(orphans.sum())} "
                            f"row(s); a conditional label counts the rows where both events happened")

    @staticmethod
    def _transform_feature(values: pd.Series, entry: dict[str, Any], where: str,
                           vocabulary: pd.Index | None) -> torch.Tensor:
        kind = entry["type"]
        if kind == "categorical" and "hash_buckets" in entry:
            return torch.from_numpy(_hashed(_tokens(values), entry["hash_buckets"]))
        if kind == "categorical":
            return torch.from_numpy(_lookup(_tokens(values), vocabulary))
        if kind == "multi_categorical":
            lists = _split_multi(values, entry["separator"])
            lengths = lists.map(len).to_numpy()
            flat = _lookup(_tokens(lists.explode().dropna()), vocabulary) if lengths.sum() else np.array([], np.int64)
            rows = np.repeat(np.arange(len(lists)), lengths)
            positions = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            keep = positions < entry["max_length"]
            padded = np.full((len(lists), entry["max_length"]), PADDING, dtype=np.int64)
            padded[rows[keep], positions[keep]] = flat[keep]
            return torch.from_numpy(padded)
        if kind == "numeric":
            numbers = _numbers(values, where, entry["na_values"])
            missing = np.isnan(numbers)
            with np.errstate(over="ignore"):
                standardised = np.where(missing, 0.0, (numbers - entry["mean"]) / entry["std"]).astype(np.float32)
            if np.isinf(standardised).any():
                position = int(np.flatnonzero(np.isinf(standardised))[0])
                raise DataError(f"{where}: {describe_value(values, position)} is too far from the training mean "
                                f"({entry['mean']:g}, standard deviation {entry['std']:g}) to standardise in float32")
            return torch.from_numpy(np.stack([standardised, missing.astype(np.float32)], axis=1))
        if kind == "vector":
            return torch.from_numpy(_stack_vectors(values, entry["width"], where))
        raise DataError(f"{where}: unknown feature type {kind!r}")


class IncrementalFit:
    """:meth:`Preprocessor.fit` one chunk of rows at a time, for data read in pieces
    (:mod:`fusionrec.data.streaming`); over a single chunk it is exactly ``Preprocessor.fit``.

    Id counts add up across chunks (memory: one count per distinct id; ``hash_buckets`` fields
    count nothing), numeric moments merge (Chan et al.'s pairwise update), and a vector's width
    comes from its first value. The task label columns are kept (one value per row and task),
    because each head fits its label state from a whole column (``fit_labels``).
    """

    # Chunks' id counts are added up every this many chunks: memory stays near one vocabulary
    # without an O(vocabulary) merge per chunk.
    MERGE_EVERY = 16

    def __init__(self, features: dict[str, FeatureSpec], tasks: dict[str, TaskSpec], registry: Registry,
                 scenario: str | None = None):
        self.features, self.tasks, self.registry, self.scenario = features, tasks, registry, scenario
        self.counts: dict[str, list[pd.Series]] = {}
        # count, mean / scale, (sum of squared deviations) / scale**2, and scale: a power of two, so
        # that values near float64's limit do not overflow the squares, while dividing by it is exact
        # and ordinary values get the very statistics np.std computes.
        self.moments: dict[str, tuple[int, float, float, float]] = {}
        self.widths: dict[str, int] = {}
        self.labels: dict[str, list[pd.Series]] = {}
        self.where: dict[str, str] = {}  # column -> where its first chunk came from, for messages

    def update(self, frame: pd.DataFrame) -> None:
        for name, spec in self.features.items():
            values, where = frame[name], _where(frame, name)
            self.where.setdefault(name, where)
            if spec.type == "categorical" and spec.options["hash_buckets"] is None:
                self._count(name, _tokens(values))
            elif spec.type == "multi_categorical":
                self._count(name, _tokens(_split_multi(values, spec.options["separator"]).explode()))
            elif spec.type == "numeric":
                numbers = _numbers(values, where, [str(v) for v in spec.options["na_values"]])
                self._add_moments(name, numbers[np.isfinite(numbers)])
            elif spec.type == "vector" and name not in self.widths and values.notna().any():
                self.widths[name] = int(np.shape(_first_present(values, where))[0])
        for column in dict.fromkeys(task.label for task in self.tasks.values()):
            self.where.setdefault(column, _where(frame, column))
            self.labels.setdefault(column, []).append(frame[column])

    def _count(self, name: str, tokens: pd.Series) -> None:
        counts = self.counts.setdefault(name, [])
        counts.append(tokens.dropna().value_counts())
        if len(counts) >= self.MERGE_EVERY:
            self.counts[name] = [_add_counts(counts)]

    def _add_moments(self, name: str, finite: np.ndarray) -> None:
        if not len(finite):
            return
        # The largest magnitude, from 1 up, is brought into [1, 2) (frexp's exponent less one, as
        # 2**1024 would overflow); smaller values are left as they are.
        scale = 2.0 ** max(int(np.frexp(np.max(np.abs(finite)))[1]) - 1, 0)
        finite = finite / scale
        # np.std's own arithmetic, so that one chunk gives exactly the in-memory statistics.
        count, mean = len(finite), float(finite.mean())
        squares = float(np.sum(np.square(finite - mean)))
        if name in self.moments:
            before, before_mean, before_squares, before_scale = self.moments[name]
            # Both in units of the larger scale.
            larger = max(scale, before_scale)
            mean, squares = mean * (scale / larger), squares * (scale / larger) ** 2
            before_mean *= before_scale / larger
            before_squares *= (before_scale / larger) ** 2
            scale = larger
            total = before + count
            delta = mean - before_mean
            mean = before_mean + delta * count / total
            squares = before_squares + squares + delta * delta * before * count / total
            count = total
        self.moments[name] = (count, mean, squares, scale)

    def result(self) -> "Preprocessor":
        fitted: dict[str, Any] = {}
        for name, spec in self.features.items():
            entry: dict[str, Any] = {"type": spec.type}
            if spec.type == "categorical" and spec.options["hash_buckets"] is not None:
                entry["hash_buckets"] = int(spec.options["hash_buckets"])
            elif spec.type in ("categorical", "multi_categorical"):
                counts = self.counts.get(name, [])
                counts = _add_counts(counts) if counts else pd.Series([], dtype="int64")
                entry["vocabulary"] = _vocabulary(counts, spec.options["min_count"], spec.options["max_size"])
                if spec.type == "multi_categorical":
                    entry["separator"] = spec.options["separator"]
                    entry["max_length"] = int(spec.options["max_length"])
            elif spec.type == "numeric":
                entry["na_values"] = [str(v) for v in spec.options["na_values"]]
                if name not in self.moments:
                    raise DataError(f"{self.where[name]}: numeric column has no values in the training split")
                count, mean, squares, scale = self.moments[name]
                std = float(np.sqrt(squares / count)) * scale
                entry.update(mean=mean * scale, std=std if std > 0 else 1.0)
            elif spec.type == "vector":
                if name not in self.widths:
                    raise DataError(f"{self.where[name]}: vector column has no values")
                entry["width"] = self.widths[name]
            elif spec.type in MEDIA_TYPES:
                entry.update(spec.options)  # nothing to fit: every item's content is read as it comes
            fitted[name] = entry
        labels = {}
        for name, task in self.tasks.items():
            head = self.registry.get("heads", task.head, f"model.tasks.{name}.head").factory
            parts = self.labels[task.label]
            column = parts[0] if len(parts) == 1 else pd.concat(parts)
            labels[name] = {"head": task.head, "label": task.label, "parent": task.parent,
                            "labels": head.fit_labels(column, self.where[task.label], task.options)}
        return Preprocessor({"features": fitted, "tasks": labels, "scenario": self.scenario})


def _first_present(values: pd.Series, where: str) -> Any:
    present = values.dropna()
    if not len(present):
        raise DataError(f"{where}: vector column has no values")
    return present.iloc[0]


def _stack_vectors(values: pd.Series, width: int, where: str) -> np.ndarray:
    """list<float> cells -> [N, width]; a missing cell becomes zeros, a wrong length is an error."""
    out = np.zeros((len(values), width), dtype=np.float32)
    present = values.notna().to_numpy()
    cells = values[present]
    lengths = cells.map(np.size).to_numpy()
    if (lengths != width).any():
        row = values.index[np.flatnonzero(present)[np.flatnonzero(lengths != width)[0]]]
        raise DataError(f"{where}: vector at row {row} has {lengths[lengths != width][0]} values, expected {width}")
    if len(cells):
        try:
            out[present] = np.stack(cells.to_numpy()).astype(np.float32)
        except (TypeError, ValueError) as error:
            raise DataError(f"{where}: vector column holds non-numeric values: {error}") from None
    return out
