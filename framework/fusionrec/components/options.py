"""Typed options: a component declares each option's type and range in its factory's signature,
and one check validates a config's values against it before anything is built.

Any annotation jsonargparse reads works (``int``, ``float``, ``str``, ``bool``, ``Literal``, lists,
unions with ``None``), and so do the restricted number types of :mod:`jsonargparse.typing`
(``PositiveInt``, ``NonNegativeFloat``, ``ClosedUnitInterval``, ``restricted_number_type(...)``).
The model's and data module's own arguments use the same types, which LightningCLI checks.
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import math
import operator
import re
import types
import typing
from argparse import ArgumentError
from functools import cache
from typing import Any

import jsonargparse.typing
from jsonargparse import ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveInt, restricted_number_type

from fusionrec.errors import ConfigError

# p = 1 would zero every unit of the layer.
Dropout = restricted_number_type("Dropout", float, [(">=", 0.0), ("<", 1.0)])
# jsonargparse's own PositiveFloat and NonNegativeFloat take inf, with which training silently turns to NaN.
PositiveFloat = restricted_number_type("FinitePositiveFloat", float, [(">", 0.0), ("<", math.inf)])
NonNegativeFloat = restricted_number_type("FiniteNonNegativeFloat", float, [(">=", 0.0), ("<", math.inf)])

__all__ = ["Dropout", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "check_value", "describe",
           "option_annotations"]

_NAMES = {int: "an int", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
_SYMBOLS = {operator.gt: ">", operator.ge: ">=", operator.lt: "<", operator.le: "<=", operator.eq: "==",
            operator.ne: "!="}
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def describe(annotation: Any) -> str:
    """``PositiveInt`` -> ``"an int >= 1"``; ``list[PositiveInt] | None`` -> ``"a list of (an int >= 1) or null"``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in _SEQUENCES or annotation in _SEQUENCES:
        return f"a list of ({describe(args[0])})" if args else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    # jsonargparse's restricted number types keep their base type and bounds in these attributes.
    restrictions = getattr(annotation, "_restrictions", None)
    if restrictions is not None and annotation._type in _NAMES:
        base = annotation._type
        # Lower bounds first; an int's strict bound reads as the inclusive one ("> 0" as ">= 1").
        ordered = sorted(restrictions, key=lambda restriction: restriction[0] not in (operator.gt, operator.ge))
        bounds = [">= " + str(ref + 1) if base is int and op is operator.gt else
                  "<= " + str(ref - 1) if base is int and op is operator.lt else f"{_SYMBOLS[op]} {ref:g}"
                  for op, ref in ordered if ref != math.inf]  # "< inf" reads as "a finite number"
        name = "a finite number" if len(bounds) < len(ordered) else _NAMES[base]
        return f"{name} {f' {annotation._join} '.join(bounds)}"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


@cache
def _parser(annotation: Any) -> ArgumentParser | None:
    """A parser of one value of type ``annotation``; None for a type jsonargparse cannot check."""
    parser = ArgumentParser(exit_on_error=False)
    try:
        parser.add_argument("--value", type=annotation)
    except (ValueError, TypeError):
        return None
    return parser


def _unchanged(value: Any, parsed: Any) -> bool:
    """Whether jsonargparse read ``value`` as itself: it would also turn ``'3'`` or ``3.0`` into
    an int 3 and ``'null'`` into None, which a config option should not silently be."""
    if isinstance(value, (list, tuple)):
        return isinstance(parsed, (list, tuple)) and len(parsed) == len(value) and all(map(_unchanged, value, parsed))
    if isinstance(value, dict):
        return isinstance(parsed, dict) and parsed.keys() == value.keys() and all(
            _unchanged(item, parsed[key]) for key, item in value.items())
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(parsed, float):
        return True  # an int where a number goes
    base = getattr(type(parsed), "_type", type(parsed))  # a restricted type's instance: its base type
    return type(value) is base and value == parsed


def check_value(annotation: Any, value: Any, key: str) -> None:
    """A ConfigError naming ``key`` unless ``value`` is of type ``annotation`` (and in its range)."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str):
        return
    args = typing.get_args(annotation)
    if (typing.get_origin(annotation) in (list, collections.abc.Sequence) and len(args) == 1
            and isinstance(value, (list, tuple))):
        for position, item in enumerate(value):  # an item's own key: "expert_hidden[1]"
            check_value(args[0], item, f"{key}[{position}]")
        return
    parser = _parser(annotation)
    if parser is None:
        return
    try:
        parsed = parser.parse_object({"value": copy.deepcopy(value)}).value  # it converts lists in place
    except ArgumentError:
        parsed = ArgumentError
    if parsed is ArgumentError or not _unchanged(value, parsed):
        raise ConfigError(f"{key}: expected {describe(annotation)}, got {value!r}")


def option_annotations(factory: Any) -> dict[str, Any]:
    """``{parameter: annotation}`` of ``factory`` (a class: its ``__init__``), string annotations
    resolved; a parameter whose annotation does not resolve is left unchecked."""
    try:
        signature = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError, SyntaxError, AttributeError):
        signature = inspect.signature(factory)
    return {name: parameter.annotation for name, parameter in signature.parameters.items()}


# --- LightningCLI's messages, in the same words -------------------------------------------------------

_TYPES = {**{t.__name__: t for t in jsonargparse.typing.registered_types.values() if isinstance(t, type)},
          "int": int, "float": float, "str": str, "bool": bool, "NoneType": type(None)}


def argument_error_line(message: str) -> str:
    """jsonargparse's several-line message about a bad value, as one line in fusionrec's words:
    ``'Parser key "data.batch_size": Not of type PositiveInt: 0 does not conform ...'`` ->
    ``data.batch_size: expected an int >= 1, got 0``. Other messages are joined onto one line."""
    found = re.match(r'Parser key "([^"]+)":\s*(.*)', message, re.S)
    if not found:
        return " ".join(message.split())
    key, detail = found.groups()
    names = value = None
    if union := re.search(r"Subtypes: \[(.*)\]$", detail, re.M):
        # Only a union of plain classes (not "dict[str, Any]"), which describe() can name.
        if not re.sub(r"<class '[\w.]+'>", "", union.group(1)).strip(" ,"):
            names = re.findall(r"<class '(?:[\w.]+\.)?(\w+)'>", union.group(1))
        value = re.search(r"Given value: (.*)", detail)
    elif single := re.match(r"Expected a <class '(\w+)'>\. Got value: (.*)", detail):
        names, value = [single.group(1)], single
    elif restricted := re.match(r"Not of type (\w+): (?:invalid literal for \w+\(\) with base 10: )?(.*?)"
                                r"(?: does not conform to restriction .*| not a number| not an integer)?$", detail):
        names, value = [restricted.group(1)], restricted
    if names and value and all(name in _TYPES for name in names):
        expected = " or ".join(describe(_TYPES[name]) for name in names)
        given = value.groups()[-1].strip()
        if "Given value type: <class 'str'>" in detail:
            given = repr(given)
        return f"{key}: expected {expected}, got {given}"
    return f"{key}: {' '.join(detail.split())}"
