"""`python -m benchmark verify FOLDER`: rerun a few of a published folder's cells here, each with exactly the
protocol, driver, seed and λ its cells.csv records, and judge each against the published values.

Where this environment's fingerprint equals the published cell's (benchmark.environment: same CPU ISA level,
threads, torch, MKL, oneDNN, device), the rerun must be bit-identical: any difference is a failure. Elsewhere float
kernels round differently, differences grow through training, and a rerun is in effect a fresh draw: each value
must then lie inside the prediction interval of the published seeds of its driver,
mean ± t_{1−α/2, n−1} · sd · √(1 + 1/n). A cell has several values (ACC, BWT, forgetting, val_ACC, its
correlations); each is judged at α = 5% / (their number) (Bonferroni), so that an honest rerun on another machine
fails a cell with at most 5% probability. From one published seed there is no interval: only identity can pass.

Exit status 0: every cell passes; 1: one fails; 2: bad input (no folder, no cells.csv, a protocol neither shipped
nor in the folder, --cells naming no published cell).
"""

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from benchmark.config import refuse_carried_adam
from benchmark.environment import CELLS_FILE, differing, fingerprint
from benchmark.errors import UsageError
from benchmark.progress import Progress
from benchmark.report.cells import cell_config, read_cells, value_columns

LEVEL = 0.95  # a cell's values judged together: an honest rerun elsewhere fails with at most 1 − LEVEL


