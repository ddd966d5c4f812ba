"""fusionrec: plugin-based multimodal multi-task recommendation on PyTorch Lightning.

The public surface: :func:`hookimpl` for plugins, the component base classes in
:mod:`fusionrec.components`, and ``MultiTaskModule`` / ``MultiTaskDataModule`` for Python use.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fusionrec.errors import ConfigError, DataError, FusionrecError, PluginError

try:
    __version__ = version("fusionrec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "DataError", "FusionrecError", "PluginError", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    # hookimpl on first use: fusionrec.serving imports this package and must not need pluggy.
    if name == "hookimpl":
        from fusionrec.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'fusionrec' has no attribute {name!r}")
