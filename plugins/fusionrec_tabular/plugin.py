from fusionrec import hookimpl
from fusionrec_tabular.encoders import CategoricalEncoder, MultiCategoricalEncoder, NumericEncoder, VectorEncoder


@hookimpl
def fusionrec_register_encoders():
    return {"categorical": CategoricalEncoder, "multi_categorical": MultiCategoricalEncoder,
            "numeric": NumericEncoder, "vector": VectorEncoder}
