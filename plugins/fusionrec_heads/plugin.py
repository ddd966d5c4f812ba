from fusionrec import hookimpl
from fusionrec_heads.binary import BinaryHead
from fusionrec_heads.classes import MulticlassHead, MultilabelHead
from fusionrec_heads.conditional import ConditionalBinaryHead
from fusionrec_heads.ranking import BPRHead, ListwiseHead
from fusionrec_heads.regression import RegressionHead


@hookimpl
def fusionrec_register_heads():
    return {"binary": BinaryHead, "regression": RegressionHead, "multiclass": MulticlassHead,
            "multilabel": MultilabelHead, "esmm": ConditionalBinaryHead,
            "bpr": BPRHead, "listwise": ListwiseHead}
