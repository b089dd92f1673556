"""Weight-importance estimators, one per file, all behind the protocol in estimators.base.

fis  empirical Fisher (squared per-sample gradient of the log-likelihood of the true label)
mas  Memory Aware Synapses (absolute per-sample gradient of the squared L2 norm of the softmax output)
si   Synaptic Intelligence (path integral of the task loss during training)
sig  signal passed through the weight (|W| times the mean absolute input; mean activation for biases)
"""

from estimators.base import Estimator
from estimators.fis import EmpiricalFisher
from estimators.mas import MemoryAwareSynapses
from estimators.si import SynapticIntelligence
from estimators.sig import SignalImportance

ESTIMATORS: dict[str, type[Estimator]] = {
    "fis": EmpiricalFisher,
    "mas": MemoryAwareSynapses,
    "si": SynapticIntelligence,
    "sig": SignalImportance,
}

__all__ = ["ESTIMATORS", "Estimator", "EmpiricalFisher", "MemoryAwareSynapses", "SynapticIntelligence",
           "SignalImportance"]
