from fusionrec import hookimpl
from fusionrec_fusion.concat import ConcatFusion


@hookimpl
def fusionrec_register_fusions():
    return {"concat": ConcatFusion}
