"""One table across scenarios, from published folders alone (their cells.csv and correlations_summary.csv.gz; no
store, no training):

    python results/scenarios.py results/paper-tuned results/conv-quick results/rotated results/split-task \
        results/split-domain results/split-class results/vdv-split-task results/vdv-split-domain \
        results/vdv-split-class \
        > results/scenarios.csv

A row per (scenario, driver) (`kind` acc): test ACC, mean and 95% t-interval over the folder's seeds, and its
difference from `none` paired by seed (the same seeds share data, permutations and initial weights, so the pairing
removes what the seed alone decides).

A row per pair of the paper's estimators (`kind` pair, `pair` a-b): the ACC difference a − b paired by seed. Every
pair, with no correction for their number: six comparisons at 95% each, so where no estimator differs from another,
about one scenario in four still shows an interval that excludes 0. Where a folder has a library's shortcut for the
Fisher (fis_batched, fis_maxpred, fis_pweighted), a pair row of it against the estimator it stands in for (fis),
each at its own tuned λ.

A row per first, middle and output weight layer (`kind` correlation; batch-norm scales left out): the Pearson
correlation of MAS's accumulated weight importances with FIS's, SI's and SIG's after the last task, in the runs
driven by `mas` (the driver whose runs the paper's claims are about), mean and interval over seeds — does the
paper's pattern (MAS–FIS and MAS–SI high, MAS–SIG low except on the first layer) hold beyond its MLP?

Every value is a fraction (ACC 0.9386, not 93.86).
"""

import itertools
import sys
from pathlib import Path

import pandas as pd

from benchmark.drivers import LIBRARY_SHORTCUTS, PAPER_ESTIMATORS, in_paper_order
from benchmark.report.cells import read_cells
from benchmark.report.stats import Estimate, layer_order, mean_ci, paired_difference

PAIRS = {"mas_fis": ("fis", "mas"), "mas_si": ("mas", "si"), "mas_sig": ("mas", "sig")}  # as the summary stores them
COLUMNS = ["kind", "scenario", "driver", "seeds", "lambda", "ACC", "ACC_low", "ACC_high", "vs_none", "vs_none_low",
           "vs_none_high", "pair", "difference", "difference_low", "difference_high", "layer", "position",
           *(f"{p}{s}" for p in PAIRS for s in ("", "_low", "_high"))]


def columns(name: str, e: Estimate) -> dict:
    return {name: e.mean, f"{name}_low": e.low, f"{name}_high": e.high}


def accuracy_rows(folder: Path) -> list[dict]:
    cells = read_cells(folder)
    none = cells[cells.driver == "none"].set_index("seed").ACC.astype(float).to_dict()
    rows = []
    for driver in in_paper_order(set(cells.driver)):
        mine = cells[cells.driver == driver]
        by_seed = mine.set_index("seed").ACC.astype(float).to_dict()
        lambdas = sorted(set(mine["lambda"].dropna().astype(float)))
        row = {"kind": "acc", "scenario": folder.name, "driver": driver, "seeds": len(by_seed),
               "lambda": ",".join(f"{v:.4g}" for v in lambdas), **columns("ACC", mean_ci(list(by_seed.values())))}
        if driver != "none" and none:
            row.update(columns("vs_none", paired_difference(by_seed, none)))
        rows.append(row)
    estimators = [d for d in in_paper_order(set(cells.driver)) if d in PAPER_ESTIMATORS]
    shortcuts = [(d, reference) for d, reference in LIBRARY_SHORTCUTS.items() if {d, reference} <= set(cells.driver)]
    for a, b in [*itertools.combinations(estimators, 2), *shortcuts]:
        by_seed = [cells[cells.driver == d].set_index("seed").ACC.astype(float).to_dict() for d in (a, b)]
        e = paired_difference(*by_seed)
        rows.append({"kind": "pair", "scenario": folder.name, "pair": f"{a}-{b}", "seeds": e.n,
                     **columns("difference", e)})
    return rows


def correlation_rows(folder: Path) -> list[dict]:
    summary = pd.read_csv(folder / "correlations_summary.csv.gz")
    mas = summary[(summary.driver == "mas") & (summary.kind == "accumulated") & (summary.param == "weight")
                  & (summary.method == "pearson")]
    if mas.empty:
        return []
    last = mas[mas.task == mas.task.max()]
    # batch-norm scales (bn1, bn2, …) are no layer of weights between two others: first, middle and output are
    # picked among the weight layers
    layers = [layer for layer in layer_order(mas.layer) if not layer.startswith("bn")]
    chosen = {"first": layers[0], "middle": layers[len(layers) // 2], "output": layers[-1]}
    rows = []
    for position, layer in chosen.items():
        row = {"kind": "correlation", "scenario": folder.name, "driver": "mas", "layer": layer, "position": position,
               "seeds": int(last[last.layer == layer].n.max())}
        for name, (a, b) in PAIRS.items():
            cell = last[(last.layer == layer) & (last.estimator_a == a) & (last.estimator_b == b)]
            if len(cell) == 1:
                r = cell.iloc[0]
                row.update(columns(name, Estimate(r["mean"], r.ci_low, r.ci_high, int(r.n))))
        rows.append(row)
    return rows


def main(folders: list[str]) -> None:
    rows = []
    for folder in map(Path, folders):
        rows += accuracy_rows(folder) + correlation_rows(folder)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(sys.stdout, index=False, float_format="%.10g")


if __name__ == "__main__":
    main(sys.argv[1:])
