"""Layerwise correlations between estimators' importances: the long table behind correlations.csv.

For each layer, correlations are taken over its weight entries, over its biases, and over both together
("all"); Pearson on the values and Spearman (Pearson on average ranks). Besides every pair of estimators, the
derived pairs the paper and Benzing (2022) discuss: fis vs mas² and √fis vs mas. A constant vector has no
correlation: NaN.
"""

from itertools import combinations

import numpy as np
from scipy.stats import rankdata
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
    """{(layer, 'weight' | 'bias' | 'all'): flat float64 values} from {'fc1.weight': tensor, …}."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, tensor in importance.items():
        layer, param = name.rsplit(".", 1)
        layers.setdefault(layer, {})[param] = tensor.detach().cpu().double().numpy().ravel()
    vectors = {}
    for layer, params in layers.items():
        for param, values in params.items():
            vectors[(layer, param)] = values
        vectors[(layer, "all")] = np.concatenate([params[p] for p in sorted(params)])
    return vectors


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else float("nan")


def correlation_rows(task: int, kind: str, importances: dict[str, dict[str, Tensor]]) -> list[tuple]:
    """Rows of COLUMNS for one task and one kind ('accumulated' or 'increment')."""
    estimators = list(importances)
    vectors = {est: layer_vectors(imp) for est, imp in importances.items()}
    for name, (base, transform) in DERIVED.items():
        if base in vectors:
            vectors[name] = {key: transform(v) for key, v in vectors[base].items()}
    ranks: dict[tuple[str, str, str], np.ndarray] = {}

    def rank(est: str, key: tuple[str, str]) -> np.ndarray:
        base = source(est)
        if (base, *key) not in ranks:
            ranks[(base, *key)] = rankdata(vectors[base][key])
        return ranks[(base, *key)]

    rows = []
    for a, b in pairs(estimators):
        for key in vectors[a]:
            layer, param = key
            rows.append((task, layer, param, kind, a, b, "pearson", _pearson(vectors[a][key], vectors[b][key])))
            rows.append((task, layer, param, kind, a, b, "spearman", _pearson(rank(a, key), rank(b, key))))
    return rows
