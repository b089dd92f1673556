"""A results folder's per-cell values, cells.csv (one row a cell: what it ran, what it measured, where it ran), and
the commands that regenerate the folder with every λ pinned — what `verify` reruns and judges against."""

import dataclasses
from itertools import combinations
from pathlib import Path

import pandas as pd

from benchmark.config import PROTOCOLS, Config, load_config
from benchmark.drivers import PAPER_ESTIMATORS
from benchmark.environment import CELLS_FILE, FINGERPRINT_KEYS, PROTOCOL_SUFFIX
from benchmark.errors import UsageError, first_line
from benchmark.report.collect import RecordedSweep
from benchmark.report.stats import MEASURES, run_measures

# what a cell ran; its measures follow, then the environment it ran in (FINGERPRINT_KEYS) and its MLflow run
CELL_KEYS = ("protocol", "dataset", "driver", "seed", "lambda", "lambda_source")
TEXT_COLUMNS = ("protocol", "dataset", "driver", "lambda_source", "device", *FINGERPRINT_KEYS, "run_id")
REQUIRED = (*CELL_KEYS, "ACC", "BWT", "fingerprint", "run_id")
# λ from the protocol (shipped or the user's file): `--lambda-source protocol` gives it again; others are pinned
FROM_PROTOCOL = ("default", "config", "none")


def correlation_column(a: str, b: str) -> str:
    """The mean over (layer, task) of the Pearson correlation of a's and b's accumulated importances over each
    layer's weights: one number per cell and pair of the paper's estimators, the claims' raw material."""
    return f"pearson_{a}_{b}"


def cells_table(sweep: RecordedSweep) -> pd.DataFrame:
    """cells.csv: per finished cell CELL_KEYS, ACC, BWT, forgetting (from its accuracy matrix, as the report's
    tables), val_ACC (NaN without a validation split), the correlation_column of every pair of the paper's
    estimators it observed, its device and environment fingerprint, its run id. Floats in full precision."""
    chosen = sweep.correlations[(sweep.correlations.kind == "accumulated") & (sweep.correlations.param == "weight")
                                & (sweep.correlations.method == "pearson")]
    pairs = [(a, b) for a, b in combinations(PAPER_ESTIMATORS, 2)
             if ((chosen.estimator_a == a) & (chosen.estimator_b == b)).any()]
    means = chosen.groupby(["run_id", "estimator_a", "estimator_b"], observed=True).value.mean()
    rows = []
    for cell in sweep.cells.to_dict("records"):
        rows.append({**{key: cell[key] for key in CELL_KEYS}, **run_measures(sweep.accuracy[cell["run_id"]]),
                     "val_ACC": cell["val_ACC"],
                     **{correlation_column(a, b): means.get((cell["run_id"], a, b), float("nan")) for a, b in pairs},
                     "device": cell["device"], **{key: cell[key] for key in FINGERPRINT_KEYS},
                     "run_id": cell["run_id"]})
    return pd.DataFrame(rows)


def value_columns(cells: pd.DataFrame) -> list[str]:
    """The measured columns of a cells.csv: the measures, val_ACC where there is one, the correlations."""
    return [c for c in cells.columns if c in (*MEASURES, "val_ACC") or c.startswith("pearson_")]


def read_cells(folder: Path) -> pd.DataFrame:
    """A results folder's cells.csv (every float as written); a UsageError naming what is missing."""
    path = folder / CELLS_FILE
    if not folder.is_dir():
        raise UsageError(f"no results folder {folder}")
    if not path.is_file():
        raise UsageError(f"{folder} has no {CELLS_FILE} (made by `python -m benchmark report` since it publishes "
                         "per-cell values)")
    try:
        cells = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not a readable CSV: {first_line(e)}") from None
    missing = [c for c in REQUIRED if c not in cells.columns]
    if missing or cells.empty:
        raise UsageError(f"{path}: " + (f"no column {missing[0]!r}" if missing else "no cell"))
    present = [c for c in TEXT_COLUMNS if c in cells.columns]
    cells[present] = cells[present].fillna("")
    return cells


