"""The content feature types: ``text``, ``image`` and ``audio``. A cell names an item's content (a text,
or an image/audio file path); a content encoder prepares each distinct item, in training and in a
bundle alike, so these types have no ``transform``: ``contents`` is their one rule for what a cell's
content is. Numpy only, like every feature type module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionrec.features.base import FeatureType, FieldInfo
from fusionrec.features.values import content as content_of


class Content(FeatureType):
    """Options: ``strict`` (an unreadable item stops training instead of counting as missing) and, for
    files, ``root`` (the directory relative paths are read from)."""

    content = True
    options = {"strict": False}
    null_means = "no content (the learned missing vector)"

    def fitted(self, partial: Any) -> dict[str, Any]:
        return {"type": self.type_name, **self.state}  # nothing to fit: every item is read as it comes

    def field_info(self) -> FieldInfo:
        return FieldInfo(self.name, self.type_name, extra={"strict": self.state.get("strict", False)})

    def contents(self, values: Sequence[Any] | np.ndarray) -> list[str | None]:
        """Each cell's content: None for no content (a null or a blank string), else the cell stripped."""
        return [content_of(value) for value in values]


class Text(Content):
    type_name = "text"
    default_encoder = "text"


class File(Content):
    """Content read from a file: a relative path is resolved against ``root``."""

    options = {"root": None, "strict": False}

    def contents(self, values: Sequence[Any] | np.ndarray) -> list[str | None]:
        root = self.state.get("root")
        paths = super().contents(values)
        if root is None:
            return paths
        return [path if path is None or Path(path).is_absolute() else str(Path(root) / path) for path in paths]


class Image(File):
    type_name = "image"
    default_encoder = "image"


class Audio(File):
    type_name = "audio"
    default_encoder = "audio_cnn"  # the trainable log-mel CNN
