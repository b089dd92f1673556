"""What the libraries' Fisher shortcuts compute, measured on the networks a sweep trained.

For every cell of a sweep (each driver and seed), its network after task t (the state it logged) is read back, and
on task t's importance samples — as the run itself would compute them after task t — the exact Fisher estimators
and the libraries' practice (correlations.LIBRARY_PRACTICE: the minibatch-gradient shortcut `fis_batched`, the
arg-max labels `fis_maxpred`, the p(y|x)-weighted empirical Fisher `fis_pweighted`; each estimator's docstring
names the libraries that do it) are computed and correlated per layer: Pearson, Spearman and the overlap of the
top 10 %. The empirical Fisher `fis` and the true Fisher `fis_exact` are the references. Where the run logged
every task's importance (`run --log-importances all`), also the libraries' options that act across tasks
(correlations.library_option_correlations): fis and mas blended (α = 0.5) against their sum, SI with each task's
Ω bounded at 0.001 against SI. Per protocol, driver, layer and pair: the mean over seeds with its 95% t-interval.
"""

from pathlib import Path

import pandas as pd

from benchmark.correlations import (
    LIBRARY_BLEND_ALPHA,
    LIBRARY_SI_BOUND,
    library_option_correlations,
    library_practice_correlations,
)
from benchmark.drivers import in_paper_order
from benchmark.environment import CELLS_FILE, FINGERPRINT_KEYS
from benchmark.errors import UsageError
from benchmark.evaluation import task_head
from benchmark.model import make_model
from benchmark.progress import Progress
from benchmark.report.collect import RecordedSweep
from benchmark.report.stats import MIN_SEEDS, Estimate, mean_ci
from benchmark.scenario import Splits, load_splits, make_task_sequence
from benchmark.sparsify import check_sequence, read_logged_run
from tracking import Store

SUMMARY_FILE = "summary.csv"
KEYS = ("protocol", "driver", "layer", "param", "estimator_a", "estimator_b", "method")


def cell_table(store: Store, run_id: str, task: int | None, data: dict[str, dict[str, Splits]],
               data_dir: str, download: bool) -> pd.DataFrame:
    """library_practice_correlations of one cell's network after `task` (default its last) on that task's
    importance samples, through that task's head. data: the protocols' splits read so far, by protocol."""
    try:
        logged = read_logged_run(store, run_id, task)
    except UsageError:  # logged without every task's importances (`run --log-importances all`): no option rows
        logged = read_logged_run(store, run_id, task, importances=False)
    config = logged.config
    if config.protocol not in data:
        data[config.protocol] = load_splits(config.data, data_dir, download, "cpu")
    sequence = make_task_sequence(config.data, data[config.protocol], logged.seed)
    check_sequence(store, logged, sequence)
    model = make_model(config.model)
    model.load_state_dict(logged.state_dict)
    x, y = sequence.split("importance", logged.task)
    with task_head(model, sequence.classes(logged.task)):
        table = library_practice_correlations(model, x, y, config)
    if logged.importances:
        table = pd.concat([table, library_option_correlations(logged.importances, config)], ignore_index=True)
    return table.assign(task=logged.task)


def measure(store: Store, sweep: RecordedSweep, task: int | None, data_dir: str, download: bool) -> pd.DataFrame:
    """cell_table of every finished cell of the sweep, with its run id, protocol, driver and seed."""
    tables, data = [], {}
    order = {driver: k for k, driver in enumerate(in_paper_order(sweep.cells.driver))}
    progress = Progress("run", total=len(sweep.cells))
    with progress.bar:
        for cell in sorted(sweep.cells.to_dict("records"), key=lambda c: (order[c["driver"]], c["seed"])):
            table = cell_table(store, cell["run_id"], task, data, data_dir, download)
            for position, key in enumerate(("run_id", "protocol", "driver", "seed")):
                table.insert(position, key, cell[key])
            tables.append(table)
            progress.item_done(f"{cell['driver']} seed {cell['seed']}")
    return pd.concat(tables, ignore_index=True)


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for key, group in cells.groupby(list(KEYS), sort=False, observed=True):
        e = mean_ci(group.value)
        rows.append({**dict(zip(KEYS, key)), "task": int(group.task.iloc[0]), "mean": e.mean, "ci_low": e.low,
                     "ci_high": e.high, "n": e.n})
    return pd.DataFrame(rows)


def readme(summary: pd.DataFrame, sweep: RecordedSweep, command: str) -> str:
    pairs = list(dict.fromkeys(zip(summary.estimator_a, summary.estimator_b)))
    lines = ["# What the libraries compute: their Fisher shortcuts against the exact Fisher", "",
             "On each network the sweep trained, after its task "
             f"{int(summary.task.iloc[0])}, on that task's importance samples: every estimator of "
             "`correlations.LIBRARY_PRACTICE` computed, and each library shortcut correlated with the empirical "
             "Fisher `fis` and the true Fisher `fis_exact` over each layer's weights; mean over seeds [95% "
             f"t-interval] (an interval from {MIN_SEEDS} seeds on). From runs that logged every task's importance, "
             "also the options that act across tasks, on the importance accumulated over the run's tasks 0 … "
             f"{int(summary.task.iloc[0])}: `fis[blend]` and `mas[blend]` (Ω ← {LIBRARY_BLEND_ALPHA:g} Ω + "
             f"{1 - LIBRARY_BLEND_ALPHA:g} Ω_task) against the sum, `si[bound]` (each task's Ω bounded at "
             f"{LIBRARY_SI_BOUND:g}) against SI's. How: benchmark/library_practice.py; "
             "which library does what: docs/estimators.md.", "",
             f"Runs: experiment {sweep.experiment}, sweep {', '.join(p.id for p in sweep.parents)}: "
             f"{len(sweep.cells)} cells.", "", f"Regenerate: `{command}`", ""]
    weights = summary[summary.param == "weight"]
    for (protocol, driver), table in weights.groupby(["protocol", "driver"], sort=False):
        layers = list(dict.fromkeys(table.layer))
        for method in dict.fromkeys(table.method):
            mine = table[table.method == method]
            lines += [f"## protocol {protocol}, driver {driver}: {method}", "",
                      "| pair | " + " | ".join(layers) + " |", "|---" * (len(layers) + 1) + "|"]
            for a, b in pairs:
                cells = []
                for layer in layers:
                    row = mine[(mine.estimator_a == a) & (mine.estimator_b == b) & (mine.layer == layer)]
                    cells.append(Estimate(*row[["mean", "ci_low", "ci_high", "n"]].iloc[0]).short()
                                 if len(row) else "–")
                lines.append(f"| {a} – {b} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [f"Files: `{SUMMARY_FILE}` (every layer, parameter kind — weight, bias, all —, pair and method, with "
              f"its interval), `{CELLS_FILE}` (every value per seed, with the run and its fingerprint).", ""]
    return "\n".join(lines)


def write(store: Store, sweep: RecordedSweep, task: int | None, out: Path, command: str, data_dir: str,
          download: bool) -> Path:
    cells = measure(store, sweep, task, data_dir, download)
    summary = summarise(cells)
    environment = sweep.cells.set_index("run_id")[list(FINGERPRINT_KEYS)]
    published = cells.join(environment, on="run_id")
    published = published[[c for c in published.columns if c != "run_id"] + ["run_id"]]
    out.mkdir(parents=True, exist_ok=True)  # only once everything is computed
    published.to_csv(out / CELLS_FILE, index=False)
    summary.to_csv(out / SUMMARY_FILE, index=False)
    (out / "README.md").write_text(readme(summary, sweep, command))
    return out / "README.md"
