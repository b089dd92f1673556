"""Layerwise correlations between estimators' importances: the long table behind correlations.csv.

For each layer, correlations are taken over its weight entries, over its biases, and over both together
("all"); Pearson on the values and Spearman (Pearson on average ranks). Besides every pair of estimators, the
derived pairs the paper and Benzing (2022) discuss: fis vs mas² and √fis vs mas. A constant vector has no
correlation: NaN.
"""

from itertools import combinations

import numpy as np
from torch import Tensor

COLUMNS = ["task", "layer", "param", "kind", "estimator_a", "estimator_b", "method", "value"]
# derived importances: name -> (estimator it is computed from, elementwise transform); both transforms are
# monotone on the non-negative fis and mas, so their ranks are those of the estimator itself
DERIVED = {"mas^2": ("mas", np.square), "sqrt(fis)": ("fis", np.sqrt)}
DERIVED_PAIRS = [("fis", "mas^2"), ("sqrt(fis)", "mas")]


def source(name: str) -> str:
    """The estimator a (possibly derived) importance is computed from."""
    return DERIVED[name][0] if name in DERIVED else name


def pairs(estimators: list[str]) -> list[tuple[str, str]]:
    derived = [(a, b) for a, b in DERIVED_PAIRS if source(a) in estimators and source(b) in estimators]
    return list(combinations(estimators, 2)) + derived


def layer_vectors(importance: dict[str, Tensor]) -> dict[tuple[str, str], np.ndarray]:
    """{(layer, 'weight' | 'bias' | 'all'): flat values, in the tensors' own dtype} from {'fc1.weight': tensor, …}."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, tensor in importance.items():
        layer, param = name.rsplit(".", 1)
        layers.setdefault(layer, {})[param] = tensor.detach().cpu().numpy().ravel()
    vectors = {}
    for layer, params in layers.items():
        for param, values in params.items():
            vectors[(layer, param)] = values
        vectors[(layer, "all")] = np.concatenate([params[p] for p in sorted(params)])
    return vectors


def average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's rankdata 'average'), from one unstable argsort:
    the order among equal values does not matter once they share a rank. Sorting the float32 importances as
    they are is exact (float64 would give the same order) and twice as fast."""
    order = np.argsort(v)
    ordered = v[order]
    first_of_run = np.empty(len(v), dtype=bool)
    first_of_run[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first_of_run[1:])
    starts = np.flatnonzero(first_of_run)
    counts = np.diff(np.append(starts, len(v)))
    ranks = np.empty(len(v))
    ranks[order] = np.repeat(starts + (counts + 1) / 2, counts)
    return ranks


def standardised(v: np.ndarray) -> np.ndarray | None:
    """(v − mean) / ‖v − mean‖ in float64, None for a constant vector: Pearson's r of two vectors is then the dot
    product of their standardised forms, so each vector is centred and scaled once, not once per pair."""
    centred = v.astype(np.float64)
    centred -= centred.mean()
    norm = np.sqrt(centred @ centred)
    return centred / norm if norm > 0 else None


def correlation_rows(task: int, kind: str, importances: dict[str, dict[str, Tensor]]) -> list[tuple]:
    """Rows of COLUMNS for one task and one kind ('accumulated' or 'increment')."""
    estimators = list(importances)
    vectors = {est: layer_vectors(imp) for est, imp in importances.items()}
    for name, (base, transform) in DERIVED.items():
        if base in vectors:
            vectors[name] = {key: transform(v.astype(np.float64)) for key, v in vectors[base].items()}
    units: dict[tuple, np.ndarray | None] = {}

    def unit(est: str, key: tuple[str, str], method: str) -> np.ndarray | None:
        # Spearman is Pearson on average ranks; a derived importance has its source's ranks
        name = est if method == "pearson" else source(est)
        if (name, key, method) not in units:
            v = vectors[name][key]
            units[(name, key, method)] = standardised(v if method == "pearson" else average_ranks(v))
        return units[(name, key, method)]

    rows = []
    for a, b in pairs(estimators):
        for key in vectors[a]:
            layer, param = key
            for method in ("pearson", "spearman"):
                ua, ub = unit(a, key, method), unit(b, key, method)
                value = float(np.clip(ua @ ub, -1.0, 1.0)) if ua is not None and ub is not None else float("nan")
                rows.append((task, layer, param, kind, a, b, method, value))
    return rows
