"""Base classes, one per plugin slot: every component of a slot exposes the same surface."""

from fusionrec.components.balancer import LossBalancer
from fusionrec.components.content import ContentEncoder
from fusionrec.components.encoder import FieldEncoder, FieldInfo
from fusionrec.components.fusion import Fusion
from fusionrec.components.head import TaskHead
from fusionrec.components.options import Dropout, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from fusionrec.components.sequence import SequenceEncoder
from fusionrec.components.trunk import Trunk
from fusionrec.features.base import FeatureType

__all__ = ["ContentEncoder", "Dropout", "FeatureType", "FieldEncoder", "FieldInfo", "Fusion", "LossBalancer", "NonNegativeFloat", "NonNegativeInt",
           "PositiveFloat", "PositiveInt", "SequenceEncoder", "TaskHead", "Trunk"]
