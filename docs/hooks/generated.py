"""MkDocs hook: the tables that describe what the code registers are written from the code at build
time, so that they cannot go stale.

A page asks for one with a marker on a line of its own:

- ``<!-- fusionrec:components -->``: every registered component, by slot, with its options;
- ``<!-- fusionrec:components-summary -->``: one row per slot with the component names;
- ``<!-- fusionrec:feature-types -->``: the feature types, their options and default encoders;
- ``<!-- fusionrec:cli COMMAND -->``: ``fusionrec COMMAND --help`` as the command prints it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import sys
from functools import cache
from typing import Any

# The docs describe what ships with fusionrec, not whatever else this machine has installed.
os.environ["FUSIONREC_DISABLE_PLUGIN_AUTOLOAD"] = "1"

MARKER = re.compile(r"^<!-- fusionrec:(components|components-summary|feature-types|cli [\w-]+) -->$", re.M)

# Constructor parameters the framework fills in; every other parameter is a config option.
FRAMEWORK_ARGUMENTS = {"field", "input_dims", "input_dim", "tasks", "scenarios", "label_state", "weights"}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
HELP_WIDTH = "100"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    markdown = MARKER.sub(lambda found: _render(found.group(1)), markdown)
    # A misspelt marker would otherwise stay an invisible HTML comment, and its table would be missing.
    if unknown := re.search(r"<!-- fusionrec:.*?-->", markdown):
        raise ValueError(f"{page.file.src_path}: unknown marker {unknown.group(0)}")
    return markdown


def _render(what: str) -> str:
    if what == "components":
        return components_table()
    if what == "components-summary":
        return components_summary()
    if what == "feature-types":
        return feature_types_table()
    return command_help(what.split(" ", 1)[1])


def _cell(text: str) -> str:
    """Markdown for a table cell: the docstrings' reST literals as code, pipes outside code escaped
    (inside a code span the table reads them as text, and a backslash would show)."""
    parts = re.split(r"(`[^`]*`)", text.replace("``", "`"))
    return "".join(part if part.startswith("`") else part.replace("|", "\\|") for part in parts)


def _summary(factory: type) -> str:
    """The first paragraph of the class's own docstring (not one inherited from its base)."""
    doc = inspect.cleandoc(factory.__dict__.get("__doc__") or "")
    return " ".join(doc.split("\n\n", 1)[0].split())


def _default(value: Any) -> str:
    """A default as it is written in YAML."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        value = list(value)
    # str() of a list or mapping quotes its strings; YAML needs no quotes there.
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value).replace("'", "")


def _encoder_dim(factory: type) -> str:
    """An encoder's ``dim`` when the config gives none: ``default_dim``, asked with a stand-in width."""
    from fusionrec.components import FieldInfo

    stand_in = -1
    dim = factory.default_dim(FieldInfo("field", "field type"), stand_in)
    return "`model.embedding_dim`" if dim == stand_in else f"`{dim}`"


def _options(slot: str, factory: type) -> list[str]:
    from fusionrec.components.options import describe, option_annotations

    annotations = option_annotations(factory)
    # A composite trunk's parts are configured as {name, **options} and passed to it built.
    parts = factory.parts if slot == "trunks" else {}
    options = []
    for name, parameter in inspect.signature(factory).parameters.items():
        if name in FRAMEWORK_ARGUMENTS or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in parts:
            options.append(f"`{name}`: a trunk, `{{name, **options}}` = `{_default(parts[name])}`")
            continue
        annotation = annotations.get(name, parameter.empty)
        kind = "" if annotation is parameter.empty else f": {describe(annotation)}"
        if slot == "encoders" and name == "dim":
            default = f" (default: {_encoder_dim(factory)})"
        elif parameter.default is parameter.empty:
            default = " (required)"
        else:
            default = f" = `{_default(parameter.default)}`"
        options.append(f"`{name}`{kind}{default}")
    return options


