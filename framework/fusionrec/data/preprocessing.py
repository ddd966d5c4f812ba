"""Fitted preprocessing: what each feature type learned on the training split, and the labels' state.

The fitted state is plain data (lists, dicts, numbers), so it travels inside checkpoints and
export bundles. Every column goes through its feature type (:mod:`fusionrec.features`) as one numpy
array: the very ``transform`` a bundle's scoring service calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from fusionrec.data.batches import TensorTable
from fusionrec.data.media import media_column
from fusionrec.data.schema import FeatureSpec, TaskSpec
from fusionrec.errors import ConfigError, DataError, describe_value
from fusionrec.features.base import (OUT_OF_VOCABULARY, PADDING, RESERVED, FeatureType,  # noqa: F401 (re-exported)
                                     FeatureValueError, FieldInfo)
from fusionrec.plugins import Registry, get_registry

Result = TypeVar("Result")

# Id rule 2 (fusionrec.features.values.id_token): a whole float id is its integer's string, 1.0 -> "1",
# value by value. Before it, training read a float column holding any non-whole value as "1.0" (serving
# read "1"), so such a checkpoint's vocabulary holds "1.0"-style tokens its float ids no longer match.
ID_RULE = 2
_OLD_WHOLE_FLOAT = re.compile(r"-?\d+\.0")


def check_id_rule(state: Mapping[str, Any]) -> None:
    """Refuse fitted state from before :data:`ID_RULE` whose vocabularies the current rule would misread."""
    if state.get("id_rule") == ID_RULE:
        return
    for name, entry in state["features"].items():
        whole = next((token for token in entry.get("vocabulary") or () if _OLD_WHOLE_FLOAT.fullmatch(token)), None)
        if whole is not None:
            raise ConfigError(f"preprocessing.features.{name}: the vocabulary holds {whole!r}, a whole number "
                              f"written as a float by a fusionrec before id rule {ID_RULE}, which now reads "
                              f"{whole} as {str(int(float(whole)))!r} in training as in serving; train the model "
                              f"again")


def _where(frame: pd.DataFrame, column: str) -> str:
    return f"{frame.attrs.get('source', 'data')}, column '{column}'"


def column_values(values: pd.Series) -> np.ndarray:
    """A column as its feature type takes it: a numpy array, nulls as None (or NaN in a float array)."""
    if isinstance(values.dtype, pd.api.extensions.ExtensionDtype) and not isinstance(values.dtype, pd.CategoricalDtype):
        if values.dtype.kind in "iufb" and not values.hasnans:
            return values.to_numpy(dtype=values.dtype.numpy_dtype)
        return values.to_numpy(dtype=object, na_value=None)
    return values.to_numpy()


def applied(function: Callable[[], Result], where: str, index: pd.Index | None = None) -> Result:
    """``function()``, a FeatureValueError turned into a DataError naming ``where`` and the file's row
    (``index``: the frame's, which numbers rows as the file does)."""
    try:
        return function()
    except FeatureValueError as error:
        if error.row is None:
            raise DataError(f"{where}: {error.message}") from None
        row = error.row if index is None else index[error.row]
        more = f" ({error.count} such rows)" if error.count > 1 else ""
        raise DataError(f"{where}: row {row}: {error.message}{more}") from None


def feature_types(state: Mapping[str, Mapping[str, Any]], classes: Mapping[str, type[FeatureType]] | None = None
                  ) -> dict[str, FeatureType]:
    """Each feature's type rebuilt from its fitted state, linked; its class from ``classes`` (by
    column), else the one the installed plugins register under the state's ``type``."""
    classes = dict(classes or {})
    for name, entry in state.items():
        if name not in classes:
            classes[name] = get_registry().get("feature_types", entry["type"],
                                               f"preprocessing.features.{name}.type").factory
    types = {name: classes[name](name, entry) for name, entry in state.items()}
    for kind in types.values():
        kind.link(types)
    return types


class Preprocessor:
    """Turns a table into tensors with state fitted on the training split.

    ``state = {"features": {name: {...}}, "tasks": {name: {"head", "label", "parent", "labels"}}, "scenario": column}``
    (``scenario``: the categorical feature naming each row's scenario, or None).
    """

    def __init__(self, state: dict[str, Any], classes: Mapping[str, type[FeatureType]] | None = None):
        check_id_rule(state)
        self.state = state
        # Each type's lookup tables are built once: streamed data is encoded a batch at a time.
        self.types = feature_types(state["features"], classes)

    # --- fitting ---

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: dict[str, FeatureSpec], tasks: dict[str, TaskSpec],
            registry: Registry, scenario: str | None = None,
            catalogue: pd.DataFrame | None = None) -> "Preprocessor":
        """Fitted on the training rows ``frame`` and the items of ``catalogue`` (:meth:`IncrementalFit.add_items`)."""
        fit = IncrementalFit(features, tasks, registry, scenario)
        fit.update(frame)
        if catalogue is not None:
            fit.add_items(catalogue)
        return fit.result()

    # --- applying ---

    def field_infos(self) -> dict[str, FieldInfo]:
        return {name: kind.field_info() for name, kind in self.types.items()}

    def transform(self, frame: pd.DataFrame, registry: Registry, with_labels: bool = True) -> TensorTable:
        features, media = {}, {}
        for name, kind in self.types.items():
            if kind.built and name not in frame.columns:
                # The data module gathers it per batch from the log (fusionrec.data.history); a table that
                # has the column (recommend's users, each history a list) is read as it is.
                continue
            if kind.content:
                media[name] = media_column(frame[name], kind)
            else:
                values = column_values(frame[name])
                features[name] = torch.from_numpy(applied(lambda: kind.transform(values), _where(frame, name),
                                                          frame.index))
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


