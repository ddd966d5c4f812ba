from fusionrec import hookimpl
from fusionrec_history.encoders import MeanHistoryEncoder, SelfAttentionHistoryEncoder, TargetAttentionHistoryEncoder


@hookimpl
def fusionrec_register_encoders():
    return {"sequence_mean": MeanHistoryEncoder, "din": TargetAttentionHistoryEncoder,
            "sasrec": SelfAttentionHistoryEncoder}
