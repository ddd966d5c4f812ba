"""Example third-party fusionrec plugin: the ``weekday`` feature type, the ``bucketized_numeric`` encoder
and the ``poisson`` head."""

from fusionrec_example_plugin.encoders import BucketizedNumericEncoder
from fusionrec_example_plugin.features import Weekday
from fusionrec_example_plugin.heads import PoissonHead

__all__ = ["BucketizedNumericEncoder", "PoissonHead", "Weekday"]
