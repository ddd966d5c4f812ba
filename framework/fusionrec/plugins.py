"""Plugin discovery and the component registry built from the registration hooks.

Plugins come from the ``fusionrec`` entry-point group, built-ins included, each loaded in its own
try: a plugin that fails to import is a warning naming it, or an error when
``FUSIONREC_STRICT_PLUGINS=1``. ``FUSIONREC_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the plugins
that ship with fusionrec itself, for reproducible runs.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from fusionrec import hookspecs
from fusionrec.components.options import check_value, option_annotations
from fusionrec.errors import ConfigError, PluginError

ENTRY_POINT_GROUP = "fusionrec"
BUILTIN_DISTRIBUTION = "fusionrec"
SLOTS = ("feature_types", "encoders", "fusions", "trunks", "heads", "balancers", "retrieval_models")


@dataclass(frozen=True)
class Component:
    slot: str
    name: str
    factory: type
    plugin: str
    distribution: str
    version: str

    def manifest_entry(self) -> dict[str, str]:
        return {"plugin": self.plugin, "distribution": self.distribution, "version": self.version}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """Every registered component, by slot and name."""

    def __init__(self, plugin_manager: pluggy.PluginManager, distributions: dict[str, tuple[str, str]]):
        self.plugin_manager = plugin_manager
        self.components: dict[str, dict[str, Component]] = {}
        for slot in SLOTS:
            hook = getattr(plugin_manager.hook, f"fusionrec_register_{slot}")
            found: dict[str, Component] = {}
            for impl in hook.get_hookimpls():
                distribution, version = distributions.get(impl.plugin_name, ("(registered in code)", ""))
                for name, factory in (impl.function() or {}).items():
                    if slot == "feature_types" and getattr(factory, "type_name", None) != name:
                        raise PluginError(
                            f"feature type '{name}' of plugin '{impl.plugin_name}' ({distribution}) is a class "
                            f"whose type_name is {getattr(factory, 'type_name', None)!r}; the two must be equal")
                    if name in found:
                        raise PluginError(
                            f"{slot[:-1].replace('_', ' ')} '{name}' is registered by two plugins: "
                            f"'{found[name].plugin}' ({found[name].distribution}) and "
                            f"'{impl.plugin_name}' ({distribution}); uninstall or rename one"
                        )
                    found[name] = Component(slot, name, factory, impl.plugin_name, distribution, version)
            self.components[slot] = dict(sorted(found.items()))

    def get(self, slot: str, name: Any, key: str) -> Component:
        """The component ``name`` of ``slot``; ``key`` is the config key that named it."""
        choices = self.components[slot]
        if name not in choices:
            raise ConfigError(
                f"{key}: unknown {slot[:-1].replace('_', ' ')} '{name}'; available: {', '.join(choices) or '(none installed)'}"
            )
        return choices[name]

    def check(self, slot: str, name: Any, key: str, options: dict[str, Any], skip: int) -> None:
        """Validate a component's options without building it: ``skip`` leading parameters are the
        ones the framework passes (e.g. a trunk's input_dim and tasks)."""
        check_options(self.get(slot, name, key).factory, options, key, skip)

    def build(self, slot: str, name: Any, key: str, *args: Any, **options: Any) -> Any:
        """Instantiate a component, turning an unknown, missing or invalid option into a ConfigError on ``key``."""
        factory = self.get(slot, name, key).factory
        check_options(factory, options, key, skip=len(args))
        return factory(*args, **options)


def check_options(factory: Any, options: dict[str, Any], key: str, skip: int = 0) -> None:
    """Fail on option names ``factory`` does not accept, listing the ones it does, on a missing
    required one, and on a value that does not fit its parameter's annotation
    (:mod:`fusionrec.components.options`), naming ``key.option``."""
    parameters = list(inspect.signature(factory).parameters.values())[skip:]
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        accepted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"{key}: unknown option(s) {', '.join(map(repr, unknown))} for '{factory.__name__}'; "
                f"accepted: {', '.join(accepted) or '(none)'}"
            )
        missing = [p.name for p in parameters if p.default is p.empty and p.kind is not p.VAR_POSITIONAL
                   and p.name not in options]
        if missing:
            raise ConfigError(f"{key}: missing required option(s) {', '.join(map(repr, missing))}")
    annotations = option_annotations(factory)
    for name, value in options.items():
        check_value(annotations.get(name, inspect.Parameter.empty), value, f"{key}.{name}")


def load_plugins(plugin_manager: pluggy.PluginManager) -> dict[str, tuple[str, str]]:
    """Register every entry point of the group; returns ``{plugin name: (distribution, version)}``."""
    strict = _env_flag("FUSIONREC_STRICT_PLUGINS")
    builtins_only = _env_flag("FUSIONREC_DISABLE_PLUGIN_AUTOLOAD")
    distributions = {}
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        dist = entry_point.dist
        dist_name = dist.metadata["Name"] if dist else "(unknown distribution)"
        if builtins_only and dist_name != BUILTIN_DISTRIBUTION:
            continue
        if entry_point.name in distributions:
            raise PluginError(f"two fusionrec plugins are both named '{entry_point.name}': from "
                              f"{distributions[entry_point.name][0]} and {dist_name}; rename one entry point")
        try:
            plugin_manager.register(entry_point.load(), name=entry_point.name)
        except Exception as error:  # a third-party plugin may fail in any way while importing
            message = f"fusionrec plugin '{entry_point.name}' from {dist_name} failed to load: {error!r}"
            if strict:
                raise PluginError(message) from error
            warnings.warn(message + " (set FUSIONREC_STRICT_PLUGINS=1 to make this an error)", stacklevel=2)
            continue
        distributions[entry_point.name] = (dist_name, dist.version if dist else "")
    return distributions


def create_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, tuple[str, str]]]:
    plugin_manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    plugin_manager.add_hookspecs(hookspecs)
    distributions = load_plugins(plugin_manager)
    try:
        plugin_manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"a fusionrec plugin has a hook no spec declares: {error}") from error
    return plugin_manager, distributions


@cache
def get_registry() -> Registry:
    """The process-wide registry, built once on first use."""
    return Registry(*create_plugin_manager())
