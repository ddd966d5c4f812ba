"""The base of every feature type: how one kind of column becomes the model's input arrays.

Standard library and numpy only: a scoring service imports the feature types of a bundle without
torch or pandas, and calls the very ``transform`` that training called.

A feature type is registered by a plugin (``fusionrec_register_feature_types``) under the name configs
use (``data.features.<column>.type``). One instance describes one column: built from its config
options to be fitted on the training split, then rebuilt from its fitted ``state`` (plain data, kept in
checkpoints and bundle manifests) everywhere else::

    kind = Categorical("item_id", Categorical.check_options({"min_count": 2}, "data.features.item_id"))
    partial = kind.merge([kind.fit(chunk) for chunk in chunks])   # streaming, DDP: partial fits merge
    state = kind.fitted(partial)                                  # {"type": "categorical", "vocabulary": [...]}
    kind = Categorical("item_id", state)                          # in predict, export, serving
    ids = kind.transform(values)                                  # raw values -> Int64[N]
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fusionrec.errors import ConfigError

# Reserved ids of every vocabulary (and hashed field): 0 pads a multi-valued cell, 1 is the
# out-of-vocabulary id that unknown and missing values share; the vocabulary's tokens start at 2.
PADDING, OUT_OF_VOCABULARY, RESERVED = 0, 1, 2


class FeatureValueError(ValueError):
    """A value a feature type cannot encode. ``row``: its position in the values given to ``transform``
    (or ``fit``), None when the column as a whole is at fault (``fitted`` on a column without values);
    ``count``: how many rows share the problem, where the type knows. The caller says where the values
    came from (a file's column, a request's field)."""

    def __init__(self, row: int | None, message: str, count: int = 1):
        super().__init__(message)
        self.row, self.message, self.count = row, message, count


@dataclass(frozen=True)
class FieldInfo:
    """What an encoder needs to know about its field, read off the fitted state.

    ``cardinality`` counts ids including the padding (0) and out-of-vocabulary (1) rows;
    ``width`` is the padded length of a multi-valued field or the length of a vector field;
    ``extra``: whatever else the type tells its encoders (a content field's ``strict``, a sequence's
    shared vocabulary).
    """

    name: str
    type: str
    cardinality: int = 0
    width: int = 1
    extra: dict = field(default_factory=dict)


class FeatureType:
    """One column's type. Subclasses set the class attributes and implement ``transform`` (and ``fit``,
    ``merge``, ``fitted`` when the type learns something from the training split).

    ``self.name``: the column; ``self.state``: its options (before fitting) or fitted state (after),
    plain data either way.
    """

    type_name: ClassVar[str]  # the name configs use and the plugin registers the class under: "categorical"
    options: ClassVar[Mapping[str, Any]] = {}  # option -> default
    default_encoder: ClassVar[str]  # registry name of the encoder a field of this type gets by default
    null_means: ClassVar[str] = "missing"  # what a null value encodes to, in words (manifest, docs)
    # Whether the column says whose row it is (an id): ``predict`` writes such columns beside the scores.
    key_column: ClassVar[bool] = False
    # Options its fitted state keeps under another key, ``{option: state key}`` (checkpoints are checked
    # against a config's options by them).
    stored_as: ClassVar[Mapping[str, str]] = {}
    # A content type (text, image, audio) is prepared per distinct item by a content encoder instead of
    # ``transform``, and is served as an item vector; ``contents`` says what each cell's item is.
    content: ClassVar[bool] = False

    def __init__(self, name: str, state: Mapping[str, Any]):
        self.name = name
        self.state = dict(state)

    # --- config ---

    @classmethod
    def check_options(cls, options: Mapping[str, Any], key: str) -> dict[str, Any]:
        """The options with defaults filled in; a ConfigError naming ``key`` for an unknown option (this
        default) or ``key.<option>`` for a bad value (a subclass's override, after calling this one)."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise ConfigError(f"{key}: unknown option(s) {', '.join(map(repr, unknown))} for a {cls.type_name} "
                              f"feature; accepted: {', '.join(cls.options) or '(none)'}")
        return {**cls.options, **options}

    # --- fitting, on the training split ---

    def fit(self, values: np.ndarray) -> Any:
        """What one chunk of the training split teaches (counts, moments...): a partial fit.
        ``values``: ``[N]`` raw cells (object or numeric dtype)."""
        return None

    def merge(self, partials: Sequence[Any]) -> Any:
        """Partial fits of several chunks (or processes) -> one, as if fitted on all their rows."""
        return None

    def fitted(self, partial: Any) -> dict[str, Any]:
        """The fitted state: plain data (JSON types), including ``"type"``; checkpoints and bundle
        manifests store it, and ``type(self)(name, state)`` rebuilds the fitted feature from it."""
        return {"type": self.type_name, **self.state}

    @property
    def built(self) -> bool:
        """Whether training builds the column from other columns of the log (a sequence's ``history``:
        :mod:`fusionrec.data.history`, gathered per batch) instead of reading a column of that name;
        ``transform`` still encodes the values a request sends."""
        return False

    @property
    def fit_column(self) -> str:
        """The column ``fit`` reads: the feature's own, or for a built one the column it is built from."""
        return self.name

    def link(self, features: Mapping[str, "FeatureType"]) -> None:
        """Called once every feature of the schema is built (fitted or from state), before ``fit`` or
        ``transform``: a type that reads another feature's state (a sequence sharing an id field's
        vocabulary) looks it up here. Raises ConfigError naming the key if that feature is unfit for it."""

    def field_info(self) -> FieldInfo:
        """What the field's encoder is told (fitted state only)."""
        return FieldInfo(self.name, self.type_name)

    # --- applying: the one transform training, predict, export and serving all call ---

    def transform(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        """``[N]`` raw values (a numpy array from a file's column, or a request's JSON list) -> the
        model's input array ``[N, ...]``. A null (None, NaN) encodes as ``null_means`` says; a value
        the type cannot encode raises :class:`FeatureValueError` with its row."""
        raise NotImplementedError

    def contents(self, values: Sequence[Any] | np.ndarray) -> list[str | None]:
        """A content type's one rule for its cells: each cell's item (a text, a file path resolved as the
        type's options say), or None for no content. Training's media column and serving's item vectors
        both call it."""
        raise NotImplementedError(f"{self.type_name} is not a content type")

    def check_request(self, values: Sequence[Any]) -> None:
        """Limits on a request's values beyond what ``transform`` checks (string lengths, list lengths),
        so that no client can make the service do unbounded work; raises FeatureValueError."""

    def example_values(self, rng: np.random.Generator, count: int) -> list[Any]:
        """``count`` raw values, as a client sends them, exercising the type's encoding paths (known and
        unknown ids, a null...): a bundle's golden rows."""
        raise NotImplementedError


def implementation(kind: type[FeatureType]) -> str:
    """Where a type's class lives, ``"module:QualName"``: what a bundle's manifest records per field."""
    return f"{kind.__module__}:{kind.__qualname__}"


def load_implementation(entry: Mapping[str, Any]) -> type[FeatureType]:
    """The class a manifest entry's ``implementation`` names; a ValueError saying what is wrong when
    it cannot be imported, is no FeatureType, or is not of the entry's ``type``."""
    where = entry.get("implementation")
    module, _, qualname = str(where).partition(":")
    if not isinstance(where, str) or not module or not qualname:
        raise ValueError(f"implementation {where!r} is not 'module:QualName'")
    try:
        kind: Any = importlib.import_module(module)
        for part in qualname.split("."):
            kind = getattr(kind, part)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"implementation {where!r} cannot be imported ({error}); install the plugin that "
                         f"provides the '{entry.get('type')}' feature type") from None
    if not (isinstance(kind, type) and issubclass(kind, FeatureType)):
        raise ValueError(f"implementation {where!r} is not a FeatureType subclass")
    if kind.type_name != entry.get("type"):
        raise ValueError(f"implementation {where!r} is the '{kind.type_name}' feature type, not "
                         f"'{entry.get('type')}'")
    return kind
