"""Read a sweep back from the store: its cells' configs, accuracy matrices and correlations, as tables."""

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.drivers import in_paper_order
from benchmark.environment import FINGERPRINT_KEYS
from benchmark.errors import UsageError
from tracking import RunRecord, Store, StoreError


@dataclass
class RecordedSweep:
    experiment: str
    parents: list[RunRecord]
    # one row per finished cell: run_id, driver, seed, lambda, lambda_source, protocol, dataset, device, val_ACC, the
    # environment fingerprint's tags (benchmark.environment; "" where a run predates them), its config
    cells: pd.DataFrame
    accuracy: dict[str, np.ndarray]  # run_id -> test accuracy matrix R [tasks, tasks]
    correlations: pd.DataFrame  # correlations.csv of every cell, with run_id, driver, seed columns
    missing: list[str] = field(default_factory=list)  # expected (driver, seed) cells without a finished run
    not_finished: list[str] = field(default_factory=list)  # cells that ran but did not finish, with status

    @property
    def drivers(self) -> list[str]:
        return in_paper_order(self.cells["driver"])


def latest_sweep(store: Store, experiment: str | None) -> RunRecord:
    """The most recent sweep (parent run of `benchmark run`) of `experiment`, or of the whole store if None."""
    try:
        found = store.find_runs(experiment, kind="sweep", max_results=1)
        if not found:
            known = ", ".join(store.experiments()) or "none"
            where = f"experiment {experiment!r} of {store.uri}" if experiment else store.uri
            raise UsageError(f"no sweep in {where} (experiments: {known}); make one with `python -m benchmark run`")
    except StoreError as e:
        raise UsageError(str(e)) from None
    return found[0]


def load_sweep(store: Store, sweep_ids: list[str] | None, run_ids: list[str] | None) -> RecordedSweep:
    """The given sweeps (parent runs), or the given cell runs."""
    try:
        if run_ids:
            cells = store.find_runs(run_ids=run_ids, kind="cell")
            if len(cells) != len(run_ids):
                raise UsageError("--runs: every id must be a cell run (a child of a sweep)")
            parent_ids = sorted({c.tags.get("mlflow.parentRunId", "") for c in cells} - {""})
            parents = store.find_runs(run_ids=parent_ids) if parent_ids else []
        else:
            parents = store.find_runs(run_ids=sweep_ids, kind="sweep")
            if len(parents) != len(sweep_ids):
                raise UsageError("--sweep: every id must be a sweep (a parent run of `benchmark run`)")
            # a resumed sweep reuses finished cells of earlier sweeps: they count as its own
            reused = [i for p in parents for i in p.tags.get("reused_cells", "").split(",") if i]
            cells = [c for p in parents for c in store.find_runs(p.experiment, kind="cell",
                                                                   **{"mlflow.parentRunId": p.id})]
            cells += store.find_runs(run_ids=reused) if reused else []
    except StoreError as e:
        raise UsageError(str(e)) from None

    finished = [c for c in cells if c.status == "FINISHED"]
    not_finished = [f"{c.tags.get('driver')}/seed {c.tags.get('seed')} ({c.status})" for c in cells
                    if c.status != "FINISHED"]
    if not finished:
        raise UsageError("the chosen runs hold no finished cell to report on")

    accuracy, correlations, rows = {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        for c in finished:
            local = Path(tmp) / c.id
            config = json.loads(store.download(c.id, "config.json", local).read_text())
            R = pd.read_csv(store.download(c.id, "accuracy_matrix.csv", local)).drop(columns="after_task")
            accuracy[c.id] = R.to_numpy()
            table = pd.read_csv(store.download(c.id, "correlations.csv", local))
            table.insert(0, "run_id", c.id)
            table.insert(1, "driver", config["driver"])
            table.insert(2, "seed", config["seed"])
            table.insert(3, "protocol", config["protocol"])  # sweeps of several protocols are judged apart
            correlations.append(table)
            rows.append({"run_id": c.id, "driver": config["driver"], "seed": config["seed"],
                         "lambda": config["lambda"], "lambda_source": config["lambda_source"],
                         "protocol": config["protocol"], "dataset": config["data"]["dataset"],
                         "device": config["device"], "val_ACC": c.metrics.get("val_ACC", float("nan")),
                         **{key: c.tags.get(key, "") for key in FINGERPRINT_KEYS}, "config": config})

    cells_table = pd.DataFrame(rows).sort_values(["driver", "seed"]).reset_index(drop=True)
    present = set(zip(cells_table.driver, cells_table.seed))
    expected = {(d, int(s)) for p in parents for d in p.tags.get("drivers", "").split(",") if d
                for s in p.tags.get("seeds", "").split(",") if s}
    missing = [f"{d}/seed {s}" for d, s in sorted(expected - present)]
    correlations = pd.concat(correlations, ignore_index=True)
    # each correlations.csv lists the layers in the model's parameter order, input to output: the order every
    # table and figure keeps (names alone cannot give it: conv1 … bn1 … fc)
    correlations["layer"] = pd.Categorical(correlations.layer, categories=list(dict.fromkeys(correlations.layer)))
    return RecordedSweep(experiment=finished[0].experiment, parents=parents, cells=cells_table, accuracy=accuracy,
                 correlations=correlations, missing=missing,
                 not_finished=not_finished)
