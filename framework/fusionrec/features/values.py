"""Rules on raw values that every feature type shares: what a null is, when two values are one id,
counting ids for a vocabulary, and the limits on what a request may send.

Standard library and numpy only (see :mod:`fusionrec.features.base`). Columns of a file arrive as numpy
arrays (numeric, or object holding str/int/float/None), a request's values as a JSON list; both go
through the same functions. Work is per DISTINCT value where it can be: an id column of 10M rows costs
one ``np.unique`` (numeric) or one dict lookup a row (object), and the token rule runs once per id.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.errors import ConfigError
from fusionrec.features.base import OUT_OF_VOCABULARY, RESERVED, FeatureValueError

MAX_CHARS = 4096  # an id, a separated list of tags, a file path (Linux's PATH_MAX)
MAX_TEXT_CHARS = 100_000  # a text content cell; the tokenizer keeps only max_length tokens of it
MAX_PARTS = 1024  # values in one multi-valued cell of a request; only max_length of them are used
FLOAT32_MAX = float(np.finfo(np.float32).max)
SCALARS = (str, numbers.Number, np.generic, type(None))

_LARGEST_ID = 10 ** MAX_CHARS


class _Preview(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # Python refuses to print integers of more than 4300 digits (sys.get_int_max_str_digits).
        return super().repr_int(x, level) if x.bit_length() < 14_000 else f"<an integer of {x.bit_length()} bits>"


_preview = _Preview()  # attributes, not keywords: Python 3.10's Repr takes none
_preview.maxstring, _preview.maxother, _preview.maxlong, _preview.maxlevel = 60, 60, 40, 2
_preview.maxlist = _preview.maxtuple = _preview.maxdict = 4


def shown(value: Any) -> str:
    """A short, ASCII-safe rendering of a value for a message, whatever its size or depth."""
    if isinstance(value, np.generic):
        value = value.item()
    return _preview.repr(value)


def is_null(value: Any) -> bool:
    """The null rule of every type: None, or a float NaN (pandas' missing value in a numeric column)."""
    return value is None or (isinstance(value, (float, np.floating)) and value != value)


def checked_string(value: str, row: int, limit: int = MAX_CHARS) -> str:
    """``value`` if it is at most ``limit`` characters of valid Unicode (JSON can carry lone surrogates)."""
    if len(value) > limit:
        raise FeatureValueError(row, f"a string of {len(value)} characters, more than {limit}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FeatureValueError(row, f"{shown(value)} is not valid Unicode (a lone surrogate)") from None
    return value


def float32_vector(cell: Any, width: int, row: int) -> np.ndarray:
    """A list of ``width`` real numbers, each a finite float32, -> ``float32 [width]``."""
    if isinstance(cell, np.ndarray):
        numeric = cell.ndim == 1 and cell.dtype.kind in "iuf"
    elif isinstance(cell, (list, tuple)):  # the types present, not every element: vectors are long
        kinds = set(map(type, cell))
        numeric = kinds <= {float, int} or all(
            issubclass(kind, numbers.Real) and not issubclass(kind, (bool, np.bool_)) for kind in kinds)
    else:
        numeric = False
    if not numeric or len(cell) != width:
        raise FeatureValueError(row, f"expected a list of {width} numbers, got {shown(cell)}")
    try:
        finite = np.abs(np.asarray(cell, dtype=np.float64)) <= FLOAT32_MAX  # False for NaN too
    except OverflowError:  # an integer beyond float64 somewhere: find it
        finite = np.array([part < FLOAT32_MAX and -part < FLOAT32_MAX for part in cell])
    if not finite.all():
        position = int(np.flatnonzero(~finite)[0])
        raise FeatureValueError(row, f"element {position}: {shown(cell[position])} is not a finite float32 number")
    return np.asarray(cell, dtype=np.float32)


def content(value: Any) -> str | None:
    """The "no content" rule of content fields: a null or a blank string is no content; else the
    value as a string, stripped."""
    if is_null(value):
        return None
    return str(value).strip() or None


# --- ids ---

def id_token(value: Any, row: int) -> str | None:
    """An id -> the string it is matched as (None: missing): 7, 7.0 and "7" are one id. Any finite number
    is an id, so 1e300 or a 40-digit integer is simply one never seen in training; an infinite one, or a
    value that is not a scalar, is no id at all (FeatureValueError)."""
    # JSON's own types first, without the numbers ABCs' slow isinstance: this runs for every distinct id.
    if type(value) is str:
        return value
    if type(value) is int and -_LARGEST_ID < value < _LARGEST_ID:
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, SCALARS):
        raise FeatureValueError(row, f"expected one id (a string or a number), got {shown(value)}")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isinf(value):
        raise FeatureValueError(row, f"{shown(value)} is not an id (not a finite number)")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) >= _LARGEST_ID:
        raise FeatureValueError(row, f"an integer id of more than {MAX_CHARS} digits")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def distinct(values: Sequence[Any] | np.ndarray, token: Callable[[Any, int], str | None] = id_token
             ) -> tuple[np.ndarray, list[str]]:
    """``[N]`` values -> (``codes`` Int64[N], ``uniques``): ``uniques[codes[i]]`` is value i's token,
    -1 where the token is None (a null). ``token(value, row)`` runs once per distinct value, and a
    FeatureValueError it raises is raised again with the value's first row; a numeric array goes through
    ``np.unique``, anything else through one dict lookup a row."""
    array = values if isinstance(values, np.ndarray) else object_array(values)
    if array.dtype.kind in "iuf":
        present = ~np.isnan(array) if array.dtype.kind == "f" else np.ones(len(array), bool)
        raw, inverse = np.unique(array[present], return_inverse=True)
        raw_codes = np.full(len(array), -1, np.int64)
        raw_codes[present] = inverse.reshape(-1)
        return _by_token(raw_codes, raw.tolist(), token)
    cells = array.tolist()
    try:
        index = {value: code for code, value in enumerate(dict.fromkeys(cells))}
    except TypeError:  # an unhashable value (a list, a dict): the token rule says what is wrong with it
        for row, value in enumerate(cells):
            try:
                hash(value)
            except TypeError:
                token(value, row)
                raise FeatureValueError(row, f"unexpected value {shown(value)}") from None
        raise
    return _by_token(np.fromiter(map(index.__getitem__, cells), np.int64, len(cells)), list(index), token)


