"""Drivers — whose importance drives the penalty of a run — in one place: their names, the orders the command line
and the tables use, the controls, and the estimator plugins among them (benchmark/plugins.py loads those). Torch-free:
the command line's help and its checks of a name need no model.

    none                       plain fine-tuning, no penalty
    an estimator               a built-in one (estimators/names.py) or a loaded plugin
    a control of an estimator  uniform, shuffled-<estimator>, layermean-<estimator> (estimators/controls.py)
"""

from benchmark import plugins
from estimators.names import base_estimator, control_names

__all__ = ["PAPER_ESTIMATORS", "PAPER_DRIVERS", "CURVE_DRIVERS", "base_estimator", "control_names", "drivers",
           "estimator_drivers", "in_paper_order"]

PAPER_ESTIMATORS = ("fis", "mas", "si", "sig")
PAPER_DRIVERS = ("none", *PAPER_ESTIMATORS)  # `run --drivers paper`, the default, in the paper's order
# `lambda-curve`'s default: the paper's four, and the controls that need a λ of their own to be compared fairly
CURVE_DRIVERS = (*PAPER_ESTIMATORS, "uniform", "shuffled-mas", "layermean-mas")


def estimator_drivers() -> tuple[str, ...]:
    """`--drivers all`: none and every estimator, plugins included."""
    return ("none", *plugins.estimator_names())


def drivers() -> tuple[str, ...]:
    """Every name a run may be driven by: the estimators and their controls."""
    return (*estimator_drivers(), *control_names(plugins.estimator_names()))


def in_paper_order(present) -> list[str]:
    """The drivers present, the paper's first in its order, then the others by name: every table's row order."""
    present = set(present)
    return [d for d in PAPER_DRIVERS if d in present] + sorted(present - set(PAPER_DRIVERS))
