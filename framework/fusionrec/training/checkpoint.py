"""Opening a fusionrec checkpoint, and checking that it belongs to a config: every command that takes a
checkpoint goes through :func:`read_checkpoint`, so a file that is not one (missing, empty, truncated,
another kind of file) is one ``fusionrec: error:`` line naming it, never a traceback."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from fusionrec.data.schema import FeatureSpec
from fusionrec.errors import ConfigError
from fusionrec.training.module import DEFAULT_COMPONENTS, MultiTaskModule, component_config

# What fusionrec and Lightning read from a checkpoint before they can rebuild its model.
REQUIRED = {"": ("state_dict", "hyper_parameters", "pytorch-lightning_version"),
            "hyper_parameters": ("tasks", "preprocessing"),
            "hyper_parameters.preprocessing": ("features", "tasks")}
# Model settings compared with a checkpoint, every component option included (a dropout too): the model is
# tested or resumed as it was built. The optimiser's learning rate and weight decay, and task weights, may change.
ARCHITECTURE = ("embedding_dim", "encoders", "fusion", "trunk", "balancer")
# Feature options that change how values are encoded; the checkpoint's fitted state was made with its
# own. (root and strict only say where content is read from and how strictly: they may change.)
ENCODING_OPTIONS = ("separator", "max_length", "na_values", "hash_buckets", "history", "side", "vocabulary")


def read_checkpoint(path: str | Path, option: str = "--ckpt") -> dict[str, Any]:
    """The checkpoint at ``path`` as plain data (``torch.load(weights_only=True)``); a ConfigError naming
    ``option`` and the file when it cannot be read or lacks what a fusionrec checkpoint holds."""
    path = Path(path)
    where = f"{option} {path}"
    if path.is_dir():
        raise ConfigError(f"{where}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise ConfigError(f"{where}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{where}: the file is empty, not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, KeyError, IndexError,
            zipfile.BadZipFile):
        # What torch.load raises on a cut-off zip archive, on bytes that are not a pickle, and (weights_only)
        # on pickled objects, which fusionrec's plain-data checkpoints never hold.
        raise ConfigError(f"{where}: not a readable checkpoint (truncated, corrupt, or another kind of file)"
                          ) from None
    for name, keys in REQUIRED.items():
        section = state if not name else _lookup(state, name)
        missing = [key for key in keys if not isinstance(section, dict) or key not in section]
        if missing:
            at = f"{name}." if name else ""
            raise ConfigError(f"{where}: not a fusionrec checkpoint (no {at}{missing[0]})")
    return state


def _lookup(state: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        state = state.get(key) if isinstance(state, dict) else None
    return state


def config_differences(state: dict[str, Any], features: dict[str, FeatureSpec], scenario: str | None,
                       model: dict[str, Any]) -> list[str]:
    """What a config (its ``features``, ``scenario`` column and the model's settings) has that the
    checkpoint ``state`` was not trained with: one phrase per difference, empty when they match."""
    hyper = state["hyper_parameters"]
    preprocessing = hyper["preprocessing"]
    trained = {name: entry.get("type") for name, entry in preprocessing["features"].items()}
    differences = _named_differences("data.features", trained, {name: spec.type for name, spec in features.items()})
    for name, spec in features.items():
        entry = preprocessing["features"].get(name)
        if entry is None or entry.get("type") != spec.type:
            continue  # said above
        for option in ENCODING_OPTIONS:
            stored = entry.get(spec.feature_type.stored_as.get(option, option))
            if option in spec.options and _plain(option, stored) != _plain(option, spec.options[option]):
                differences.append(f"data.features.{name}.{option} is {stored!r} in the checkpoint, "
                                   f"{spec.options[option]!r} in the config")
    if preprocessing.get("scenario") != scenario:
        differences.append(f"data.scenario is {preprocessing.get('scenario')!r} in the checkpoint, "
                           f"{scenario!r} in the config")
    differences += _named_differences("model.tasks", _task_shapes(hyper["tasks"]), _task_shapes(model["tasks"]))
    trained_model, configured_model = _architecture(hyper), _architecture(model)
    differences += [f"model.{key} is {trained_model[key]!r} in the checkpoint, {configured_model[key]!r} in the config"
                    for key in ARCHITECTURE if trained_model[key] != configured_model[key]]
    return differences


def _plain(option: str, value: Any) -> Any:
    # na_values are matched as strings (a config's -1 is the checkpoint's "-1").
    return [str(item) for item in value or []] if option == "na_values" else value


def _architecture(hyper: dict[str, Any]) -> dict[str, Any]:
    # Unset and default settings build the same model: `fusion: null` is `fusion: {name: concat}`.
    return {"embedding_dim": hyper.get("embedding_dim"), "encoders": hyper.get("encoders") or {},
            **{key: component_config(key, hyper.get(key)) for key in DEFAULT_COMPONENTS}}


def _task_shapes(tasks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # A task's weight only scales its loss; its head, label (the task's name by default) and options shape it.
    return {name: {"label": name, **{key: value for key, value in spec.items() if key != "weight"}}
            for name, spec in tasks.items()}


def _named_differences(key: str, trained: dict[str, Any], configured: dict[str, Any]) -> list[str]:
    differences = []
    only_trained = [name for name in trained if name not in configured]
    only_configured = [name for name in configured if name not in trained]
    if only_trained:
        differences.append(f"{key}: {', '.join(only_trained)} only in the checkpoint")
    if only_configured:
        differences.append(f"{key}: {', '.join(only_configured)} only in the config")
    differences += [f"{key}.{name} is {trained[name]!r} in the checkpoint, {configured[name]!r} in the config"
                    for name in trained if name in configured and trained[name] != configured[name]]
    return differences


def require_matching_config(state: dict[str, Any], where: str, features: dict[str, str], scenario: str | None,
                            model: dict[str, Any]) -> None:
    """A ConfigError naming what differs when the checkpoint was trained with another config: testing it
    under this one would score another model's tasks, and resuming it would mix two runs."""
    differences = config_differences(state, features, scenario, model)
    if differences:
        raise ConfigError(f"{where}: the checkpoint was trained with another config: {'; '.join(differences)}")


def load_module(path: str | Path, option: str = "--ckpt") -> MultiTaskModule:
    """The checkpoint's module on the CPU, in eval mode."""
    read_checkpoint(path, option)
    try:
        return MultiTaskModule.load_from_checkpoint(path, map_location="cpu").eval()
    except RuntimeError as error:  # load_state_dict: weights that do not fit the saved hyperparameters
        raise ConfigError(f"{option} {path}: its weights do not match its own settings "
                          f"({str(error).splitlines()[0]})") from None
