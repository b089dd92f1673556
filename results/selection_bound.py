"""How much could choosing λ on the test set have inflated the paper author's published accuracies? An upper estimate
from his own scripts and figures, no training.

    python results/selection_bound.py > results/author/selection_bound.csv

His scripts (aakutalev/ewc-features, section2/fully-connected-ewc-{fisher,mas,si,signal}.py, at the commits whose
logs hold his runs) train N runs at each of K grid values of λ and report the λ whose mean test accuracy is highest.
With m_k = μ_k + e_k the mean at grid value k, the reported figure m_k̂ exceeds what fresh runs at k̂ give on average
(μ_k̂) by e_k̂ ≤ max_k e_k. If every grid value's runs spread like the published best's (sd σ), e_k ~ N(0, σ²/N), and
for errors independent or positively correlated (his runs share one cached set of permutations) Sudakov–Fernique
gives E[max_k e_k] ≤ σ/√N · E[max of K independent standard normals]: the column `inflation_bound`, in ACC points.
N is each version's `N` (fis 15, sig 10; literature.md says 20 runs — more runs shrink the bound as 1/√N). The gap
it is set against is his figure minus ours under the `author` protocol (results/author/cells.csv, mean and 95%
t-interval over its seeds).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import integrate, stats

from benchmark.report.stats import mean_ci

# estimator: (script, commit of the version beside the log, K grid values, N runs per value, his mean, his sd) in
# ACC points; K and N read from the `lmbdas` list and `N` of that version, mean and sd from
# ../shared/docs/literature.md (his logs)
AUTHOR = {
    "fis": ("fully-connected-ewc-fisher.py", "365dfee", 52, 15, 95.05, 0.33),
    "mas": ("fully-connected-ewc-mas.py", "365dfee", 33, 20, 95.53, 0.17),
    "si": ("fully-connected-ewc-si.py", "365dfee", 42, 20, 94.32, 0.30),
    "sig": ("fully-connected-ewc-signal.py", "88ea984", 33, 10, 92.91, 0.42),
}


def expected_max_of_normals(k: int) -> float:
    """E[max of k independent standard normals] = ∫ x · k φ(x) Φ(x)^(k−1) dx."""
    value, _ = integrate.quad(lambda x: x * k * stats.norm.pdf(x) * stats.norm.cdf(x) ** (k - 1), -np.inf, np.inf)
    return value


def main() -> None:
    cells = pd.read_csv(Path(__file__).parent / "author" / "cells.csv")
    rows = []
    for driver, (script, commit, k, n, mean, sd) in AUTHOR.items():
        bound = sd / np.sqrt(n) * expected_max_of_normals(k)
        ours = mean_ci(100 * cells.loc[cells.driver == driver, "ACC"])
        rows.append({"driver": driver, "script": script, "commit": commit, "grid_values": k, "runs_per_value": n,
                     "author_ACC": mean, "author_sd": sd, "inflation_bound": round(bound, 3),
                     "ours_ACC": round(ours.mean, 2), "ours_seeds": ours.n, "gap": round(mean - ours.mean, 2),
                     "gap_low": round(mean - ours.high, 2), "gap_high": round(mean - ours.low, 2),
                     "bound_share_of_gap": round(bound / (mean - ours.mean), 2)})
    pd.DataFrame(rows).to_csv(sys.stdout, index=False)


if __name__ == "__main__":
    main()
