"""The paper's three threshold claims re-judged on the folders published before the interval-aware verdicts, from
what they publish: each (layer, task) cell's mean and 95% t-interval over seeds in correlations_summary.csv.gz,
judged by the report's own rule (benchmark.report.stats.above). Driver mas, every one of the 8 ways of measuring.

    python results/rejudge_published.py author > results/claims_rejudged.csv

The paired claim (corr(FIS, MAS²) > corr(FIS, MAS)) and the SIG trend need per-seed values, which these folders
do not publish: they are judged when the folders are regenerated with `report`, which writes claims.csv and
claims_sensitivity.csv itself — this script goes then.
"""

import sys
from pathlib import Path

import pandas as pd

from benchmark.report.stats import HOLDS, SENSITIVITY, Estimate, above, overall

CLAIMS = [("MAS–FIS > 0.8", "fis", "mas", 0.8), ("MAS–SI > 0.8", "mas", "si", 0.8),
          ("FIS–SI > 0.75", "fis", "si", 0.75)]


def rejudge(folder: Path) -> pd.DataFrame:
    summary = pd.read_csv(folder / "correlations_summary.csv.gz")
    summary = summary[summary.driver == "mas"]
    rows = []
    for claim, a, b, threshold in CLAIMS:
        for method, kind, param in SENSITIVITY:
            cells = summary[(summary.method == method) & (summary.kind == kind) & (summary.param == param)
                            & (summary.estimator_a == a) & (summary.estimator_b == b)]
            for tasks, group in (("1+", cells[cells.task > 0]), ("0", cells[cells.task == 0])):
                verdicts = [(r, above(Estimate(r.mean, r.ci_low, r.ci_high, int(r.n)), threshold))
                            for r in group.itertuples()]
                rows.append({"folder": folder.name, "claim": claim, "method": method, "kind": kind, "param": param,
                             "tasks": tasks, "verdict": overall(v for _, v in verdicts),
                             "cells_holding": f"{sum(v == HOLDS for _, v in verdicts)}/{len(verdicts)}",
                             "not_holding": "; ".join(f"{r.layer} task {r.task} {r.mean:.3f} [{r.ci_low:.3f}, "
                                                      f"{r.ci_high:.3f}] {v}" for r, v in verdicts if v != HOLDS)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    table = pd.concat([rejudge(Path(__file__).parent / name) for name in sys.argv[1:]], ignore_index=True)
    print(table.to_csv(index=False), end="")
