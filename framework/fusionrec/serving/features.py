"""Raw feature values -> the model's input tensors, from a bundle's manifest alone.

The same rules as :mod:`fusionrec.data.preprocessing` (tests hold the two together), written with
numpy only so that a scoring service needs neither pandas nor the training stack (nor torch, for
the ONNX Runtime path): ids
are matched as strings (7, 7.0 and "7" are one id), vocabulary entry i has id i + 2, 0 is padding
and 1 the out-of-vocabulary id that unknown and missing values share (a ``hash_buckets`` field hashes
ids instead, :mod:`fusionrec.data.hashing`); numerics are standardised with the training mean and
std and carry a missing flag.

Every value is checked before it is encoded, so that whatever a client sends is either encoded or
refused with a :class:`RequestError` naming the field and the row: cells of the wrong shape, strings
that are too long or not valid Unicode, and numbers the model's float32 inputs cannot hold.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.data.hashing import hashed_ids  # standard library and numpy only

PADDING, OUT_OF_VOCABULARY, RESERVED = 0, 1, 2
CONTENT_TYPES = ("text", "image", "audio")  # fusionrec.data.media.MEDIA_TYPES, without importing pandas
MAX_CHARS = 4096  # an id, a separated list of tags, a file path (Linux's PATH_MAX)
MAX_TEXT_CHARS = 100_000  # a text content cell; the tokenizer keeps only max_length tokens of it
MAX_PARTS = 1024  # values in one multi_categorical cell; only max_length of them are used
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
    """A short, ASCII-safe rendering of a request value for a message, whatever its size or depth."""
    return _preview.repr(value)


def present_input(field: str) -> str:
    """The scoring graph's input saying which rows of a content field have content."""
    return f"{field}.present"


class RequestError(ValueError):
    """A request that does not match the bundle's input signature; the message names the field."""