def object_array(values: Sequence[Any]) -> np.ndarray:
    """``[N]`` object array of the values, one cell per value, even when the values are lists."""
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def _by_token(raw_codes: np.ndarray, raw: list[Any], token: Callable[[Any, int], str | None]
              ) -> tuple[np.ndarray, list[str]]:
    """Distinct raw values -> distinct tokens (7 and "7" are two raw values, one token)."""
    uniques: dict[str, int] = {}
    remap = np.empty(len(raw) + 1, np.int64)
    remap[-1] = -1  # a raw code of -1 (null) stays -1
    for position, value in enumerate(raw):
        try:
            text = token(value, 0)
        except FeatureValueError as error:  # the row is the value's first; found only when needed
            raise FeatureValueError(int(np.flatnonzero(raw_codes == position)[0]), error.message) from None
        remap[position] = -1 if text is None else uniques.setdefault(text, len(uniques))
    return remap[raw_codes], list(uniques)


class Vocabulary:
    """Ids of tokens: ``tokens[i]`` has id ``i + RESERVED``; an unknown or null value, OUT_OF_VOCABULARY."""

    def __init__(self, tokens: Iterable[str]):
        self.index = {token: position + RESERVED for position, token in enumerate(tokens)}

    def __len__(self) -> int:
        return len(self.index)

    def ids(self, values: Sequence[Any] | np.ndarray, token: Callable[[Any, int], str | None] = id_token
            ) -> np.ndarray:
        """``[N]`` raw values -> ``Int64[N]`` ids, each distinct value looked up once."""
        codes, uniques = distinct(values, token)
        return self.ids_of(uniques)[codes]

    def ids_of(self, tokens: Sequence[str]) -> np.ndarray:
        """``Int64[len(tokens) + 1]``: each token's id, then OUT_OF_VOCABULARY (for a code of -1)."""
        return np.array([*map(self.index.get, tokens, [OUT_OF_VOCABULARY] * len(tokens)), OUT_OF_VOCABULARY],
                        dtype=np.int64)


# --- counting, for fits ---

def count(codes: np.ndarray, uniques: Sequence[str]) -> dict[str, int]:
    """``distinct``'s output -> ``{token: rows}`` (nulls not counted): one chunk's partial fit."""
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    return dict(zip(uniques, counts.tolist()))


def add_counts(partials: Sequence[Mapping[str, int]]) -> dict[str, int]:
    """Several chunks' ``{token: rows}`` -> one, as if counted over all their rows."""
    if len(partials) == 1:
        return dict(partials[0])
    total: dict[str, int] = {}
    for counts in partials:
        for token, rows in counts.items():
            total[token] = total.get(token, 0) + rows
    return total


def ranked(counts: Mapping[str, int], min_count: int, max_size: int | None) -> list[str]:
    """The vocabulary: tokens seen at least ``min_count`` times, by descending count (ties by token),
    at most ``max_size`` of them."""
    ordered = sorted(((token, rows) for token, rows in counts.items() if rows >= min_count),
                     key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ordered[:max_size]]


def checked_positive(positive: Any, key: str) -> dict[str, Any] | None:
    """A positive-event rule ``{column, min}`` (``min`` optional: without it a value > 0 is positive),
    checked and normalised; None for none."""
    if positive is None:
        return None
    if not isinstance(positive, Mapping) or not isinstance(positive.get("column"), str) \
            or set(positive) - {"column", "min"}:
        raise ConfigError(f"{key}: expected {{column: <label column>, min: <number>}} (min optional: "
                          f"without it a value > 0 is positive), got {positive!r}")
    low = positive.get("min")
    if low is not None and (not isinstance(low, (int, float)) or isinstance(low, bool) or low != low):
        raise ConfigError(f"{key}.min: expected a number, got {low!r}")
    return {"column": positive["column"], "min": low}
