from fusionrec import hookimpl
from fusionrec_balancers.dwa import DynamicWeightAverage
from fusionrec_balancers.famo import FastAdaptiveMultitaskOptimization
from fusionrec_balancers.fixed import FixedWeights
from fusionrec_balancers.gradnorm import GradientNormalization
from fusionrec_balancers.pcgrad import ProjectingConflictingGradients
from fusionrec_balancers.uncertainty import UncertaintyWeights


@hookimpl
def fusionrec_register_balancers():
    return {"fixed": FixedWeights, "uncertainty": UncertaintyWeights, "gradnorm": GradientNormalization,
            "dwa": DynamicWeightAverage, "pcgrad": ProjectingConflictingGradients,
            "famo": FastAdaptiveMultitaskOptimization}
