"""Weight-importance estimators, one per file, all behind the protocol in estimators.base.

The paper's four:
fis          empirical Fisher (squared per-sample gradient of the log-likelihood of the true label)
mas          Memory Aware Synapses (absolute per-sample gradient of the squared L2 norm of the softmax output)
si           Synaptic Intelligence (path integral of the task loss during training)
sig          signal passed through the weight (|W| times the mean absolute input; mean activation for biases)

Beyond it (the explanations the literature offers for the paper's observations):
fis_exact    true Fisher (expectation over the model's predicted classes)
fis_sampled  true Fisher from one label per sample drawn from the model
fis_batched  squared gradient of a minibatch's mean loss (the shortcut many libraries call "Fisher")
abs_fisher   absolute Fisher, E_y |∂ log p(y|x)/∂θ| (Benzing 2022: MAS approximates it)
sos          mean of the squared minibatch gradients during training (Benzing 2022: SI ≈ √SOS)

What libraries compute instead (each file cites the library's code it follows):
fis_batched    (above) Avalanche's, PyCIL's and FACIL's EWC; option batchnorm = "train" as PyCIL and FACIL
fis_maxpred    squared per-sample gradient for the model's arg-max label (FACIL's default labels)
fis_pweighted  the empirical Fisher with each sample weighted by p(y_true|x) (Mammoth's online EWC)
si             option clamp_max: Ω bounded from above (Avalanche's SI)
Accumulating over tasks (the experiment's, benchmark/loop.py): "blend", α Ω + (1 − α) Ω_task (FACIL, Avalanche MAS)
"""

import importlib

from estimators.names import CLASSES, NAMES

# The classes are imported on first use (PEP 562): `import estimators` for the names alone costs no torch import.
__all__ = ["ESTIMATORS", "NAMES", "Estimator", *(cls for _, cls in CLASSES.values())]


def __getattr__(attribute: str):
    if attribute == "ESTIMATORS":  # name → class, every built-in estimator; built once, then a module attribute
        globals()["ESTIMATORS"] = classes = {name: getattr(importlib.import_module(module), cls)
                                             for name, (module, cls) in CLASSES.items()}
        return classes
    if attribute == "Estimator":
        from estimators.base import Estimator

        return Estimator
    for module, cls in CLASSES.values():
        if cls == attribute:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'estimators' has no attribute {attribute!r}")