def checked_string(value: str, label: str, row: int, limit: int = MAX_CHARS) -> str:
    """``value`` if it is at most ``limit`` characters of valid Unicode (JSON can carry lone surrogates)."""
    if len(value) > limit:
        raise RequestError(f"{label}: row {row}: a string of {len(value)} characters, more than {limit}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(f"{label}: row {row}: {shown(value)} is not valid Unicode (a lone surrogate)") from None
    return value


def float32_vector(cell: Any, width: int, label: str, row: int) -> np.ndarray:
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
        raise RequestError(f"{label}: row {row}: expected a list of {width} numbers, got {shown(cell)}")
    try:
        finite = np.abs(np.asarray(cell, dtype=np.float64)) <= FLOAT32_MAX  # False for NaN too
    except OverflowError:  # an integer beyond float64 somewhere: find it
        finite = np.array([part < FLOAT32_MAX and -part < FLOAT32_MAX for part in cell])
    if not finite.all():
        position = int(np.flatnonzero(~finite)[0])
        raise RequestError(f"{label}: row {row}: element {position}: {shown(cell[position])} is not a finite "
                           f"float32 number")
    return np.asarray(cell, dtype=np.float32)


def _token(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _id_token(value: Any, label: str, row: int) -> str | None:
    """An id -> the string it is matched as (None: missing). Any finite number is an id, so 1e300 or a
    40-digit integer is simply one never seen in training; an infinite one is no id at all."""
    # JSON's own types first, without the numbers ABCs' slow isinstance: this runs for every id of a request.
    if type(value) is str:
        return checked_string(value, label, row)
    if type(value) is int and -_LARGEST_ID < value < _LARGEST_ID:
        return str(value)
    if not isinstance(value, SCALARS):
        raise RequestError(f"{label}: row {row}: expected one id (a string or a number), got {shown(value)}")
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isinf(value):
        raise RequestError(f"{label}: row {row}: {shown(value)} is not an id (not a finite number)")
    if isinstance(value, numbers.Integral) and abs(int(value)) >= _LARGEST_ID:
        raise RequestError(f"{label}: row {row}: an integer id of more than {MAX_CHARS} digits")
    token = _token(value)
    return None if token is None else checked_string(token, label, row)


class FeatureEncoder:
    """Built from the manifest's ``preprocessing`` section: ``{field: {type, ...fitted state}}``.
    ``item_vectors(field, values, label) -> ([B, D], Bool[B])`` encodes content fields (see ``Bundle``)."""

    def __init__(self, preprocessing: Mapping[str, Mapping[str, Any]],
                 item_vectors: Callable[[str, list, str], tuple[np.ndarray, np.ndarray]] | None = None):
        self.fields = dict(preprocessing)
        self.item_vectors = item_vectors
        self.ids = {name: {token: i + RESERVED for i, token in enumerate(entry["vocabulary"])}
                    for name, entry in self.fields.items() if "vocabulary" in entry}

    def __call__(self, rows: Mapping[str, Sequence[Any]], labels: Mapping[str, str] | None = None
                 ) -> dict[str, np.ndarray]:
        """``{field: [B] raw values}`` -> ``{field: array}``; every field required, all of one length.
        ``labels``: how messages name a field (default ``field 'name'``; the service says ``rows.name``)."""
        missing = [name for name in self.fields if name not in rows]
        if missing:
            raise RequestError(f"missing field(s): {', '.join(missing)}")
        lengths = {name: len(rows[name]) for name in self.fields}
        if len(set(lengths.values())) > 1:
            raise RequestError(f"fields differ in length: {lengths}")
        encoded = {}
        for name, entry in self.fields.items():
            label = (labels or {}).get(name, f"field '{name}'")
            if entry["type"] in CONTENT_TYPES:
                encoded[name], encoded[present_input(name)] = self.item_vectors(name, list(rows[name]), label)
            else:
                encoded[name] = self._encode(name, list(rows[name]), label)
        return encoded

    def _encode(self, name: str, values: list[Any], label: str) -> np.ndarray:
        entry, kind = self.fields[name], self.fields[name]["type"]
        if kind == "categorical":
            tokens = [_id_token(value, label, row) for row, value in enumerate(values)]
            if "hash_buckets" in entry:
                return hashed_ids(tokens, entry["hash_buckets"])
            ids = self.ids[name]
            return np.array([ids.get(token, OUT_OF_VOCABULARY) for token in tokens], dtype=np.int64)
        if kind == "multi_categorical":
            ids, width = self.ids[name], entry["max_length"]
            out = np.full((len(values), width), PADDING, dtype=np.int64)
            for row, cell in enumerate(values):
                if isinstance(cell, str):
                    parts = checked_string(cell, label, row).split(entry["separator"])
                elif isinstance(cell, (list, tuple, np.ndarray)) and len(cell) <= MAX_PARTS:
                    parts = list(cell)
                elif cell is None:
                    parts = []
                else:
                    raise RequestError(f"{label}: row {row}: expected a separated string or a list of at most "
                                       f"{MAX_PARTS} values, got {shown(cell)}")
                tokens = [token for token in (_id_token(part, label, row) for part in parts) if token]
                out[row, :min(len(tokens), width)] = [ids.get(token, OUT_OF_VOCABULARY) for token in tokens[:width]]
            return out
        if kind == "numeric":
            return self._numeric(entry, values, label)
        if kind == "vector":
            out = np.zeros((len(values), entry["width"]), dtype=np.float32)
            for row, cell in enumerate(values):
                if cell is not None:
                    out[row] = float32_vector(cell, entry["width"], label, row)
            return out
        raise RequestError(f"{label}: the bundle has no encoding for feature type {kind!r}")

    @staticmethod
    def _numeric(entry: Mapping[str, Any], values: list[Any], label: str) -> np.ndarray:
        """NaN and ``null`` are missing values, as in training; an infinite number, or one that standardised
        leaves float32's range, is refused (the model would score it as inf or NaN)."""
        parsed, na_values = np.full(len(values), np.nan), set(entry["na_values"])
        for row, value in enumerate(values):
            if value is None or isinstance(value, str) and checked_string(value, label, row) in na_values:
                continue
            try:
                # JSON's float first, without the numbers ABCs' slow isinstance.
                if not (type(value) is float or isinstance(value, (str, numbers.Real))):
                    raise TypeError
                number = float(value)
            except (TypeError, ValueError):
                raise RequestError(f"{label}: row {row}: expected a number, got {shown(value)}") from None
            except OverflowError:  # an integer beyond float64
                number = math.inf
            if math.isinf(number):
                raise RequestError(f"{label}: row {row}: {shown(value)} is not a finite number")
            if not na_values or str(value) not in na_values:
                parsed[row] = number
        missing = np.isnan(parsed)
        standardised = np.where(missing, 0.0, (parsed - entry["mean"]) / entry["std"])
        for row in np.flatnonzero(~(np.abs(standardised) <= FLOAT32_MAX)):
            raise RequestError(f"{label}: row {row}: {shown(values[row])} is not a finite float32 number once "
                               f"standardised (mean {entry['mean']:.4g}, std {entry['std']:.4g})")
        return np.stack([standardised, missing], axis=1).astype(np.float32)
