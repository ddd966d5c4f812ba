"""The module named by the ``fusionrec`` entry point: one hook per slot this plugin fills."""

from fusionrec import hookimpl
from fusionrec_example_plugin.encoders import BucketizedNumericEncoder
from fusionrec_example_plugin.features import Weekday
from fusionrec_example_plugin.heads import PoissonHead


@hookimpl
def fusionrec_register_feature_types():
    return {"weekday": Weekday}


@hookimpl
def fusionrec_register_encoders():
    return {"bucketized_numeric": BucketizedNumericEncoder}


@hookimpl
def fusionrec_register_heads():
    return {"poisson": PoissonHead}
