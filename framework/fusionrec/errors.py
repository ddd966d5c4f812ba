"""Errors a user can fix from the message alone; the CLI prints them without a traceback."""


class FusionrecError(Exception):
    """Base of every error fusionrec raises about its input."""


class ConfigError(FusionrecError):
    """A config key is missing, misspelled, of the wrong type, or names an unknown component."""


class DataError(FusionrecError):
    """A data file is missing, empty, lacks a column, or holds values its declared type forbids."""


class PluginError(FusionrecError):
    """A plugin failed to load, or two plugins register the same component name."""
