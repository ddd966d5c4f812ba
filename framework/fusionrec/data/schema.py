"""The data schema of a config: feature columns by type, and tasks with their label columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from fusionrec.errors import ConfigError
from fusionrec.plugins import Registry, check_options

# Feature type -> options it accepts, with defaults. The type also names its default encoder.
FEATURE_TYPES: dict[str, dict[str, Any]] = {
    "categorical": {"min_count": 1, "max_size": None},
    "numeric": {"na_values": []},  # na_values: strings that mean "missing", e.g. ["unknown", "-"]
    "multi_categorical": {"separator": "|", "max_length": 16, "min_count": 1, "max_size": None},
    "vector": {},
    # Content read by an encoder plugin; ``root``: directory for relative file paths; ``strict``: an
    # unreadable file stops training instead of counting as missing.
    "text": {"strict": False},
    "image": {"root": None, "strict": False},
    "audio": {"root": None, "strict": False},
}


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    type: str
    options: dict[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    head: str
    label: str
    weight: float
    options: dict[str, Any]


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def parse_features(config: Any, key: str = "data.features") -> dict[str, FeatureSpec]:
    """``{column: {type: ..., **options}}`` -> specs, every key checked."""
    specs = {}
    for name, entry in _mapping(config, key).items():
        entry_key = f"{key}.{name}"
        entry = dict(_mapping(entry, entry_key))
        kind = entry.pop("type", None)
        if kind not in FEATURE_TYPES:
            raise ConfigError(f"{entry_key}.type: expected one of {', '.join(FEATURE_TYPES)}, got {kind!r}")
        unknown = sorted(set(entry) - set(FEATURE_TYPES[kind]))
        if unknown:
            raise ConfigError(
                f"{entry_key}: unknown option(s) {', '.join(map(repr, unknown))} for a {kind} feature; "
                f"accepted: {', '.join(FEATURE_TYPES[kind]) or '(none)'}"
            )
        specs[name] = FeatureSpec(str(name), kind, {**FEATURE_TYPES[kind], **entry})
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
        specs[name] = TaskSpec(str(name), head, str(label), float(weight), entry)
    if not specs:
        raise ConfigError(f"{key}: declare at least one task")
    return specs
