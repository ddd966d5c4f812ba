"""Raw feature values -> the model's input tensors, from a bundle's manifest alone.

The same rules as :mod:`fusionrec.data.preprocessing` (tests hold the two together), written with
numpy only so that a scoring service needs neither pandas nor the training stack (nor torch, for
the ONNX Runtime path): ids
are matched as strings (7, 7.0 and "7" are one id), vocabulary entry i has id i + 2, 0 is padding
and 1 the out-of-vocabulary id that unknown and missing values share (a ``hash_buckets`` field hashes
ids instead, :mod:`fusionrec.data.hashing`); numerics are standardised with the training mean and
std and carry a missing flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.data.hashing import hashed_ids  # standard library and numpy only

PADDING, OUT_OF_VOCABULARY, RESERVED = 0, 1, 2
CONTENT_TYPES = ("text", "image", "audio")  # fusionrec.data.media.MEDIA_TYPES, without importing pandas


def present_input(field: str) -> str:
    """The scoring graph's input saying which rows of a content field have content."""
    return f"{field}.present"


class RequestError(ValueError):
    """A request that does not match the bundle's input signature; the message names the field."""


def _token(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class FeatureEncoder:
    """Built from the manifest's ``preprocessing`` section: ``{field: {type, ...fitted state}}``.
    ``item_vectors(field, values) -> ([B, D], Bool[B])`` encodes content fields (see ``Bundle``)."""

    def __init__(self, preprocessing: Mapping[str, Mapping[str, Any]],
                 item_vectors: Callable[[str, list], tuple[np.ndarray, np.ndarray]] | None = None):
        self.fields = dict(preprocessing)
        self.item_vectors = item_vectors
        self.ids = {name: {token: i + RESERVED for i, token in enumerate(entry["vocabulary"])}
                    for name, entry in self.fields.items() if "vocabulary" in entry}

    def __call__(self, rows: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """``{field: [B] raw values}`` -> ``{field: array}``; every field required, all of one length."""
        missing = [name for name in self.fields if name not in rows]
        if missing:
            raise RequestError(f"missing field(s): {', '.join(missing)}")
        lengths = {name: len(rows[name]) for name in self.fields}
        if len(set(lengths.values())) > 1:
            raise RequestError(f"fields differ in length: {lengths}")
        encoded = {}
        for name, entry in self.fields.items():
            if entry["type"] in CONTENT_TYPES:
                encoded[name], encoded[present_input(name)] = self.item_vectors(name, list(rows[name]))
            else:
                encoded[name] = self._encode(name, list(rows[name]))
        return encoded

    def _encode(self, name: str, values: list[Any]) -> np.ndarray:
        entry, kind = self.fields[name], self.fields[name]["type"]
        if kind == "categorical" and "hash_buckets" in entry:
            return hashed_ids([_token(v) for v in values], entry["hash_buckets"])
        if kind == "categorical":
            ids = self.ids[name]
            return np.array([ids.get(_token(v), OUT_OF_VOCABULARY) for v in values], dtype=np.int64)
        if kind == "multi_categorical":
            ids, width = self.ids[name], entry["max_length"]
            out = np.full((len(values), width), PADDING, dtype=np.int64)
            for row, cell in enumerate(values):
                if not (cell is None or isinstance(cell, (str, list, tuple, np.ndarray))):
                    raise RequestError(f"field '{name}': expected a separated string or a list of values, got "
                                       f"{cell!r:.80} (row {row})")
                parts = cell.split(entry["separator"]) if isinstance(cell, str) else list(cell if cell is not None else [])
                tokens = [ids.get(_token(p), OUT_OF_VOCABULARY) for p in parts if _token(p)][:width]
                out[row, :len(tokens)] = tokens
            return out
        if kind == "numeric":
            numbers = np.empty(len(values))
            for row, value in enumerate(values):
                if value is None or str(value) in entry["na_values"]:
                    numbers[row] = np.nan
                    continue
                try:
                    numbers[row] = float(value)
                except (TypeError, ValueError):
                    raise RequestError(f"field '{name}': expected a number, got {value!r} (row {row})") from None
            missing = ~np.isfinite(numbers)
            standardised = np.where(missing, 0.0, (numbers - entry["mean"]) / entry["std"])
            return np.stack([standardised, missing], axis=1).astype(np.float32)
        if kind == "vector":
            out = np.zeros((len(values), entry["width"]), dtype=np.float32)
            for row, cell in enumerate(values):
                if cell is None:
                    continue
                try:
                    vector = np.asarray(cell, dtype=np.float32)
                except (TypeError, ValueError):
                    raise RequestError(f"field '{name}': expected {entry['width']} numbers, got {cell!r:.80} "
                                       f"(row {row})") from None
                if vector.shape != (entry["width"],):
                    raise RequestError(f"field '{name}': expected {entry['width']} numbers, got shape "
                                       f"{vector.shape} (row {row})")
                out[row] = vector
            return out
        raise RequestError(f"field '{name}': the bundle has no encoding for feature type {kind!r}")