@cache
def _registry() -> Any:
    from fusionrec.plugins import get_registry

    return get_registry()


def components_table() -> str:
    defaults = {}
    for name, component in _registry().components["feature_types"].items():
        defaults.setdefault(component.factory.default_encoder, []).append(name)
    parts = []
    for slot, components in _registry().components.items():
        if slot == "feature_types":
            parts.append("## Feature types\n\n" + feature_types_table())
            continue
        rows = ["| name | plugin | what it is | options |", "|---|---|---|---|"]
        for name, component in components.items():
            summary = _summary(component.factory)
            if slot == "encoders" and name in defaults:
                summary += f" Default for {', '.join(f'`{kind}`' for kind in defaults[name])} features."
            summary += "".join(f" {sentence}" for sentence in _contract(slot, component.factory))
            options = "<br>".join(_cell(option) for option in _options(slot, component.factory)) or "none"
            rows.append(f"| `{name}` | `{component.plugin}` | {_cell(summary)} | {options} |")
        parts.append(f"## {slot.capitalize()}\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def _contract(slot: str, factory: type) -> list[str]:
    """What the component's base class says it needs from the data or gives to other components."""
    from fusionrec.components.trunk import ScenarioTrunk

    sentences = []
    if slot == "trunks" and issubclass(factory, ScenarioTrunk):
        sentences.append("Reads each row's scenario: needs `data.scenario`.")
    if slot == "heads" and factory.needs_groups:
        sentences.append("Compares the rows of a group: needs `data.group` or `data.negatives`.")
    if slot == "heads" and factory.can_be_parent:
        sentences.append("Can be a conditional task's `parent`.")
    return sentences


def components_summary() -> str:
    rows = ["| slot | registered names |", "|---|---|"]
    for slot, components in _registry().components.items():
        rows.append(f"| {slot} | {', '.join(f'`{name}`' for name in components)} |")
    return "\n".join(rows)


def feature_types_table() -> str:
    rows = ["| type | plugin | options (defaults) | a null means | default encoder |", "|---|---|---|---|---|"]
    for name, component in _registry().components["feature_types"].items():
        kind = component.factory
        listed = ", ".join(f"`{option}` = `{_default(value)}`" for option, value in kind.options.items()) or "none"
        rows.append(f"| `{name}` | `{component.plugin}` | {_cell(listed)} | {_cell(kind.null_means)} | "
                    f"`{kind.default_encoder}` |")
    return "\n".join(rows)


@cache
def _help_text(command: str) -> str:
    from fusionrec.cli import main

    output = io.StringIO()
    previous = os.environ.get("COLUMNS"), sys.argv
    # argparse wraps the help to the terminal's width; LightningCLI reads its arguments from sys.argv.
    os.environ["COLUMNS"], sys.argv = HELP_WIDTH, ["fusionrec", command, "--help"]
    try:
        with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
            main()
    finally:
        sys.argv = previous[1]
        if previous[0] is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous[0]
    text = output.getvalue()
    if "--help" not in text:
        raise RuntimeError(f"fusionrec {command} --help printed no help: {text[:200]!r}")
    return text


def command_help(command: str) -> str:
    """The command's own help, without its usage line. For LightningCLI's commands: fusionrec's own
    options, the model's and data module's (under fit only: the others take the same), and the
    checkpoint's, without the Trainer's, optimiser's and scheduler's (Lightning documents those)."""
    blocks = _help_text(command).strip("\n").split("\n\n")
    kept = []
    for block in blocks:
        if block.startswith("usage:"):
            continue
        if command in LIGHTNING_COMMANDS:
            first_option = next((line.strip() for line in block.splitlines()[1:] if line.strip()), "")
            if (block.startswith("Linked arguments") or
                    re.match(r"--(trainer|optimizer|lr_scheduler)\b", first_option) or
                    (command != "fit" and re.match(r"--(model|data)\b", first_option))):
                continue
        kept.append(block)
    return "```text\n" + "\n\n".join(kept) + "\n```"
