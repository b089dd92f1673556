"""Layerwise correlations between estimators' importances: the long table behind correlations.csv.

For each layer, correlations are taken over its weight entries, over its biases, and over both together
("all"); Pearson on the values, Spearman (Pearson on average ranks), and the top-k overlap: the Jaccard index
of the k% most important entries of each (what a penalty protects, rather than how well one importance fits the
other linearly). A constant vector has no correlation: NaN.

Pairs: every pair of the paper's four estimators; the derived pairs the paper and Benzing (2022) discuss,
fis vs mas² and √fis vs mas; and the pairs the further estimators exist for: the true Fisher against the
empirical one and against its one-sample estimate, the minibatch shortcut against the empirical Fisher, MAS
against the absolute Fisher (Benzing: MAS ≈ AF), SI against √SOS (Benzing: SI ≈ √SOS); the libraries' variants
against the exact estimators they stand in for: the arg-max-label Fisher (FACIL) against the true Fisher, whose
expectation over labels it replaces by the most likely label, and against the empirical one, the p(y|x)-weighted
Fisher (Mammoth) against both; and a plugin estimator (benchmark/plugins.py) against every other.

library_practice_correlations gives the libraries' pairs for any trained model and its importance samples, without
a run.
"""

import math
from dataclasses import replace
from itertools import combinations

import numpy as np
import pandas as pd
from torch import Tensor, nn

from benchmark import plugins
from benchmark.config import Config
from benchmark.drivers import EXTRA_PAIRS, LIBRARY_SHORTCUTS, PAPER_ESTIMATORS
from benchmark.loop import accumulate, make_estimators

COLUMNS = ["task", "layer", "param", "kind", "estimator_a", "estimator_b", "method", "value"]
# derived importances: name -> (estimator it is computed from, elementwise transform); the transforms are
# monotone on these non-negative importances, so ranks and top-k sets are those of the estimator itself
DERIVED = {"mas^2": ("mas", np.square), "sqrt(fis)": ("fis", np.sqrt), "sqrt(sos)": ("sos", np.sqrt)}



def source(name: str) -> str:
    """The estimator a (possibly derived) importance is computed from."""
    return DERIVED[name][0] if name in DERIVED else name


def pairs(estimators: list[str]) -> list[tuple[str, str]]:
    """The pairs above among `estimators`, and each plugin estimator with every other estimator (not the
    control drivers: a constant or permuted copy says nothing new)."""
    paper = [e for e in estimators if e in PAPER_ESTIMATORS]
    extra = [(a, b) for a, b in EXTRA_PAIRS if source(a) in estimators and source(b) in estimators]
    known = [e for e in estimators if e in plugins.estimator_names()]
    own = [(a, b) for a, b in combinations(known, 2) if plugins.is_plugin(a) or plugins.is_plugin(b)]
    return list(combinations(paper, 2)) + extra + own


def top_k_method(percent: float) -> str:
    return f"jaccard_top{percent:g}"


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


