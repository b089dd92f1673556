"""`python -m benchmark compare A B`: two published results folders, paired by seed from their cells.csv alone — no
store, no training, so anyone holding the two folders can recompute every number.

For each driver both folders ran, and each measure (ACC, BWT, forgetting): B − A, the mean of the per-seed
differences with its 95% t-interval over the seeds both ran (benchmark.report.stats.paired_difference) — seeds are
shared between protocols (the same permutations, initial weights and batch order), so the pairing removes what the
seed alone decides. The direction is read from the interval: "B higher" or "B lower" only when it excludes 0;
"identical" when every shared seed gave the same value bit for bit, as a driver whose settings the two protocols
share must (`none` under two λ choices) — a check of both regenerations at once.

A difference between the folders is the effect of everything that differs between them: each row gives both λ, and
the output names the environment columns whose values differ (CPU, threads, library versions, commit), so a reader
sees whether more than the intended change does.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.drivers import in_paper_order
from benchmark.errors import UsageError
from benchmark.report.cells import read_cells
from benchmark.report.stats import MEASURES, Estimate, paired_difference

# the columns that should match for a pairing to isolate one change; named in the output where they do not
CONTEXT_COLUMNS = ("dataset", "cpu", "isa", "threads", "torch", "mkl", "onednn", "device", "git_commit")
COLUMNS = ("driver", "measure", "A", "B", "lambda_A", "lambda_B", "mean", "low", "high", "seeds", "identical_seeds",
           "direction")


def direction(e: Estimate, identical: bool) -> str:
    if identical:
        return "identical"
    if e.n < 2 or np.isnan(e.low):
        return "no interval"
    return "B higher" if e.low > 0 else "B lower" if e.high < 0 else "no difference shown"


def one_protocol(cells: pd.DataFrame, folder: Path) -> str:
    """The folder's protocol; a UsageError unless it holds one protocol and each (driver, seed) once — what pairing
    by seed needs."""
    protocols = sorted(set(cells.protocol))
    if len(protocols) != 1:
        raise UsageError(f"{folder} holds protocols {', '.join(protocols)}: compare needs one protocol per folder")
    repeated = cells[cells.duplicated(["driver", "seed"])]
    if not repeated.empty:
        r = repeated.iloc[0]
        raise UsageError(f"{folder}: driver {r.driver}, seed {r.seed} appears more than once in cells.csv")
    return protocols[0]


def lambdas(cells: pd.DataFrame, driver: str) -> str:
    return ",".join(f"{v:.4g}" for v in sorted(set(cells[cells.driver == driver]["lambda"].dropna())))


def compare(folder_a: Path, folder_b: Path, first_seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """The long table (a row per driver and measure) and the context columns whose values differ; only seeds from
    first_seed on are paired."""
    a, b = read_cells(folder_a), read_cells(folder_b)
    name_a, name_b = one_protocol(a, folder_a), one_protocol(b, folder_b)
    a, b = a[a.seed >= first_seed], b[b.seed >= first_seed]
    drivers = in_paper_order(set(a.driver) & set(b.driver))
    if not drivers:
        raise UsageError(f"{folder_a} and {folder_b} share no driver")
    measures = [m for m in MEASURES if m in a.columns and m in b.columns]
    rows = []
    for driver in drivers:
        by_seed = [x[x.driver == driver].set_index("seed") for x in (a, b)]
        shared = sorted(set(by_seed[0].index) & set(by_seed[1].index))
        for measure in measures:
            values = [s[measure].astype(float).to_dict() for s in by_seed]
            e = paired_difference(values[1], values[0])
            identical = sum(values[0][s] == values[1][s] for s in shared)
            rows.append({"driver": driver, "measure": measure, "A": name_a, "B": name_b,
                         "lambda_A": lambdas(a, driver), "lambda_B": lambdas(b, driver),
                         "mean": e.mean, "low": e.low, "high": e.high, "seeds": e.n,
                         "identical_seeds": identical, "direction": direction(e, identical == len(shared) > 0)})
    differing = [c for c in CONTEXT_COLUMNS if c in a.columns and c in b.columns
                 and set(a[c].astype(str)) != set(b[c].astype(str))]
    return pd.DataFrame(rows, columns=list(COLUMNS)), differing


def markdown(table: pd.DataFrame, differing: list[str], measure: str = "ACC") -> str:
    """ACC in points: a row per driver."""
    rows = table[table.measure == measure]
    a, b = rows.A.iloc[0], rows.B.iloc[0]
    lines = [f"{measure} of {b} minus {a}, paired by seed (points; mean [95% t-interval] over the seeds both ran):", "",
             f"| driver | λ {a} | λ {b} | {b} − {a} | seeds | bit-identical | direction |",
             "|---|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        interval = f"{100 * r.mean:+.2f}" + ("" if np.isnan(r.low) else f" [{100 * r.low:+.2f}, {100 * r.high:+.2f}]")
        lines.append(f"| {r.driver} | {r.lambda_A or '–'} | {r.lambda_B or '–'} | {interval} | {r.seeds} | "
                     f"{r.identical_seeds} | {r.direction} |")
    lines.append("")
    lines.append("The two folders differ in: " + (", ".join(differing) if differing else
                                                    "nothing among " + ", ".join(CONTEXT_COLUMNS)) + ".")
    return "\n".join(lines)
