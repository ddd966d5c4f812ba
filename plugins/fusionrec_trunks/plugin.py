from fusionrec import hookimpl
from fusionrec_trunks.mmoe import MultiGateMixtureOfExperts
from fusionrec_trunks.ple import ProgressiveLayeredExtraction
from fusionrec_trunks.shared_bottom import SharedBottom


@hookimpl
def fusionrec_register_trunks():
    return {"shared_bottom": SharedBottom, "mmoe": MultiGateMixtureOfExperts, "ple": ProgressiveLayeredExtraction}
