"""Drivers — whose importance drives the penalty of a run — in one place: their names, the orders the command line
and the tables use, the controls, and the estimator plugins among them (benchmark/plugins.py loads those). Torch-free:
the command line's help and its checks of a name need no model.

    none                       plain fine-tuning, no penalty
    an estimator               a built-in one (estimators/names.py) or a loaded plugin
    a control of an estimator  uniform, shuffled-<estimator>, layermean-<estimator> (estimators/controls.py)
"""

from benchmark import plugins
from estimators.names import base_estimator, control_names

__all__ = ["PAPER_ESTIMATORS", "PAPER_DRIVERS", "CURVE_DRIVERS", "LIBRARY_SHORTCUTS", "EXTRA_PAIRS", "REPORTED_PAIRS",
           "base_estimator", "control_names", "drivers", "estimator_drivers", "in_paper_order", "reference_of"]

PAPER_ESTIMATORS = ("fis", "mas", "si", "sig")
PAPER_DRIVERS = ("none", *PAPER_ESTIMATORS)  # `run --drivers paper`, the default, in the paper's order
# `lambda-curve`'s default: the paper's four, and the controls that need a λ of their own to be compared fairly
CURVE_DRIVERS = (*PAPER_ESTIMATORS, "uniform", "shuffled-mas", "layermean-mas")
# the libraries' shortcuts for a Fisher (docs/estimators.md says which library ships which) and the estimator each
# stands in for: the paper's empirical Fisher, the one a user of the library believes they get
LIBRARY_SHORTCUTS = {"fis_batched": "fis", "fis_maxpred": "fis", "fis_pweighted": "fis"}

# Pairs of importances every run correlates beyond the paper's six, where it observed both (correlations.py; a
# derived name — mas^2, sqrt(fis), sqrt(sos) — is computed from the estimator it names): the paper's FIS ~ MAS²,
# Benzing's MAS ≈ AF ≈ √Fisher and SI ≈ √SOS, how far the ways of computing a Fisher are from each other, and the
# libraries' Fisher shortcuts against the exact ones
EXTRA_PAIRS = (("fis", "mas^2"), ("sqrt(fis)", "mas"), ("fis_exact", "fis"), ("fis_sampled", "fis_exact"),
               ("fis_batched", "fis"), ("mas", "abs_fisher"), ("si", "sqrt(sos)"), ("fis_maxpred", "fis_exact"),
               ("fis_maxpred", "fis"), ("fis_pweighted", "fis"), ("fis_pweighted", "fis_exact"))
# the report's "Beyond the paper" sections: the same pairs in the order the report reads them (tests/test_report.py
# checks they are all EXTRA_PAIRS)
REPORTED_PAIRS = (("mas", "abs_fisher"), ("sqrt(fis)", "mas"), ("fis", "mas^2"), ("fis_exact", "fis"),
                  ("si", "sqrt(sos)"), ("fis_sampled", "fis_exact"), ("fis_batched", "fis"), ("fis_maxpred", "fis"),
                  ("fis_maxpred", "fis_exact"), ("fis_pweighted", "fis"), ("fis_pweighted", "fis_exact"))


def estimator_drivers() -> tuple[str, ...]:
    """`--drivers all`: none and every estimator, plugins included."""
    return ("none", *plugins.estimator_names())


def drivers() -> tuple[str, ...]:
    """Every name a run may be driven by: the estimators and their controls."""
    return (*estimator_drivers(), *control_names(plugins.estimator_names()))


def reference_of(driver: str, default: str) -> str:
    """What a driver is compared with at equal terms: a shuffled-/layermean- control with the estimator it
    transforms, a library shortcut with the estimator it stands in for, any other driver with `default`."""
    return base_estimator(driver) or LIBRARY_SHORTCUTS.get(driver) or default


def in_paper_order(present) -> list[str]:
    """The drivers present, the paper's first in its order, then the others by name: every table's row order."""
    present = set(present)
    return [d for d in PAPER_DRIVERS if d in present] + sorted(present - set(PAPER_DRIVERS))
