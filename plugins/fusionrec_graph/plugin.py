from fusionrec import hookimpl
from fusionrec_graph.lightgcn import LightGCNEncoder


@hookimpl
def fusionrec_register_encoders():
    return {"lightgcn": LightGCNEncoder}
