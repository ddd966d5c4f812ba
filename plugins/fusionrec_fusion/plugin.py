from fusionrec import hookimpl
from fusionrec_fusion.attention import AttentionFusion
from fusionrec_fusion.concat import ConcatFusion
from fusionrec_fusion.gated import GatedFusion


@hookimpl
def fusionrec_register_fusions():
    return {"concat": ConcatFusion, "attention": AttentionFusion, "gated": GatedFusion}
