"""The tabular feature types: ids (``categorical``, ``multi_categorical``), numbers (``numeric``) and
precomputed vectors (``vector``). Numpy only: serving imports this module without torch or pandas.

Ids are matched by their token (:func:`fusionrec.features.values.id_token`: 7, 7.0 and "7" are one
id); vocabulary entry i has id i + 2, 0 is padding and 1 the out-of-vocabulary id that unknown and
missing values share. A ``hash_buckets`` field hashes ids instead (:mod:`fusionrec.data.hashing`).
Numbers are standardised with the training mean and std and carry a missing flag.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.data.hashing import hashed_ids
from fusionrec.errors import ConfigError
from fusionrec.features.base import OUT_OF_VOCABULARY, PADDING, RESERVED, FeatureType, FeatureValueError, FieldInfo
from fusionrec.features.values import (FLOAT32_MAX, MAX_PARTS, Vocabulary, add_counts, checked_string, count,
                                       distinct, float32_vector, id_token, is_null, ranked, shown)

UNKNOWN_EXAMPLE = "never-seen-at-training"  # a golden row's unknown id


def _check_strings(values: Sequence[Any]) -> None:
    for row, value in enumerate(values):
        if type(value) is str:
            checked_string(value, row)


class Categorical(FeatureType):
    """One id per row -> ``Int64[N]``."""

    type_name = "categorical"
    # hash_buckets: hash ids into that many buckets instead of fitting a vocabulary (the hashing
    # trick, fusionrec.data.hashing), for id columns too large for a table.
    options = {"min_count": 1, "max_size": None, "hash_buckets": None}
    default_encoder = "categorical"
    null_means = "the out-of-vocabulary id"
    key_column = True

    def __init__(self, name: str, state: Mapping[str, Any]):
        super().__init__(name, state)
        self.buckets = self.state.get("hash_buckets")
        self.vocabulary = Vocabulary(self.state["vocabulary"]) if "vocabulary" in self.state else None

    @classmethod
    def check_options(cls, options: Mapping[str, Any], key: str) -> dict[str, Any]:
        options = super().check_options(options, key)
        buckets = options["hash_buckets"]
        if buckets is not None:
            if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 1:
                raise ConfigError(f"{key}.hash_buckets: expected a positive number of buckets, got {buckets!r}")
            if options["min_count"] != 1 or options["max_size"] is not None:
                raise ConfigError(f"{key}: hash_buckets replaces the vocabulary, so min_count and max_size do "
                                  f"not apply; give either hash_buckets or min_count/max_size")
        return options

    def fit(self, values: np.ndarray) -> dict[str, int] | None:
        return None if self.buckets is not None else count(*distinct(values))

    def merge(self, partials: Sequence[Any]) -> dict[str, int] | None:
        return None if self.buckets is not None else add_counts(partials)

    def fitted(self, partial: Any) -> dict[str, Any]:
        if self.buckets is not None:
            return {"type": self.type_name, "hash_buckets": int(self.buckets)}
        return {"type": self.type_name,
                "vocabulary": ranked(partial or {}, self.state["min_count"], self.state["max_size"])}

    def field_info(self) -> FieldInfo:
        size = self.buckets if self.buckets is not None else len(self.vocabulary)
        return FieldInfo(self.name, self.type_name, cardinality=size + RESERVED)

    def transform(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        if self.buckets is None:
            return self.vocabulary.ids(values)
        codes, tokens = distinct(values)
        # A missing value's code, -1, picks the out-of-vocabulary id appended last.
        return np.append(hashed_ids(tokens, self.buckets), OUT_OF_VOCABULARY)[codes]

    def check_request(self, values: Sequence[Any]) -> None:
        _check_strings(values)

    def example_values(self, rng: np.random.Generator, count: int) -> list[Any]:
        # A hashed field has no vocabulary: any id is as good as another.
        vocabulary = self.state.get("vocabulary") or [f"id-{i}" for i in range(count)]
        return [str(rng.choice(vocabulary)) for _ in range(count - 1)] + [UNKNOWN_EXAMPLE]


def _part_token(value: Any, row: int) -> str | None:
    """An element of a multi-valued cell: an id, where an empty one is no value."""
    return id_token(value, row) or None


class MultiCategorical(FeatureType):
    """Several ids per row (a separated string or a list) -> ``Int64[N, max_length]``, padded with 0;
    the first ``max_length`` ids of a cell are kept."""

    type_name = "multi_categorical"
    options = {"separator": "|", "max_length": 16, "min_count": 1, "max_size": None}
    default_encoder = "multi_categorical"
    null_means = "no values"

    def __init__(self, name: str, state: Mapping[str, Any]):
        super().__init__(name, state)
        self.vocabulary = Vocabulary(self.state["vocabulary"]) if "vocabulary" in self.state else None

    def _parts(self, values: Sequence[Any] | np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Every cell's elements, flat, and ``[N]`` row of each element."""
        separator, flat, lengths = self.state["separator"], [], np.zeros(len(values), np.int64)
        for row, cell in enumerate(values.tolist() if isinstance(values, np.ndarray) else values):
            if isinstance(cell, str):
                parts = cell.split(separator)
            elif isinstance(cell, (list, tuple, np.ndarray)):
                parts = cell.tolist() if isinstance(cell, np.ndarray) else cell
            elif is_null(cell):
                continue
            else:
                raise FeatureValueError(row, f"expected a separated string or a list of at most {MAX_PARTS} "
                                             f"values, got {shown(cell)}")
            flat.extend(parts)
            lengths[row] = len(parts)
        return flat, np.repeat(np.arange(len(values)), lengths)

    def _distinct(self, values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
        flat, rows = self._parts(values)
        try:
            codes, tokens = distinct(flat, _part_token)
        except FeatureValueError as error:  # the element's row is its cell's
            raise FeatureValueError(int(rows[error.row]), error.message) from None
        return codes, tokens, rows

    def fit(self, values: np.ndarray) -> dict[str, int]:
        codes, tokens, _ = self._distinct(values)
        return count(codes, tokens)

    def merge(self, partials: Sequence[Any]) -> dict[str, int]:
        return add_counts(partials)

    def fitted(self, partial: Any) -> dict[str, Any]:
        return {"type": self.type_name,
                "vocabulary": ranked(partial or {}, self.state["min_count"], self.state["max_size"]),
                "separator": self.state["separator"], "max_length": int(self.state["max_length"])}

    def field_info(self) -> FieldInfo:
        return FieldInfo(self.name, self.type_name, cardinality=len(self.vocabulary) + RESERVED,
                         width=self.state["max_length"])

    def transform(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        codes, tokens, rows = self._distinct(values)
        present = codes >= 0  # empty elements and nulls are no ids
        ids, rows = self.vocabulary.ids_of(tokens)[codes[present]], rows[present]
        lengths = np.bincount(rows, minlength=len(values))
        positions = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = positions < self.state["max_length"]
        padded = np.full((len(values), self.state["max_length"]), PADDING, dtype=np.int64)
        padded[rows[keep], positions[keep]] = ids[keep]
        return padded

    def check_request(self, values: Sequence[Any]) -> None:
        for row, cell in enumerate(values):
            if isinstance(cell, str):
                checked_string(cell, row)
            elif isinstance(cell, (list, tuple, np.ndarray)):
                if len(cell) > MAX_PARTS:
                    raise FeatureValueError(row, f"expected a separated string or a list of at most {MAX_PARTS} "
                                                 f"values, got {shown(cell)}")
                for part in cell:
                    if type(part) is str:
                        checked_string(part, row)

    def example_values(self, rng: np.random.Generator, count: int) -> list[Any]:
        vocabulary = self.state["vocabulary"] or ["?"]
        return [self.state["separator"].join(map(str, rng.choice(vocabulary, size=2))) for _ in range(count)]


class Numeric(FeatureType):
    """A number per row -> ``Float32[N, 2]``: the standardised value (0 when missing) and a missing flag."""

    type_name = "numeric"
    options = {"na_values": []}  # na_values: strings that mean "missing", e.g. ["unknown", "-"]
    default_encoder = "numeric"
    null_means = "missing (0 and the missing flag)"

    def _na_values(self) -> list[str]:
        return [str(value) for value in self.state["na_values"]]

    def numbers(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """``Float64[N]``, NaN where missing (null, or one of ``na_values``); a non-number or an
        infinite number raises FeatureValueError."""
        na_values = set(self._na_values())
        if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
            parsed = values.astype(np.float64)
            if na_values:
                # Each value's own string, as for a request's values: an integer column's -1 is "-1".
                uniques, inverse = np.unique(values, return_inverse=True)
                parsed[np.array([str(u) in na_values for u in uniques.tolist()], bool)[inverse.reshape(-1)]] = np.nan
            infinite = np.isinf(parsed)
            if infinite.any():
                row = int(np.flatnonzero(infinite)[0])
                raise FeatureValueError(row, f"{shown(parsed[row])} is not a finite number", int(infinite.sum()))
            return parsed
        parsed = np.full(len(values), np.nan)
        for row, value in enumerate(values.tolist() if isinstance(values, np.ndarray) else values):
            if is_null(value) or isinstance(value, str) and value in na_values:
                continue
            try:
                # JSON's float first, without the numbers ABCs' slow isinstance.
                if not (type(value) is float or isinstance(value, (str, numbers.Real))):
                    raise TypeError
                number = float(value)
            except (TypeError, ValueError):
                raise FeatureValueError(row, f"expected a number, got {shown(value)}") from None
            except OverflowError:  # an integer beyond float64
                number = math.inf
            if math.isinf(number):
                raise FeatureValueError(row, f"{shown(value)} is not a finite number")
            if not na_values or str(value) not in na_values:
                parsed[row] = number
        return parsed

    # count, mean / scale, (sum of squared deviations) / scale**2, and scale: a power of two, so
    # that values near float64's limit do not overflow the squares, while dividing by it is exact
    # and ordinary values get the very statistics np.std computes.
    def fit(self, values: np.ndarray) -> tuple[int, float, float, float] | None:
        finite = self.numbers(values)
        finite = finite[np.isfinite(finite)]
        if not len(finite):
            return None
        # The largest magnitude, from 1 up, is brought into [1, 2) (frexp's exponent less one, as
        # 2**1024 would overflow); smaller values are left as they are.
        scale = 2.0 ** max(int(np.frexp(np.max(np.abs(finite)))[1]) - 1, 0)
        finite = finite / scale
        # np.std's own arithmetic, so that one chunk gives exactly the in-memory statistics.
        count, mean = len(finite), float(finite.mean())
        return count, mean, float(np.sum(np.square(finite - mean))), scale

    def merge(self, partials: Sequence[Any]) -> tuple[int, float, float, float] | None:
        """Chan et al.'s pairwise update, folding the partials in order."""
        merged = None
        for partial in partials:
            if partial is None:
                continue
            if merged is None:
                merged = partial
                continue
            before, before_mean, before_squares, before_scale = merged
            count, mean, squares, scale = partial
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
            merged = (total, mean, squares, scale)
        return merged

    def fitted(self, partial: Any) -> dict[str, Any]:
        if partial is None:
            raise FeatureValueError(None, "numeric column has no values in the training split")
        count, mean, squares, scale = partial
        std = float(np.sqrt(squares / count)) * scale
        return {"type": self.type_name, "na_values": self._na_values(), "mean": mean * scale,
                "std": std if std > 0 else 1.0}

    def field_info(self) -> FieldInfo:
        return FieldInfo(self.name, self.type_name, width=2)

    def transform(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """NaN and null are missing values; an infinite number, or one that standardised leaves float32's
        range, is refused (the model would score it as inf or NaN)."""
        parsed = self.numbers(values)
        missing = np.isnan(parsed)
        mean, std = self.state["mean"], self.state["std"]
        with np.errstate(over="ignore", invalid="ignore"):
            standardised = np.where(missing, 0.0, (parsed - mean) / std)
        beyond = ~(np.abs(standardised) <= FLOAT32_MAX)
        if beyond.any():
            row = int(np.flatnonzero(beyond)[0])
            raise FeatureValueError(row, f"{shown(values[row])} is not a finite float32 number once standardised "
                                         f"(mean {mean:.4g}, std {std:.4g})", int(beyond.sum()))
        return np.stack([standardised, missing], axis=1).astype(np.float32)

    def check_request(self, values: Sequence[Any]) -> None:
        _check_strings(values)

    def example_values(self, rng: np.random.Generator, count: int) -> list[Any]:
        mean, std = self.state["mean"], self.state["std"]
        return [float(mean + std * rng.normal()) for _ in range(count - 1)] + [None]


class Vector(FeatureType):
    """A list of numbers per row -> ``Float32[N, width]``, zeros when missing; the width is the first
    training value's."""

    type_name = "vector"
    default_encoder = "vector"
    null_means = "zeros"

    def fit(self, values: np.ndarray) -> int | None:
        for cell in values:
            if not is_null(cell):
                return int(np.shape(cell)[0]) if np.ndim(cell) else 0
        return None

    def merge(self, partials: Sequence[Any]) -> int | None:
        return next((width for width in partials if width is not None), None)

    def fitted(self, partial: Any) -> dict[str, Any]:
        if partial is None:
            raise FeatureValueError(None, "vector column has no values")
        return {"type": self.type_name, "width": partial}

    def field_info(self) -> FieldInfo:
        return FieldInfo(self.name, self.type_name, width=self.state["width"])

    def transform(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        width = self.state["width"]
        out = np.zeros((len(values), width), dtype=np.float32)
        cells = values.tolist() if isinstance(values, np.ndarray) and values.dtype == object else list(values)
        present = [row for row, cell in enumerate(cells) if not is_null(cell)]
        try:  # every cell a numeric array of the width (a Parquet list column): one stack, checked once
            stacked = np.stack([cells[row] for row in present]).astype(np.float64) if present else None
            fast = stacked is None or (stacked.shape == (len(present), width) and stacked.dtype.kind == "f"
                                       and all(isinstance(cells[row], np.ndarray) and cells[row].dtype.kind in "iuf"
                                               for row in present)
                                       and bool((np.abs(stacked) <= FLOAT32_MAX).all()))
        except (TypeError, ValueError, OverflowError):
            fast = False
        if fast:
            if present:
                out[present] = stacked
            return out
        for row in present:
            out[row] = float32_vector(cells[row], width, row)
        return out

    def example_values(self, rng: np.random.Generator, count: int) -> list[Any]:
        return rng.normal(size=(count, self.state["width"])).round(4).tolist()
