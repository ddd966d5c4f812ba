from fusionrec import hookimpl
from fusionrec_trunks.mmoe import MultiGateMixtureOfExperts
from fusionrec_trunks.pepnet import ParameterEmbeddingPersonalizedNetwork
from fusionrec_trunks.ple import ProgressiveLayeredExtraction
from fusionrec_trunks.scenario_towers import ScenarioTowers
from fusionrec_trunks.shared_bottom import SharedBottom
from fusionrec_trunks.star import StarTopologyAdaptiveRecommender


@hookimpl
def fusionrec_register_trunks():
    return {"shared_bottom": SharedBottom, "mmoe": MultiGateMixtureOfExperts, "ple": ProgressiveLayeredExtraction,
            # scenario-aware: they read each row's data.scenario
            "star": StarTopologyAdaptiveRecommender, "pepnet": ParameterEmbeddingPersonalizedNetwork,
            "scenario_towers": ScenarioTowers}