class IncrementalFit:
    """:meth:`Preprocessor.fit` one chunk of rows at a time, for data read in pieces
    (:mod:`fusionrec.data.streaming`); over a single chunk it is exactly ``Preprocessor.fit``.

    Each feature type fits every chunk and merges the partial fits (id counts add up: memory is one
    count per distinct id; numeric moments merge by Chan et al.'s pairwise update). The task label
    columns are kept (one value per row and task), because each head fits its label state from a
    whole column (``fit_labels``).
    """

    # Chunks' partial fits are merged every this many chunks: memory stays near one vocabulary
    # without an O(vocabulary) merge per chunk.
    MERGE_EVERY = 16

    def __init__(self, features: dict[str, FeatureSpec], tasks: dict[str, TaskSpec], registry: Registry,
                 scenario: str | None = None):
        self.features, self.tasks, self.registry, self.scenario = features, tasks, registry, scenario
        self.types = {name: spec.feature_type(name, spec.options) for name, spec in features.items()}
        for kind in self.types.values():
            kind.link(self.types)
        self.partials: dict[str, list[Any]] = {name: [] for name in features}
        self.labels: dict[str, list[pd.Series]] = {}
        self.where: dict[str, str] = {}  # column -> where its first chunk came from, for messages

    def update(self, frame: pd.DataFrame) -> None:
        for name, kind in self.types.items():
            where = _where(frame, kind.fit_column)
            self.where.setdefault(name, where)
            values = column_values(frame[kind.fit_column])
            partials = self.partials[name]
            partials.append(applied(lambda: kind.fit(values), where, frame.index))
            if len(partials) >= self.MERGE_EVERY:
                self.partials[name] = [kind.merge(partials)]
        for column in dict.fromkeys(task.label for task in self.tasks.values()):
            self.where.setdefault(column, _where(frame, column))
            self.labels.setdefault(column, []).append(frame[column])

    def add_items(self, frame: pd.DataFrame) -> None:
        """The item catalogue (``data.catalogue``, one row per item): each row counts as one more row of
        the features it has columns for, so that an item without training rows gets its own id."""
        for name, kind in self.types.items():
            if not kind.built and kind.fit_column in frame.columns:
                values = column_values(frame[kind.fit_column])
                self.partials[name].append(applied(lambda: kind.fit(values), _where(frame, kind.fit_column),
                                                   frame.index))

    def result(self) -> "Preprocessor":
        fitted = {name: applied(lambda: kind.fitted(kind.merge(self.partials[name])), self.where.get(name, name))
                  for name, kind in self.types.items()}
        labels = {}
        for name, task in self.tasks.items():
            head = self.registry.get("heads", task.head, f"model.tasks.{name}.head").factory
            parts = self.labels[task.label]
            column = parts[0] if len(parts) == 1 else pd.concat(parts)
            labels[name] = {"head": task.head, "label": task.label, "parent": task.parent,
                            "labels": head.fit_labels(column, self.where[task.label], task.options)}
        return Preprocessor({"features": fitted, "tasks": labels, "scenario": self.scenario, "id_rule": ID_RULE},
                            {name: spec.feature_type for name, spec in self.features.items()})