def prediction_interval(values, level: float = LEVEL) -> tuple[float, float] | None:
    """Where one more draw from the values' distribution lies with probability `level` (Student t, the values
    assumed normal): mean ± t_{(1+level)/2, n−1} · sd · √(1 + 1/n) over the finite values; None from fewer
    than 2."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None
    n, mean = len(v), float(v.mean())
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) * math.sqrt(1 + 1 / n))
    return mean - half, mean + half


def choose(cells: pd.DataFrame, spec: str) -> pd.DataFrame:
    """--cells: a count K — the first K cells when ordered by seed, then as published (so K = 2 takes the first
    seed of two drivers) — or a list of [PROTOCOL/]DRIVER:SEED[@LAMBDA], each naming at least one published cell
    (the protocol and λ narrow it where a folder holds several: an ablation's protocols, a λ-curve's grid)."""
    if ":" not in spec:
        try:
            count = int(spec)
        except ValueError:
            raise UsageError(f"--cells expects a count or [PROTOCOL/]DRIVER:SEED[@LAMBDA],…, got {spec!r}") from None
        if count < 1:
            raise UsageError(f"--cells must be ≥ 1, not {count}")
        order = sorted(range(len(cells)), key=lambda i: (int(cells.seed.iloc[i]), i))
        return cells.iloc[order[:count]]
    chosen = []
    for item in (item.strip() for item in spec.split(",")):
        protocol, _, cell = item.rpartition("/")
        cell, _, lam = cell.partition("@")
        driver, _, seed = cell.partition(":")
        match = (cells.driver == driver) & (cells.seed.astype(str) == seed.strip())
        if protocol:
            match &= cells.protocol == protocol
        if lam:
            try:
                match &= np.isclose(cells["lambda"].astype(float), float(lam))
            except ValueError:
                raise UsageError(f"--cells: λ {lam!r} in {item!r} is not a number") from None
        if not match.any():
            raise UsageError(f"--cells: the folder has no cell {item!r} (its cells: "
                             f"{', '.join(dict.fromkeys(cell_names(cells)))})")
        chosen.append(cells[match])
    return pd.concat(chosen).drop_duplicates("run_id")


def ambiguity(cells: pd.DataFrame) -> tuple[bool, pd.Series]:
    """What a cell's name must add to name one cell: whether the folder holds several protocols, and per cell
    whether its protocol, driver and seed occur at several λ."""
    return cells.protocol.nunique() > 1, cells.duplicated(["protocol", "driver", "seed"], keep=False)


def cell_names(cells: pd.DataFrame) -> list[str]:
    """How --cells names each cell: DRIVER:SEED, with the protocol where the folder has several and the λ where
    a driver and seed occur at several."""
    several_protocols, several_lambdas = ambiguity(cells)
    return [(f"{r.protocol}/" if several_protocols else "") + f"{r.driver}:{r.seed}"
            + (f"@{r['lambda']:g}" if several else "")
            for (_, r), several in zip(cells.iterrows(), several_lambdas)]


def rerun(store, config, cell: pd.Series, data_dir: str, download: bool) -> pd.Series | str:
    """The cell run again here, recorded in `store` under its experiment's name + "-verify" (so that a store holding
    the published runs does not hand one back as finished): its cells.csv row, or why there is none."""
    from benchmark.environment import experiment_name
    from benchmark.lambdas import Lambda
    from benchmark.report.cells import cells_table
    from benchmark.report.collect import latest_sweep, load_sweep
    from benchmark.scenario import load_splits
    from benchmark.sweep import run_sweep

    device = "cuda" if cell.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    splits = load_splits(config.data, data_dir, download, device)
    driver, seed = cell.driver, int(cell.seed)
    lambdas = {} if driver == "none" else {driver: Lambda(float(cell["lambda"]), cell.lambda_source)}
    experiment = f"{experiment_name(config)}-verify"
    statuses, reused = run_sweep(store, config, [driver], [seed], lambdas, splits, "none",
                                 f"python -m benchmark verify (cell {driver} seed {seed})", experiment=experiment)
    if reused:
        return f"not rerun: {store.uri} already holds a rerun of this cell (run {reused[0]}); verify into another"
    if statuses[(driver, seed)] != "FINISHED":
        return f"the rerun {statuses[(driver, seed)]}"
    sweep = load_sweep(store, [latest_sweep(store, experiment).id], None)
    return cells_table(sweep).iloc[0]


def judge(published: pd.Series, here: pd.Series, seeds: pd.DataFrame, columns: list[str]) -> tuple[bool, str]:
    """Whether a rerun passes, and its line. seeds: the published cells of its protocol, driver and λ."""
    measured = [c for c in columns if np.isfinite(published[c])]
    identical = all(published[c] == here[c] for c in measured)
    same = published.fingerprint != "" and published.fingerprint == here.fingerprint
    environment = "same fingerprint" if same else f"fingerprint differs: {', '.join(differing(published, here))}"
    head = f"ACC {here.ACC:.5f} published {published.ACC:.5f}"
    others = len(measured) - 1
    if identical:
        return True, f"{head}, identical, and its {others} other values too ({environment})"
    if same:
        differ = [c for c in measured if published[c] != here[c]]
        return False, f"{head}: {', '.join(differ)} DIFFER although the fingerprint is the same"
    level = 1 - (1 - LEVEL) / len(measured)
    intervals = {c: prediction_interval(seeds[c], level) for c in measured}
    if any(interval is None for interval in intervals.values()):
        return False, (f"{head}, not identical, and a single published seed gives no prediction interval: cannot "
                       f"judge ({environment})")
    outside = [c for c in measured if not intervals[c][0] <= here[c] <= intervals[c][1]]
    low, high = intervals["ACC"]
    where = "OUTSIDE" if "ACC" in outside else "inside"
    line = (f"{head}, {where} the {level:.2%} prediction interval [{low:.5f}, {high:.5f}] of {len(seeds)} "
            f"published seeds ({LEVEL:.0%} jointly over the cell's {len(measured)} values); ")
    rest = [c for c in outside if c != "ACC"]
    line += ("OUTSIDE theirs: " + ", ".join(f"{c} {here[c]:.5f} [{intervals[c][0]:.5f}, {intervals[c][1]:.5f}]"
                                             for c in rest)) if rest else f"its {others} other values inside theirs"
    return not outside, f"{line} ({environment})"


def verify(folder: Path, spec: str, tracking_uri: str | None, data_dir: str, download: bool) -> int:
    """Rerun the chosen cells of `folder` and print one verdict line per cell; the exit status."""
    from tracking import Store, StoreError

    cells = read_cells(folder)
    chosen = choose(cells, spec)
    configs = {(p, d): cell_config(folder, p, d) for p, d in dict.fromkeys(zip(chosen.protocol, chosen.dataset))}
    for config in configs.values():
        refuse_carried_adam(config, "verify")
    columns = value_columns(cells)
    several, at_several_lambdas = ambiguity(cells)
    progress = Progress("verified cell", total=len(chosen))
    with tempfile.TemporaryDirectory() as throwaway:
        try:
            store = Store(tracking_uri or f"sqlite:///{Path(throwaway) / 'mlflow.db'}")
        except StoreError as e:
            raise UsageError(str(e)) from None
        here = fingerprint(torch.device("cpu"))
        progress.say(f"verify {folder}: rerunning {len(chosen)} of its {len(cells)} cells here (fingerprint "
                     f"{here['fingerprint']}; the folder's: {', '.join(sorted(set(cells.fingerprint) - {''}))}), "
                     f"recorded in {store.uri}")
        failed = 0
        for label, cell in chosen.iterrows():
            name = (f"{cell.driver} seed {cell.seed}" + (f" λ {cell['lambda']:g}" if at_several_lambdas[label] else "")
                    + (f" ({cell.protocol})" if several else ""))
            progress.describe(name)
            result = rerun(store, configs[(cell.protocol, cell.dataset)], cell, data_dir, download)
            if isinstance(result, str):
                passed, line = False, result
            else:
                seeds = cells[(cells.protocol == cell.protocol) & (cells.driver == cell.driver)
                              & (cells["lambda"] == cell["lambda"])]
                passed, line = judge(cell, result, seeds, columns)
            failed += not passed
            print(f"{name}: {line}", flush=True)
            progress.item_done(f"{name}: {'passes' if passed else 'FAILS'}")
        progress.close()
    print(f"verify: {len(chosen) - failed} of {len(chosen)} cells of {folder / CELLS_FILE} pass", file=sys.stderr)
    return 1 if failed else 0
