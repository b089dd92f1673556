"""What the thread count alone does to a cell, from published folders alone (no store, no training):

    python results/thread_count.py results/paper-tuned results/lambda-response > results/thread_count.csv

Pairs every cell of the first folder with the cell of the second that has the same dataset, driver, seed and λ (for
a λ-response folder: its fresh-seed test cells) but ran with another number of torch threads — the same computation;
only the order of the float sums differs. The protocols' names may differ where one is the other with its λ changed
(`paper-tuned` is `paper` but for [penalty]; at the same λ a cell of either is the same cell: run at the same thread
count they agree bit for bit, results/README.md "Same cell, another thread count"). A row per driver and one for all
pairs: the second folder's test ACC minus the first's, mean and 95% t-interval over the pairs, the mean absolute
difference and how many pairs differ at all. Every value is a fraction (ACC 0.9386, not 93.86).
"""

import sys
from pathlib import Path

import pandas as pd

from benchmark.drivers import in_paper_order
from benchmark.report.cells import read_cells
from benchmark.report.stats import mean_ci

KEYS = ["dataset", "driver", "seed", "lambda"]


def paired_cells(first: Path, second: Path) -> pd.DataFrame:
    """One row per cell the two folders share (KEYS equal, λ to 4 significant digits) at different thread counts."""
    a, b = read_cells(first), read_cells(second)
    if "phase" in b:
        b = b[b.phase == "test"]
    a, b = (cells.assign(**{"lambda": cells["lambda"].map(lambda v: float(f"{v:.4g}"))}) for cells in (a, b))
    both = a.merge(b, on=KEYS, suffixes=("_first", "_second"))
    both = both[both.threads_first.astype(str) != both.threads_second.astype(str)]
    return both.assign(difference=both.ACC_second - both.ACC_first)


def summary(pairs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    groups = [(d, pairs[pairs.driver == d]) for d in in_paper_order(pairs.driver)] + [("all", pairs)]
    for driver, at in groups:
        est = mean_ci(at.difference)
        rows.append({"driver": driver, "n": est.n, "difference": est.mean, "low": est.low, "high": est.high,
                     "mean_abs_difference": at.difference.abs().mean(), "differing": int((at.difference != 0).sum()),
                     "threads_first": ",".join(sorted(set(at.threads_first.astype(str)))),
                     "threads_second": ",".join(sorted(set(at.threads_second.astype(str))))})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python results/thread_count.py FOLDER FOLDER")
    summary(paired_cells(Path(sys.argv[1]), Path(sys.argv[2]))).to_csv(sys.stdout, index=False, float_format="%.6g")
