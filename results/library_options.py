"""A library's option against the paper's way, each at its own best λ, from published λ-response folders alone (no
store, no training):

    python results/library_options.py \
        results/lambda-response results/library-options/paper-blend \
        results/lambda-response results/library-options/paper-si-clamp \
        results/library-options/conv-quick results/library-options/conv-quick-bn-train \
        > results/library-options/own_optimum.csv

The arguments come in pairs, REFERENCE OPTION: two λ-curve folders (`python -m benchmark lambda-curve`) of protocols
that differ in one option (the OPTION folder's README names its protocol file, whose header names the change). For
every driver whose curve is complete in OPTION: its fresh-seed test ACC at its own best λ minus, paired by seed, the
test ACC of the same driver at *its* own best λ in REFERENCE — and, for a library shortcut, of the estimator it
stands in for (benchmark.drivers.reference_of). Seeds are shared between the protocols (the same permutations,
initial weights and batch order), so the pairing removes what the seed alone decides. Every value is a fraction.
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.drivers import LIBRARY_SHORTCUTS
from benchmark.report.cells import read_cells
from benchmark.report.stats import mean_ci, paired_difference

COLUMNS = ["option", "driver", "lambda", "ACC", "reference", "reference_driver", "reference_lambda", "reference_ACC",
           "n", "difference", "low", "high", "threads"]


def at_best(folder: Path) -> dict[str, tuple[float, pd.Series]]:
    """Per driver whose curve is complete: its best λ and its fresh seeds' test ACC there, by seed."""
    best = pd.read_csv(folder / "best.csv")
    cells = read_cells(folder)
    tests = cells[cells.phase == "test"]
    result = {}
    for row in best[best.complete].itertuples():
        at = tests[(tests.driver == row.driver) & np.isclose(tests["lambda"], row.best_lambda)]
        result[row.driver] = (row.best_lambda, at.set_index("seed").ACC)
    return result


def threads_of(*folders: Path) -> str:
    return ",".join(sorted({str(t) for f in folders for t in read_cells(f).threads}))


def option_against_reference(reference: Path, option: Path) -> pd.DataFrame:
    theirs, ours = at_best(reference), at_best(option)
    rows = []
    for driver, (lam, acc) in ours.items():
        for reference_driver in dict.fromkeys([driver, LIBRARY_SHORTCUTS.get(driver, driver)]):
            if reference_driver not in theirs:
                continue
            reference_lambda, reference_acc = theirs[reference_driver]
            est = paired_difference(acc.to_dict(), reference_acc.to_dict())
            rows.append({"option": option.name, "driver": driver, "lambda": lam, "ACC": mean_ci(acc).mean,
                         "reference": reference.name, "reference_driver": reference_driver,
                         "reference_lambda": reference_lambda, "reference_ACC": mean_ci(reference_acc).mean,
                         "n": est.n, "difference": est.mean, "low": est.low, "high": est.high,
                         "threads": threads_of(reference, option)})
    return pd.DataFrame(rows, columns=COLUMNS)


if __name__ == "__main__":
    folders = [Path(a) for a in sys.argv[1:]]
    if not folders or len(folders) % 2:
        sys.exit("usage: python results/library_options.py REFERENCE OPTION [REFERENCE OPTION …]")
    tables = [option_against_reference(r, o) for r, o in zip(folders[::2], folders[1::2])]
    pd.concat(tables).to_csv(sys.stdout, index=False, float_format="%.6g")
