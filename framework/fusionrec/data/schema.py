"""The data schema of a config: feature columns by type, and tasks with their label columns."""

from __future__ import annotations

import graphlib
from dataclasses import dataclass
from typing import Any, Mapping

from fusionrec.errors import ConfigError
from fusionrec.features.base import FeatureType
from fusionrec.plugins import Registry, check_options, get_registry


@dataclass(frozen=True)
class FeatureSpec:
    """A column's feature type (its registry name and class) and its options, defaults filled in."""

    name: str
    type: str
    options: dict[str, Any]
    feature_type: type[FeatureType]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    head: str
    label: str
    weight: float
    options: dict[str, Any]
    parent: str | None = None  # a conditional task's parent task (its head's ``parent`` option)


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def parse_features(config: Any, key: str = "data.features", registry: Registry | None = None
                   ) -> dict[str, FeatureSpec]:
    """``{column: {type: ..., **options}}`` -> specs, every key checked by the type the registry
    (default: the installed plugins') names."""
    registry = registry or get_registry()
    specs = {}
    for name, entry in _mapping(config, key).items():
        entry_key = f"{key}.{name}"
        entry = dict(_mapping(entry, entry_key))
        kind = entry.pop("type", None)
        feature_type = registry.get("feature_types", kind, f"{entry_key}.type").factory
        specs[name] = FeatureSpec(str(name), kind, feature_type.check_options(entry, entry_key), feature_type)
    if not specs:
        raise ConfigError(f"{key}: declare at least one feature column")
    return specs


def parse_tasks(config: Any, registry: Registry, key: str = "model.tasks") -> dict[str, TaskSpec]:
    """``{task: {head: ..., label: column, weight: alpha, **head options}}`` -> specs."""
    specs = {}
    for name, entry in _mapping(config, key).items():
        entry_key = f"{key}.{name}"
        entry = dict(_mapping(entry, entry_key))
        head = entry.pop("head", None)
        if head is None:
            raise ConfigError(f"{entry_key}.head: missing; available: {', '.join(registry.components['heads'])}")
        factory = registry.get("heads", head, f"{entry_key}.head").factory
        label = entry.pop("label", name)
        weight = entry.pop("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise ConfigError(f"{entry_key}.weight: expected a number >= 0, got {weight!r}")
        check_options(factory, entry, entry_key, skip=2)
        parent = entry.get("parent")  # stays among the options: the head takes it too
        if parent is not None and not isinstance(parent, str):
            raise ConfigError(f"{entry_key}.parent: expected a task name, got {parent!r}")
        specs[name] = TaskSpec(str(name), head, str(label), float(weight), entry, parent)
    if not specs:
        raise ConfigError(f"{key}: declare at least one task")
    _check_parents(specs, registry, key)
    return specs


def _check_parents(specs: dict[str, TaskSpec], registry: Registry, key: str) -> None:
    """A conditional task scores its event after its parent's, from the parent's logit: the parent
    must be another declared task whose head declares ``can_be_parent``, and parents must not form
    a cycle."""
    tasks = f"tasks: {', '.join(specs)}"
    conditional = {name: spec.parent for name, spec in specs.items() if spec.parent is not None}
    for name, parent in conditional.items():
        if parent == name:
            raise ConfigError(f"{key}.{name}.parent: a task cannot be its own parent; {tasks}")
        if parent not in specs:
            raise ConfigError(f"{key}.{name}.parent: no task named {parent!r}; {tasks}")
    try:
        graphlib.TopologicalSorter({name: [parent] for name, parent in conditional.items()}).prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1]
        raise ConfigError(f"{key}.{cycle[0]}.parent: the parents form a cycle, {' -> '.join(cycle)}; {tasks}") from None
    for name, parent in conditional.items():
        if not registry.get("heads", specs[parent].head, f"{key}.{parent}.head").factory.can_be_parent:
            parents = [repr(head) for head, component in registry.components["heads"].items()
                       if component.factory.can_be_parent]
            raise ConfigError(f"{key}.{name}.parent: task '{parent}' has a '{specs[parent].head}' head; "
                              f"a conditional task's parent needs a {' or '.join(parents)} head; {tasks}")
