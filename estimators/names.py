"""The estimators' and controls' names, without importing torch: what the command line, the protocol files and the
report need before (or without) any computation — `python -m benchmark --help` answers in a fraction of a second.
"""

# name → (module, class), in the order every table lists them: the paper's four, then the rest
CLASSES = {
    "fis": ("estimators.fis", "EmpiricalFisher"),
    "mas": ("estimators.mas", "MemoryAwareSynapses"),
    "si": ("estimators.si", "SynapticIntelligence"),
    "sig": ("estimators.sig", "SignalImportance"),
    "fis_exact": ("estimators.fis_exact", "TrueFisher"),
    "fis_sampled": ("estimators.fis_sampled", "SampledFisher"),
    "fis_batched": ("estimators.fis_batched", "BatchedFisher"),
    "abs_fisher": ("estimators.abs_fisher", "AbsoluteFisher"),
    "sos": ("estimators.sos", "RunningSquaredGradients"),
    "fis_maxpred": ("estimators.fis_maxpred", "MaxPredictionFisher"),
    "fis_pweighted": ("estimators.fis_pweighted", "ProbabilityWeightedFisher"),
}
NAMES = tuple(CLASSES)

CONTROL_KINDS = ("shuffled", "layermean")  # the controls of an estimator; "uniform" stands alone
BATCHNORM_MODES = ("eval", "train")  # fis_batched's batchnorm option: the mode BatchNorm layers are in


def control_names(estimators) -> tuple[str, ...]:
    return ("uniform", *(f"{kind}-{est}" for kind in CONTROL_KINDS for est in estimators))


def base_estimator(driver: str) -> str | None:
    """The estimator a shuffled-/layermean- control transforms; None for uniform and for anything else."""
    kind, sep, est = driver.partition("-")
    return est if sep and kind in CONTROL_KINDS else None