def average_ranks(v: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's rankdata 'average'), from one unstable argsort
    (order, if the caller has it): the order among equal values does not matter once they share a rank.
    Sorting the float32 importances as they are is exact (float64 would give the same order) and twice as fast."""
    order = np.argsort(v) if order is None else order
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


def top_k_mask(order: np.ndarray, percent: float) -> np.ndarray:
    """The ⌈percent·n/100⌉ largest entries (at least one) of the vector whose argsort is order; among equal
    values at the cut, the argsort's choice."""
    n = len(order)
    mask = np.zeros(n, dtype=bool)
    mask[order[n - max(1, math.ceil(n * percent / 100)):]] = True
    return mask


def correlation_rows(task: int, kind: str, importances: dict[str, dict[str, Tensor]],
                     top_k_percent: float = 10.0, which: list[tuple[str, str]] | None = None) -> list[tuple]:
    """Rows of COLUMNS for one task and one kind ('accumulated' or 'increment'); the pairs above among the
    importances, or the pairs `which` names."""
    estimators = list(importances)
    vectors = {est: layer_vectors(imp) for est, imp in importances.items()}
    for name, (base, transform) in DERIVED.items():
        if base in vectors:
            vectors[name] = {key: transform(v.astype(np.float64)) for key, v in vectors[base].items()}
    units: dict[tuple, np.ndarray | None] = {}
    masks: dict[tuple, np.ndarray] = {}
    orders: dict[tuple, np.ndarray] = {}

    def order(est: str, key: tuple[str, str]) -> np.ndarray:
        # one argsort per importance vector serves its ranks and its top-k set (a derived one has its source's)
        if (source(est), key) not in orders:
            orders[(source(est), key)] = np.argsort(vectors[source(est)][key])
        return orders[(source(est), key)]

    def unit(est: str, key: tuple[str, str], method: str) -> np.ndarray | None:
        # Spearman is Pearson on average ranks; a derived importance has its source's ranks
        name = est if method == "pearson" else source(est)
        if (name, key, method) not in units:
            v = vectors[name][key]
            units[(name, key, method)] = standardised(v if method == "pearson" else average_ranks(v, order(name, key)))
        return units[(name, key, method)]

    def mask(est: str, key: tuple[str, str]) -> np.ndarray:
        if (source(est), key) not in masks:
            masks[(source(est), key)] = top_k_mask(order(est, key), top_k_percent)
        return masks[(source(est), key)]

    rows = []
    overlap = top_k_method(top_k_percent)
    for a, b in pairs(estimators) if which is None else which:
        for key in vectors[a]:
            layer, param = key
            for method in ("pearson", "spearman"):
                ua, ub = unit(a, key, method), unit(b, key, method)
                value = float(np.clip(ua @ ub, -1.0, 1.0)) if ua is not None and ub is not None else float("nan")
                rows.append((task, layer, param, kind, a, b, method, value))
            both, either = np.count_nonzero(mask(a, key) & mask(b, key)), np.count_nonzero(mask(a, key) | mask(b, key))
            rows.append((task, layer, param, kind, a, b, overlap, both / either))
    return rows


# the libraries' Fisher variants and the exact estimators they stand in for: what library_practice_correlations computes
LIBRARY_PRACTICE = ("fis", "fis_exact", *LIBRARY_SHORTCUTS)


def library_practice_correlations(model: nn.Module, x: Tensor, y: Tensor, config: Config) -> pd.DataFrame:
    """How close each library's Fisher comes to the exact ones on one trained model: the importances of
    LIBRARY_PRACTICE on the importance samples (x, y), configured by the protocol's [estimators] section (e.g.
    fis_batched_batchnorm), in eval mode as after a task; one row per layer, parameter kind, pair and method, for
    the pairs above among them. The libraries' options that act across tasks need every task's importance of a
    run: library_option_correlations."""
    observed = replace(config, estimators=replace(config.estimators, observe=LIBRARY_PRACTICE))
    model.eval()
    importances = {name: e.importance(model, x, y) for name, e in make_estimators(observed).items()}
    rows = correlation_rows(0, "increment", importances, config.analysis.top_k_percent)
    return pd.DataFrame(rows, columns=COLUMNS).drop(columns=["task", "kind"])


# the libraries' options that change the importance a penalty sees, not how one task's is computed
# (docs/estimators.md): FACIL's EWC and MAS and Avalanche's MAS blend old and new with α = 0.5; Avalanche bounds SI's
# importance at 0.001 (as estimators.si_clamp_max does, on each task's)
LIBRARY_BLENDED, LIBRARY_BLEND_ALPHA, LIBRARY_SI_BOUND = ("fis", "mas"), 0.5, 0.001


def library_option_correlations(increments: dict[int, dict[str, dict[str, Tensor]]], config: Config,
                                ) -> pd.DataFrame:
    """What those options change, on one run's importances of every task 0 … t (its logged increments): fis's
    and mas's importance accumulated by blending, `<estimator>[blend]`, against their sum (the paper's), and SI's
    sum with each task's Ω bounded, `si[bound]`, against SI's sum — over the same trajectory, so that only the
    importance differs (a run driven by the option would also train differently). Rows as
    library_practice_correlations', after task t."""
    rule = {kind: replace(config, estimators=replace(config.estimators, accumulation=kind,
                                                     blend_alpha=LIBRARY_BLEND_ALPHA)) for kind in ("sum", "blend")}
    summed, blended, bounded = {}, {}, {}
    for task in sorted(increments):
        step = increments[task]
        summed = accumulate(summed, step, rule["sum"])
        blended = accumulate(blended, {e: step[e] for e in LIBRARY_BLENDED if e in step}, rule["blend"])
        if "si" in step:
            bounded = accumulate(bounded, {"si": {k: v.clamp(max=LIBRARY_SI_BOUND) for k, v in step["si"].items()}},
                                 rule["sum"])
    importances = {**summed, **{f"{e}[blend]": v for e, v in blended.items()},
                   **{f"{e}[bound]": v for e, v in bounded.items()}}
    which = [(f"{e}[blend]", e) for e in blended] + [(f"{e}[bound]", e) for e in bounded]
    rows = correlation_rows(max(increments), "accumulated", importances, config.analysis.top_k_percent, which)
    return pd.DataFrame(rows, columns=COLUMNS).drop(columns=["task", "kind"])
