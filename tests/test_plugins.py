"""Plugin discovery and the registry: names, duplicates, broken plugins, strict and built-in-only modes."""

from __future__ import annotations

import types
from importlib.metadata import EntryPoint

import pluggy
import pytest

from fusionrec import hookimpl, hookspecs
from fusionrec.cli import main
from fusionrec.errors import ConfigError, PluginError
from fusionrec.plugins import SLOTS, Registry, create_plugin_manager, get_registry, load_plugins

BUILTINS = {
    "encoders": {"categorical", "multi_categorical", "numeric", "vector", "text", "image", "audio_cnn",
                 "audio_pretrained"},
    "fusions": {"concat", "attention", "gated"},
    "trunks": {"shared_bottom", "mmoe", "ple"},
    "heads": {"binary", "regression", "multiclass", "multilabel"},
    "balancers": {"fixed"},
}


def test_builtins_register_through_the_entry_point_group():
    registry = get_registry()
    for slot, names in BUILTINS.items():
        assert names <= set(registry.components[slot])
        for name in names:
            assert registry.components[slot][name].distribution == "fusionrec"


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError) as error:
        get_registry().get("trunks", "mmeo", "model.trunk")
    message = str(error.value)
    assert "model.trunk" in message and "'mmeo'" in message
    assert "mmoe, pepnet, ple, scenario_towers, shared_bottom, star" in message


def test_unknown_option_names_the_key_and_the_accepted_options():
    with pytest.raises(ConfigError, match=r"model\.trunk: unknown option\(s\) 'num_expert'.*num_experts"):
        get_registry().build("trunks", "mmoe", "model.trunk", 16, ["a"], num_expert=3)


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def test_duplicate_name_is_an_error_naming_both_plugins():
    manager = pluggy.PluginManager("fusionrec")
    manager.add_hookspecs(hookspecs)
    manager.register(_plugin(fusionrec_register_heads=lambda: {"binary": object}), name="first")
    manager.register(_plugin(fusionrec_register_heads=lambda: {"binary": object}), name="second")
    with pytest.raises(PluginError, match="'binary' is registered by two plugins: 'first'.*'second'"):
        Registry(manager, {"first": ("dist-one", "1"), "second": ("dist-two", "2")})


class _FakeDistribution:
    def __init__(self, name: str):
        self.metadata = {"Name": name}
        self.version = "9.9"


def _entry_points(monkeypatch, *points: tuple[str, str, str]) -> None:
    """Replace discovery with (name, module, distribution) entry points."""
    made = []
    for name, value, dist in points:
        point = EntryPoint(name, value, "fusionrec")
        made.append(point._for(_FakeDistribution(dist)) if hasattr(point, "_for") else point)
    monkeypatch.setattr("fusionrec.plugins.entry_points", lambda group: made)


def _manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("fusionrec")
    manager.add_hookspecs(hookspecs)
    return manager


def test_a_broken_plugin_is_a_warning_naming_it(monkeypatch):
    monkeypatch.delenv("FUSIONREC_STRICT_PLUGINS", raising=False)
    _entry_points(monkeypatch, ("broken", "no_such_module_anywhere", "broken-dist"),
                  ("trunks", "fusionrec_trunks.plugin", "fusionrec"))
    manager = _manager()
    with pytest.warns(UserWarning, match="plugin 'broken' from broken-dist failed to load"):
        distributions = load_plugins(manager)
    assert list(distributions) == ["trunks"]


def test_strict_mode_makes_a_broken_plugin_an_error(monkeypatch):
    monkeypatch.setenv("FUSIONREC_STRICT_PLUGINS", "1")
    _entry_points(monkeypatch, ("broken", "no_such_module_anywhere", "broken-dist"))
    with pytest.raises(PluginError, match="'broken' from broken-dist"):
        load_plugins(_manager())


def test_disabling_autoload_keeps_only_the_builtins(monkeypatch):
    monkeypatch.setenv("FUSIONREC_DISABLE_PLUGIN_AUTOLOAD", "1")
    _entry_points(monkeypatch, ("third", "fusionrec_heads.plugin", "someone-else"),
                  ("trunks", "fusionrec_trunks.plugin", "fusionrec"))
    assert list(load_plugins(_manager())) == ["trunks"]


def test_a_misspelled_hook_fails_loudly(monkeypatch):
    module = types.ModuleType("misspelled_plugin")
    module.fusionrec_register_head = hookimpl(lambda: {})  # missing the final "s"
    monkeypatch.setitem(__import__("sys").modules, "misspelled_plugin", module)
    _entry_points(monkeypatch, ("misspelled", "misspelled_plugin", "typo-dist"))
    with pytest.raises(PluginError, match="misspelled"):
        create_plugin_manager()


def test_plugins_command_lists_every_slot(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for slot in SLOTS:
        assert slot in out
    for names in BUILTINS.values():
        for name in names:
            assert name in out


def test_two_entry_points_with_one_name_is_an_error_naming_both_distributions(monkeypatch):
    _entry_points(monkeypatch, ("heads", "fusionrec_heads.plugin", "fusionrec"),
                  ("heads", "fusionrec_trunks.plugin", "someone-else"))
    with pytest.raises(PluginError, match="both named 'heads': from fusionrec and someone-else"):
        load_plugins(_manager())
