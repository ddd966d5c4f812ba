"""Raw feature values -> the model's input arrays, from a bundle's manifest alone.

Each field's feature type is the class its manifest entry's ``implementation`` names (imported with
numpy only: no pandas, no torch, no plugin manager), rebuilt from its fitted state: its ``transform``
is the very function training called, so the two encodings cannot drift apart.

Every value is checked before it is encoded, so that whatever a client sends is either encoded or
refused with a :class:`RequestError` naming the field and the row: cells of the wrong shape, strings
that are too long or not valid Unicode, and numbers the model's float32 inputs cannot hold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.features import values
from fusionrec.features.base import (OUT_OF_VOCABULARY, PADDING, RESERVED, FeatureType,  # noqa: F401 (re-exported)
                                     FeatureValueError, load_implementation)
from fusionrec.features.values import MAX_CHARS, MAX_TEXT_CHARS, shown  # noqa: F401 (re-exported)


MAX_PROBLEMS = 3  # envelope problems and field names in one message: a request may hold thousands


def present_input(field: str) -> str:
    """The scoring graph's input saying which rows of a content field have content."""
    return f"{field}.present"


class RequestError(ValueError):
    """A request that does not match the bundle's input signature; the message names the field."""


def request_error(label: str, error: FeatureValueError) -> RequestError:
    return RequestError(f"{label}: row {error.row}: {error.message}")


def checked_string(value: str, label: str, row: int, limit: int = MAX_CHARS) -> str:
    """:func:`fusionrec.features.values.checked_string`, refusing with a RequestError naming ``label``."""
    try:
        return values.checked_string(value, row, limit)
    except FeatureValueError as error:
        raise request_error(label, error) from None


def checked_key(key: Any, label: str, row: int, names: str) -> Any:
    """``key`` if it can name an item (``names``: what it names, for the message): a string of valid
    Unicode, or a finite number that is not a boolean; it is sent back as it came."""
    if isinstance(key, str):
        return checked_string(key, label, row)
    if isinstance(key, bool) or not (isinstance(key, int) or isinstance(key, float) and np.isfinite(key)):
        raise RequestError(f"{label}: row {row}: expected a string or a number naming {names}, got {shown(key)}")
    return key


def listed(names: list[str], separator: str = ", ") -> str:
    """The first few of ``names``, each cut short, and how many more: a message stays one short line."""
    more = f" and {len(names) - MAX_PROBLEMS} more" if len(names) > MAX_PROBLEMS else ""
    return separator.join(f"{name:.60}" for name in names[:MAX_PROBLEMS]) + more


def float32_vector(cell: Any, width: int, label: str, row: int) -> np.ndarray:
    """:func:`fusionrec.features.values.float32_vector`, refusing with a RequestError naming ``label``."""
    try:
        return values.float32_vector(cell, width, row)
    except FeatureValueError as error:
        raise request_error(label, error) from None


class FeatureEncoder:
    """Built from the manifest's ``preprocessing`` section: ``{field: {type, implementation, ...fitted
    state}}``. ``item_vectors(field, values, label) -> ([B, D], Bool[B])`` encodes content fields (see
    ``Bundle``). A ValueError if an ``implementation`` cannot be used (``Bundle`` names the manifest)."""

    def __init__(self, preprocessing: Mapping[str, Mapping[str, Any]],
                 item_vectors: Callable[[str, list, str], tuple[np.ndarray, np.ndarray]] | None = None):
        self.fields = dict(preprocessing)
        self.item_vectors = item_vectors
        self.types: dict[str, FeatureType] = {}
        for name, entry in self.fields.items():
            try:
                kind = load_implementation(entry)
            except ValueError as error:
                raise ValueError(f"field '{name}': {error}") from None
            self.types[name] = kind(name, {key: value for key, value in entry.items() if key != "implementation"})
        for kind in self.types.values():
            kind.link(self.types)

    def __call__(self, rows: Mapping[str, Sequence[Any]], labels: Mapping[str, str] | None = None,
                 fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """``{field: [B] raw values}`` -> ``{field: array}``; every field (or every one of ``fields``, one
        tower's) required, all of one length. ``labels``: how messages name a field (default ``field
        'name'``; the service says ``rows.name``)."""
        fields = list(self.fields if fields is None else fields)
        missing = [name for name in fields if name not in rows]
        if missing:
            raise RequestError(f"missing field(s): {', '.join(missing)}")
        lengths = {name: len(rows[name]) for name in fields}
        if len(set(lengths.values())) > 1:
            raise RequestError(f"fields differ in length: {lengths}")
        encoded = {}
        for name in fields:
            kind = self.types[name]
            label = (labels or {}).get(name, f"field '{name}'")
            cells = list(rows[name])
            if kind.content:
                encoded[name], encoded[present_input(name)] = self.item_vectors(name, cells, label)
                continue
            try:
                kind.check_request(cells)
                encoded[name] = kind.transform(cells)
            except FeatureValueError as error:
                raise request_error(label, error) from None
        return encoded
