"""Base classes, one per plugin slot: every component of a slot exposes the same surface."""

from fusionrec.components.balancer import LossBalancer
from fusionrec.components.encoder import FieldEncoder, FieldInfo
from fusionrec.components.fusion import Fusion
from fusionrec.components.head import TaskHead
from fusionrec.components.options import Dropout, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from fusionrec.components.trunk import Trunk

__all__ = ["Dropout", "FieldEncoder", "FieldInfo", "Fusion", "LossBalancer", "NonNegativeFloat", "NonNegativeInt",
           "PositiveFloat", "PositiveInt", "TaskHead", "Trunk"]
