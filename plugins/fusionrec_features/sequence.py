"""The ``sequence`` feature type: an ordered list of ids per row (docs/history.md).

Numpy only (see :mod:`fusionrec.features.base`). The model's input is ``Int64[N, L, P]``: ``L`` =
``max_length``, left-padded with 0 (PADDING), the most recent element at position ``L - 1``;
``P`` = 1 + the side fields: part 0 is the element's id, part k the id of its k-th side field.

A row's list is read from its column (a list, or a ``separator``-separated string), from a request,
or built from the log (``history``: :mod:`fusionrec.data.history`, which calls :meth:`element_ids`,
the same lookup ``transform`` makes, so a built history equals ``transform`` of the raw lists).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any, TypeVar

import numpy as np

from fusionrec.errors import ConfigError
from fusionrec.features.base import RESERVED, FeatureType, FeatureValueError, FieldInfo
from fusionrec.features.values import (MAX_PARTS, MAX_TEXT_CHARS, Vocabulary, add_counts, checked_positive,
                                       checked_string, count, distinct, is_null, object_array, ranked, shown)

HISTORY_KEYS = ("user", "time", "item", "positive")
Result = TypeVar("Result")
LISTS = (list, tuple, np.ndarray)


class SequenceFeature(FeatureType):
    """``type: sequence``. Options (``data.features.<column>``):

    - ``max_length`` (50): elements kept per row, the most recent; at most ``MAX_PARTS``.
    - ``separator`` ("|"): splits a string cell (a list cell is read as it is).
    - ``vocabulary`` (None): a categorical feature whose ids part 0 shares (and, in the model, its
      embedding table); without it the sequence fits its own, from ``min_count`` (1) and ``max_size``.
    - ``history`` (None): ``{user, time, item, positive: {column, min}}``: build the column from the log.
    - ``side`` ([]): categorical features whose ids ride along with each element (their vocabularies).

    Fitted state: ``{"type", "max_length", "separator", "shares", "side", "history"}`` plus the
    ``"vocabulary"`` tokens when ``shares`` is None.
    """

    type_name = "sequence"
    options = {"max_length": 50, "separator": "|", "vocabulary": None, "min_count": 1, "max_size": None,
               "history": None, "side": []}
    default_encoder = "sequence_mean"
    null_means = "an empty sequence (all padding)"
    stored_as = {"vocabulary": "shares"}  # the state's "vocabulary" is the token list of an unshared one

    def __init__(self, name: str, state: Mapping[str, Any]):
        super().__init__(name, state)
        if "shares" not in self.state:  # options, before fitting: vocabulary names the shared feature
            self.state["shares"] = self.state.get("vocabulary")
        tokens = self.state.get("vocabulary")
        self.vocabulary = Vocabulary(tokens) if isinstance(tokens, list) else None
        self.linked: list[FeatureType | None] = []  # per part: the feature whose ids it takes (None: own)

    # --- config ---

    @classmethod
    def check_options(cls, options: Mapping[str, Any], key: str) -> dict[str, Any]:
        checked = super().check_options(options, key)
        length = checked["max_length"]
        if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= MAX_PARTS:
            raise ConfigError(f"{key}.max_length: expected a whole number from 1 to {MAX_PARTS}, got {length!r}")
        if not isinstance(checked["separator"], str) or not checked["separator"]:
            raise ConfigError(f"{key}.separator: expected a non-empty string, got {checked['separator']!r}")
        if checked["vocabulary"] is not None:
            if not isinstance(checked["vocabulary"], str):
                raise ConfigError(f"{key}.vocabulary: expected the name of a categorical feature, "
                                  f"got {checked['vocabulary']!r}")
            if checked["min_count"] != 1 or checked["max_size"] is not None:
                raise ConfigError(f"{key}: vocabulary shares another feature's ids, so min_count and max_size "
                                  f"do not apply; give either vocabulary or min_count/max_size")
        if not isinstance(checked["min_count"], int) or isinstance(checked["min_count"], bool) \
                or checked["min_count"] < 1:
            raise ConfigError(f"{key}.min_count: expected a whole number >= 1, got {checked['min_count']!r}")
        size = checked["max_size"]
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ConfigError(f"{key}.max_size: expected a whole number >= 1 or null, got {size!r}")
        side = checked["side"]
        if not isinstance(side, (list, tuple)) or not all(isinstance(field, str) for field in side):
            raise ConfigError(f"{key}.side: expected a list of categorical feature names, got {side!r}")
        if len(set(side)) != len(side):
            raise ConfigError(f"{key}.side: names a feature twice, {list(side)!r}")
        checked["side"] = list(side)
        if checked["history"] is not None:
            checked["history"] = _check_history(checked["history"], f"{key}.history")
        return checked

    # --- fitting ---

    def fit(self, values: np.ndarray) -> Any:
        """Counts of part 0's tokens (None when it shares a vocabulary). A built history's values are
        its ``history.item`` column (one id a row, see :attr:`fit_column`)."""
        if self.state["shares"] is not None:
            return None
        if self.built:
            return count(*distinct(values))
        flat, counts = self._flatten(values)
        ids = object_array([element[0] for element in flat] if self.parts > 1 else flat)
        return count(*_in_cells(lambda: distinct(ids), counts))

    def merge(self, partials: Sequence[Any]) -> Any:
        return None if self.state["shares"] is not None else add_counts(partials)

    def fitted(self, partial: Any) -> dict[str, Any]:
        state = {"type": self.type_name, "max_length": self.state["max_length"], "separator": self.state["separator"],
                 "shares": self.state["shares"], "side": list(self.state["side"]), "history": self.state["history"]}
        if self.state["shares"] is None:
            state["vocabulary"] = ranked(partial or {}, self.state["min_count"], self.state["max_size"])
        return state

    @property
    def built(self) -> bool:
        return bool(self.state.get("history"))

    @property
    def fit_column(self) -> str:
        return self.state["history"]["item"] if self.built else self.name

    @property
    def parts(self) -> int:
        return 1 + len(self.state["side"])

    def link(self, features: Mapping[str, FeatureType]) -> None:
        key = f"data.features.{self.name}"
        wanted = [(self.state["shares"], f"{key}.vocabulary")] + [(side, f"{key}.side") for side in self.state["side"]]
        self.linked = []
        for other, other_key in wanted:
            if other is None:
                self.linked.append(None)
                continue
            kind = features.get(other)
            if kind is None or kind.type_name != "categorical":
                found = "no such feature" if kind is None else f"a {kind.type_name} feature"
                categorical = [name for name, feature in features.items() if feature.type_name == "categorical"]
                raise ConfigError(f"{other_key}: {other!r} must be a categorical feature ({found}); "
                                  f"categorical features: {', '.join(categorical) or '(none)'}")
            self.linked.append(kind)

    def field_info(self) -> FieldInfo:
        sources = [self.fit_column if self.built else (self.state["shares"] or self.name),
                   *self.state["side"]]
        parts = []
        for source, kind, shares in zip(sources, self._kinds(), [self.state["shares"], *self.state["side"]]):
            cardinality = len(self.vocabulary) + RESERVED if kind is None else kind.field_info().cardinality
            parts.append({"name": source, "cardinality": cardinality, "shares": shares})
        return FieldInfo(self.name, self.type_name, cardinality=parts[0]["cardinality"],
                         width=self.state["max_length"], extra={"parts": parts})

    # --- applying ---

    def element_ids(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """``P`` arrays ``[M]`` of raw values (element ids, then each side field's) -> ``Int64[M, P]``:
        part 0 through the sequence's vocabulary or the shared feature's ``transform``, part k through
        side field k's. An unknown or null id is OUT_OF_VOCABULARY, as for the id fields."""
        columns = []
        for values, kind in zip(parts, self._kinds()):
            columns.append(self.vocabulary.ids(values) if kind is None
                           else np.asarray(kind.transform(values), dtype=np.int64).reshape(len(values)))
        return np.stack(columns, axis=1)

    def transform(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """``[N]`` cells -> ``Int64[N, L, P]``. A cell: null or [] (empty), a list of ids (``P`` = 1)
        or of ``[id, side...]`` lists, or a separated string (``P`` = 1); only its last ``L`` elements
        are kept. Anything else raises FeatureValueError with its row."""
        length, parts = self.state["max_length"], self.parts
        flat, counts = self._flatten(values)
        columns = [object_array(flat)] if parts == 1 else [object_array([element[k] for element in flat])
                                                            for k in range(parts)]
        ids = _in_cells(lambda: self.element_ids(columns), counts)
        out = np.zeros((len(counts), length, parts), np.int64)
        # Left-padded: a row's i-th kept element of n goes to position L - n + i.
        within = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        out[np.repeat(np.arange(len(counts)), counts), length - np.repeat(counts, counts) + within] = ids
        return out

    def check_request(self, values: Sequence[Any]) -> None:
        """A request's list may be longer than ``max_length`` (its last ``max_length`` are used), but
        not longer than MAX_PARTS elements, nor a string longer than MAX_TEXT_CHARS."""
        for row, cell in enumerate(values):
            if isinstance(cell, str):
                checked_string(cell, row, MAX_TEXT_CHARS)
                size = cell.count(self.state["separator"]) + 1
            elif isinstance(cell, LISTS):
                size = len(cell)
            else:
                continue  # transform says what is wrong with it
            if size > MAX_PARTS:
                raise FeatureValueError(row, f"a list of {size} elements, more than {MAX_PARTS} (only the last "
                                             f"{self.state['max_length']} are used)")
            for element in cell if isinstance(cell, LISTS) else ():
                for part in element if isinstance(element, LISTS) else (element,):
                    if isinstance(part, str):
                        checked_string(part, row)

    def example_values(self, rng: np.random.Generator, count: int) -> list[Any]:
        tokens = [self._tokens(kind) for kind in self._kinds()]

        def element(known: bool) -> Any:
            ids = [options[rng.integers(len(options))] if known and options else "unseen-id" for options in tokens]
            return ids[0] if self.parts == 1 else ids

        cells: list[Any] = [None, [], [element(False), element(True)],
                            [element(True) for _ in range(self.state["max_length"] + 2)]]
        while len(cells) < count:
            cells.append([element(True) for _ in range(int(rng.integers(1, self.state["max_length"] + 1)))])
        return cells[:count]

    # --- helpers ---

    def _kinds(self) -> list[FeatureType | None]:
        if len(self.linked) != self.parts:
            if self.state["shares"] is not None or self.state["side"]:
                raise RuntimeError(f"sequence feature {self.name!r} used before link()")
            return [None]
        return self.linked

    def _tokens(self, kind: FeatureType | None) -> list[str]:
        vocabulary = self.state.get("vocabulary") if kind is None else kind.state.get("vocabulary")
        return list(vocabulary[:50]) if isinstance(vocabulary, list) else ["1", "2", "3"]

    def _flatten(self, values: Sequence[Any] | np.ndarray) -> tuple[list[Any], np.ndarray]:
        """Every cell's kept elements, flat, and ``[N]`` how many each cell kept."""
        kept = [self._elements(cell, row) for row, cell in enumerate(_cells(values))]
        return list(chain.from_iterable(kept)), np.fromiter(map(len, kept), np.int64, len(kept))

    def _elements(self, cell: Any, row: int) -> list[Any]:
        """One cell's elements, the last ``max_length`` of them."""
        length, parts = self.state["max_length"], self.parts
        if isinstance(cell, str):
            if parts > 1:
                raise FeatureValueError(row, f"expected a list of [id, {', '.join(self.state['side'])}] lists, "
                                             f"got the string {shown(cell)}")
            return [part for part in cell.split(self.state["separator"]) if part][-length:]
        if isinstance(cell, (list, tuple)) or (isinstance(cell, np.ndarray) and cell.ndim >= 1):
            elements = list(cell[-length:])
            if parts > 1:
                for position, element in enumerate(elements):
                    if not isinstance(element, LISTS) or len(element) != parts:
                        raise FeatureValueError(row, f"element {position} of the kept list: expected "
                                                     f"[id, {', '.join(self.state['side'])}], got {shown(element)}")
            return elements
        if is_null(cell):
            return []
        raise FeatureValueError(row, f"expected a list of ids or a {self.state['separator']!r}-separated string, "
                                     f"got {shown(cell)}")


def _check_history(history: Any, key: str) -> dict[str, Any]:
    if not isinstance(history, Mapping):
        raise ConfigError(f"{key}: expected a mapping {{user, time, item, positive}}, got {history!r}")
    unknown = sorted(set(history) - set(HISTORY_KEYS))
    if unknown:
        raise ConfigError(f"{key}: unknown key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(HISTORY_KEYS)}")
    for name in ("user", "time", "item"):
        if not isinstance(history.get(name), str):
            raise ConfigError(f"{key}.{name}: required, the name of a column; got {history.get(name)!r}")
    checked = {name: history[name] for name in ("user", "time", "item")}
    checked["positive"] = checked_positive(history.get("positive"), f"{key}.positive")
    return checked


def _in_cells(encode: Callable[[], Result], counts: np.ndarray) -> Result:
    """``encode()`` of flat elements, a FeatureValueError's element turned into its cell's row."""
    try:
        return encode()
    except FeatureValueError as error:
        cell = int(np.searchsorted(np.cumsum(counts), error.row, side="right"))
        raise FeatureValueError(cell, f"in the list: {error.message}") from None


def _cells(values: Sequence[Any] | np.ndarray) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) and values.dtype != object else list(values)