def protocol_file(folder: Path, protocol: str) -> Path | None:
    """Where a published protocol is read from: shipped (None), or the folder's <protocol>.toml."""
    return None if protocol in PROTOCOLS else folder / f"{protocol}{PROTOCOL_SUFFIX}"


def cell_config(folder: Path, protocol: str, dataset: str) -> Config:
    """The protocol a published cell ran, on the dataset it ran on; a UsageError if it is neither shipped nor in
    the folder."""
    path = protocol_file(folder, protocol)
    if path is not None and not path.is_file():
        raise UsageError(f"protocol {protocol!r} is not shipped (choose from {', '.join(PROTOCOLS)}) and {folder} "
                         f"has no {path.name}")
    config = load_config(protocol=protocol if path is None else None, path=path)
    if dataset and dataset != config.data.dataset:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=dataset))
    return config


def seed_options(seeds: list[int]) -> str:
    first = f" --first-seed {seeds[0]}" if seeds[0] else ""
    return f"--seeds {seeds[-1] - seeds[0] + 1}{first}"


def regenerating_commands(cells: pd.DataFrame, drivers: list[str], experiments: dict[str, str], folder: Path,
                          report_options: str) -> tuple[list[str], list[str]]:
    """The commands that remake `folder` from nothing — one `run` per protocol, every λ pinned (the protocol's
    through --lambda-source protocol, any other by value), then the `report` — and notes on what they cannot say
    exactly (seeds not contiguous, drivers not on the same seeds, λ varying within a driver).
    drivers: in the order to run them; experiments: protocol → the experiment its cells are in."""
    commands, notes = [], []
    for protocol, mine in cells.groupby("protocol", sort=False):
        path = protocol_file(folder, protocol)
        source = f"--protocol {protocol}" if path is None else f"--config {path}"
        if path is not None and not path.is_file():
            notes.append(f"protocol {protocol} is not shipped: copy its file to {path}")
        dataset = next(iter(mine.dataset))
        if path is None and dataset != load_config(protocol=protocol).data.dataset:
            source += f" --dataset {dataset}"
        ran = [d for d in drivers if d in set(mine.driver)]
        seeds = sorted(set(int(s) for s in mine.seed))
        if seeds != list(range(seeds[0], seeds[-1] + 1)) or len(mine) != len(ran) * len(seeds):
            notes.append(f"{protocol}: the folder holds {len(mine)} cells, not every driver on seeds "
                         f"{seeds[0]}–{seeds[-1]}; the command runs them all")
        pinned = []
        for driver, runs in mine[~mine.lambda_source.isin(FROM_PROTOCOL)].groupby("driver", sort=False):
            values = sorted(set(float(v) for v in runs["lambda"]))
            if len(values) > 1:
                notes.append(f"{protocol}: {driver} ran at {len(values)} λ ({', '.join(map(repr, values))}); the "
                             "command pins the first")
            pinned.append(f"{driver}={values[0]!r}")
        lambdas = " --lambda " + ",".join(pinned) if pinned else ""
        # what the runs logged beyond the default matters to what reads them (predict-forgetting, sparsify)
        logged = sorted({c.get("log_importances", "final") for c in mine["config"]}) if "config" in mine else []
        logging = f" --log-importances {logged[0]}" if len(logged) == 1 and logged[0] != "final" else ""
        commands.append(f"python -m benchmark run {source} --drivers {','.join(ran)} {seed_options(seeds)} "
                        f"--lambda-source protocol{lambdas}{logging}")
    shown = " ".join(f"--experiment {experiments[p]}" for p in dict.fromkeys(cells.protocol) if p in experiments)
    commands.append(f"python -m benchmark report {shown} --out {folder}{report_options}")
    return commands, notes
