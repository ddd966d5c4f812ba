from fusionrec import hookimpl
from fusionrec_features.content import Audio, Image, Text
from fusionrec_features.sequence import SequenceFeature
from fusionrec_features.tabular import Categorical, MultiCategorical, Numeric, Vector


@hookimpl
def fusionrec_register_feature_types():
    return {kind.type_name: kind for kind in (Categorical, MultiCategorical, Numeric, Vector, Text, Image, Audio,
                                             SequenceFeature)}
