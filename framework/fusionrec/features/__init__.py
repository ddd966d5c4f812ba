"""Feature types: how each kind of column becomes the model's input (numpy only, see ``base``)."""

from fusionrec.features.base import (OUT_OF_VOCABULARY, PADDING, RESERVED, FeatureType, FeatureValueError,
                                     FieldInfo)

__all__ = ["OUT_OF_VOCABULARY", "PADDING", "RESERVED", "FeatureType", "FeatureValueError", "FieldInfo"]
