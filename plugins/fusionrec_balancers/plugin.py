from fusionrec import hookimpl
from fusionrec_balancers.fixed import FixedWeights


@hookimpl
def fusionrec_register_balancers():
    return {"fixed": FixedWeights}
