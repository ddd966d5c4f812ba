"""Example third-party fusionrec plugin: the ``bucketized_numeric`` encoder and the ``poisson`` head."""

from fusionrec_example_plugin.encoders import BucketizedNumericEncoder
from fusionrec_example_plugin.heads import PoissonHead

__all__ = ["BucketizedNumericEncoder", "PoissonHead"]
