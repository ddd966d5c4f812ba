from fusionrec import hookimpl
from fusionrec.components.retrieval import RetrievalHead
from fusionrec_retrieval.two_tower import TwoTowerModel


@hookimpl
def fusionrec_register_retrieval_models():
    return {"two_tower": TwoTowerModel}


@hookimpl
def fusionrec_register_heads():
    return {"retrieval": RetrievalHead}
