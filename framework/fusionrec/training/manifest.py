"""The component manifest stored in every checkpoint: which plugin, distribution and version
provided each component of the model, checked before a checkpoint is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusionrec.errors import ConfigError
from fusionrec.models.multitask import default_encoder, trunk_tree
from fusionrec.plugins import Registry

# Manifest section -> registry slot.
MANIFEST_SLOTS = {"encoders": "encoders", "fusion": "fusions", "trunk": "trunks", "trunk_parts": "trunks",
                  "heads": "heads", "balancer": "balancers", "retrieval": "retrieval_models"}
# The sections that name one component per field, trunk part or task.
KEYED_SECTIONS = ("encoders", "trunk_parts", "heads")


def component_manifest(registry: Registry, features: dict[str, dict[str, Any]], encoders: dict[str, dict[str, Any]],
                       fusion: dict[str, Any], trunk: dict[str, Any], heads: dict[str, str],
                       balancer: dict[str, Any], retrieval: dict[str, Any] | None = None) -> dict[str, Any]:
    """Registry name -> providing plugin, distribution and version, for every component in use.
    ``features``: the fitted preprocessing's ``{field: {type, ...}}``; ``encoders``: the per-field
    overrides; ``fusion``, ``trunk``, ``balancer``, ``retrieval`` (or None): ``{name, **options}``;
    ``heads``: ``{task: head name}``."""
    def entry(slot: str, name: str) -> dict[str, str]:
        return {"name": name, **registry.get(slot, name, slot).manifest_entry()}

    return {
        "encoders": {field: entry("encoders", encoders.get(field, {}).get("name", default_encoder(registry, info["type"])))
                     for field, info in features.items()},
        "fusion": entry("fusions", fusion["name"]),
        "trunk": entry("trunks", trunk["name"]),
        # The parts a composite trunk is built on, by config key below model.trunk ("base").
        "trunk_parts": {node.key.removeprefix("model.trunk."): entry("trunks", node.name)
                        for node in trunk_tree(registry, trunk, "model.trunk")[:-1]},
        "heads": {task: entry("heads", head) for task, head in heads.items()},
        "balancer": entry("balancers", balancer["name"]),
        "retrieval": entry("retrieval_models", retrieval["name"]) if retrieval else {},
    }


def require_installed_components(checkpoint_path: str | Path, registry: Registry) -> None:
    """Every component in the checkpoint's manifest (``checkpoint["fusionrec"]["components"]``) must
    be registered; otherwise a ConfigError names it and the distribution that provided it."""
    from fusionrec.training.checkpoint import read_checkpoint  # it imports the module, which imports this

    manifest = read_checkpoint(checkpoint_path, "checkpoint").get("fusionrec", {}).get("components", {})
    for section, slot in MANIFEST_SLOTS.items():
        entries = manifest.get(section, {})
        named = entries.items() if section in KEYED_SECTIONS else [(None, entries)]
        for owner, entry in named:
            if entry and entry["name"] not in registry.components[slot]:
                where = f"{section}.{owner}" if owner else section
                raise ConfigError(
                    f"{checkpoint_path}: the model's {where} is the {slot[:-1]} '{entry['name']}' from "
                    f"{entry['distribution']} {entry['version']}, which no installed plugin provides; "
                    f"install {entry['distribution']}")
