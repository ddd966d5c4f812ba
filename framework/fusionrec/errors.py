"""Errors a user can fix from the message alone; the CLI prints them without a traceback."""

import argparse


class FusionrecError(Exception):
    """Base of every error fusionrec raises about its input."""


class ConfigError(FusionrecError):
    """A config key is missing, misspelled, of the wrong type, or names an unknown component."""


class DataError(FusionrecError):
    """A data file is missing, empty, lacks a column, or holds values its declared type forbids."""


class PluginError(FusionrecError):
    """A plugin failed to load, or two plugins register the same component name."""


class CommandParser(argparse.ArgumentParser):
    """argparse for fusionrec's own subcommands, but a usage error is a ConfigError: one
    ``fusionrec: error:`` line and exit 2, like every other bad input."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def describe_value(values, position: int) -> str:
    """``"'cheap' at row 12"`` for a pandas Series: the row number is the source file's (0-based,
    header excluded), kept through splits, so a user can find the row."""
    value = values.iloc[position]
    value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value
    return f"{value!r} at row {values.index[position]}"
