"""fusionrec: plugin-based multimodal multi-task recommendation on PyTorch Lightning.

The public surface: :func:`hookimpl` for plugins, the component base classes in
:mod:`fusionrec.components`, and ``MultiTaskModule`` / ``MultiTaskDataModule`` for Python use.
"""

from importlib.metadata import PackageNotFoundError, version

from fusionrec.errors import ConfigError, DataError, FusionrecError, PluginError
from fusionrec.hookspecs import hookimpl

try:
    __version__ = version("fusionrec")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "DataError", "FusionrecError", "PluginError", "__version__", "hookimpl"]
