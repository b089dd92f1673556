"""Predicted against actual forgetting: does an importance foresee how much an old task's loss rises?

Every quadratic penalty rests on one approximation: after task j, task j's loss near its optimum θ*_j is

    L_j(θ) − L_j(θ*_j) ≈ ½ Σ_p Ω_j,p (θ_p − θ*_j,p)²,

Ω_j being task j's own importance (the per-task increment, not the sum over tasks). A run of `run
--log-importances all` holds everything this needs: the parameters after every task i (state_dict.safetensors),
every task's increment (importances.safetensors) and the test loss on every task j after every task i
(loss_matrix.csv). For every old task j and later task i > j,

    actual    = L[i, j] − L[j, j]                      (the whole network's loss, as measured)
    predicted = ½ Σ_{p in layer} Ω_j,p (θ_i,p − θ_j,p)²  (one layer's parameters, weight and bias, or all of them)

An estimator's scale is arbitrary (MAS's is not the loss's), so the test is λ-free: Spearman and Pearson
correlations of predicted with actual, and R² of the least-squares fit actual ≈ c · predicted through the origin
(c fitted per estimator, driver, layer and seed). `uniform` (Ω = 1: the plain squared distance travelled) is the
baseline every estimator is paired against, seed by seed: an importance that does not beat it tells nothing about
forgetting beyond how far the weights moved.
"""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file
from scipy import stats

from benchmark.drivers import in_paper_order
from benchmark.environment import CELLS_FILE, FINGERPRINT_KEYS
from benchmark.errors import UsageError
from benchmark.progress import Progress
from benchmark.report.collect import RecordedSweep
from benchmark.report.stats import MIN_SEEDS, Estimate, mean_ci, paired_difference
from benchmark.sweep import importances_by_estimator
from tracking import Store

BASELINE = "uniform"  # Ω = 1
ALL_LAYERS = "all"
MEASURES = ("spearman", "pearson", "r2")
POINTS_FILE, SUMMARY_FILE = "points.csv.gz", "summary.csv"


def figure_file(driver: str) -> str:
    return f"predicted_vs_actual_{driver}.png"


def predicted_increase(importance: dict[str, np.ndarray], before: dict[str, np.ndarray],
                       after: dict[str, np.ndarray]) -> dict[str, float]:
    """½ Σ Ω (after − before)² per layer (a parameter's name without its last part: fc1.weight → fc1) and over
    every parameter (ALL_LAYERS), in float64."""
    per_layer: dict[str, float] = {}
    for name, omega in importance.items():
        step = after[name].astype(np.float64) - before[name].astype(np.float64)
        layer = name.rsplit(".", 1)[0]
        per_layer[layer] = per_layer.get(layer, 0.0) + 0.5 * float((omega.astype(np.float64) * step * step).sum())
    per_layer[ALL_LAYERS] = sum(per_layer.values())
    return per_layer


def run_points(loss: np.ndarray, states: list[dict[str, np.ndarray]],
               increments: list[dict[str, dict[str, np.ndarray]]]) -> pd.DataFrame:
    """One row per (old task j, later task i, estimator, layer): predicted and actual increase of task j's loss.
    loss: the run's loss matrix; states[t], increments[t]: what it logged after task t."""
    rows = []
    for j in range(len(states)):
        importances = {**increments[j], BASELINE: {n: np.ones_like(v) for n, v in states[j].items()
                                                   if n in next(iter(increments[j].values()))}}
        for i in range(j + 1, len(states)):
            actual = float(loss[i, j] - loss[j, j])
            for estimator, importance in importances.items():
                for layer, value in predicted_increase(importance, states[j], states[i]).items():
                    rows.append({"old_task": j, "after_task": i, "estimator": estimator, "layer": layer,
                                 "predicted": value, "actual": actual})
    return pd.DataFrame(rows)


def read_points(store: Store, sweep: RecordedSweep) -> pd.DataFrame:
    """run_points of every finished cell of the sweep, with its run id, driver and seed; a UsageError names a cell
    that did not log what the test needs."""
    tables = []
    progress = Progress("run", total=len(sweep.cells))
    with tempfile.TemporaryDirectory() as tmp, progress.bar:
        for cell in sweep.cells.to_dict("records"):
            run_id, local = cell["run_id"], Path(tmp) / cell["run_id"]
            tasks = len(sweep.accuracy[run_id])
            try:
                loss = pd.read_csv(store.download(run_id, "loss_matrix.csv", local)).drop(columns="after_task")
                states, increments = [], []
                for t in range(tasks):
                    folder = f"tasks/task_{t:02d}"
                    states.append(load_file(store.download(run_id, f"{folder}/state_dict.safetensors", local)))
                    increments.append(importances_by_estimator(load_file(store.download(
                        run_id, f"{folder}/importances.safetensors", local))))
            except Exception:  # MLflow reports a missing artifact its own way for every kind of store
                raise UsageError(f"run {run_id} ({cell['driver']}, seed {cell['seed']}) lacks loss_matrix.csv or "
                                 "a task's importances: the test needs runs of `run --log-importances all` made "
                                 "since loss matrices are logged") from None
            points = run_points(loss.to_numpy(), states, increments)
            for position, key in enumerate(("run_id", "protocol", "driver", "seed")):
                points.insert(position, key, cell[key])
            tables.append(points)
            progress.item_done(f"{cell['driver']} seed {cell['seed']} read")
    return pd.concat(tables, ignore_index=True)


def fit(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Spearman, Pearson and R² of actual ≈ c · predicted (least squares through the origin), with c."""
    nan = float("nan")
    if len(predicted) < 3 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return {"spearman": nan, "pearson": nan, "r2": nan, "scale": nan}
    scale = float(predicted @ actual / (predicted @ predicted))
    residual = actual - scale * predicted
    return {"spearman": float(stats.spearmanr(predicted, actual).statistic),
            "pearson": float(stats.pearsonr(predicted, actual).statistic),
            "r2": float(1 - residual @ residual / (actual @ actual)), "scale": scale}


def per_seed(points: pd.DataFrame) -> pd.DataFrame:
    """fit over each run's (j, i) pairs: one row per protocol, driver, seed, estimator and layer."""
    rows = []
    for key, group in points.groupby(["protocol", "driver", "seed", "run_id", "estimator", "layer"], sort=False):
        rows.append({**dict(zip(("protocol", "driver", "seed", "run_id", "estimator", "layer"), key)),
                     "pairs": len(group), **fit(group.predicted.to_numpy(), group.actual.to_numpy())})
    return pd.DataFrame(rows)


def summarise(seeds: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, driver, estimator and layer: each measure's mean over seeds with its 95% t-interval, its
    paired difference from the baseline's (same seed, driver and layer), and the pooled fit over every seed's
    points."""
    rows = []
    for (protocol, driver, estimator, layer), group in seeds.groupby(["protocol", "driver", "estimator", "layer"],
                                                                      sort=False):
        baseline = seeds[(seeds.protocol == protocol) & (seeds.driver == driver) & (seeds.layer == layer)
                         & (seeds.estimator == BASELINE)]
        pooled = points[(points.protocol == protocol) & (points.driver == driver) & (points.estimator == estimator)
                        & (points.layer == layer)]
        row = {"protocol": protocol, "driver": driver, "estimator": estimator, "layer": layer, "seeds": len(group)}
        for measure in MEASURES:
            e = mean_ci(group[measure].dropna())
            row |= {measure: e.mean, f"{measure}_low": e.low, f"{measure}_high": e.high}
            if estimator != BASELINE:
                d = paired_difference(dict(zip(group.seed, group[measure])),
                                      dict(zip(baseline.seed, baseline[measure])))
                row |= {f"{measure}_minus_{BASELINE}": d.mean, f"{measure}_minus_{BASELINE}_low": d.low,
                        f"{measure}_minus_{BASELINE}_high": d.high}
        row |= {f"pooled_{k}": v for k, v in fit(pooled.predicted.to_numpy(), pooled.actual.to_numpy()).items()}
        rows.append(row)
    return pd.DataFrame(rows)


def versus_baseline(low: float, high: float, seeds: int) -> str:
    """What a paired interval of (estimator − uniform) lets one say."""
    if seeds < MIN_SEEDS or np.isnan(low):
        return f"no verdict under {MIN_SEEDS} seeds"
    if low > 0:
        return f"above {BASELINE}"
    if high < 0:
        return f"below {BASELINE}"
    return f"not separable from {BASELINE}"


def estimator_order(names) -> list[str]:
    ordered = in_paper_order([n for n in names if n != BASELINE])
    return ordered + [BASELINE]


def figure(points: pd.DataFrame, driver: str, path: Path) -> None:
    """Predicted (whole network) against actual increase of the old task's loss, one panel per estimator, log
    axes where every value is positive."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    chosen = points[(points.driver == driver) & (points.layer == ALL_LAYERS)]
    estimators = estimator_order(chosen.estimator.unique())
    fig, axes = plt.subplots(1, len(estimators), figsize=(3.2 * len(estimators), 3.2), squeeze=False)
    for ax, estimator in zip(axes[0], estimators):
        mine = chosen[chosen.estimator == estimator]
        for seed, group in mine.groupby("seed"):
            ax.scatter(group.predicted, group.actual, s=8, alpha=0.6, label=f"seed {seed}")
        if (mine.predicted > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # a decade's labels only: the minor ones overlap
        if (mine.actual > 0).all():
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(estimator)
        ax.set_xlabel("predicted ½ Σ Ω Δθ²")
    axes[0][0].set_ylabel("actual rise of the old task's test loss")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"driver {driver}: every old task j after every later task i, whole network")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def readme(summary: pd.DataFrame, command: str, sweep: RecordedSweep) -> str:
    lines = ["# Predicted against actual forgetting", "",
             "For every old task j and later task i of each run: the actual rise of task j's test loss, "
             "L[i, j] − L[j, j] (the run's loss_matrix.csv), against the quadratic penalty's prediction "
             "½ Σ Ω_j (θ_i − θ_j)² from each estimator's task-j importance (its own increment), over one layer's "
             "parameters or all of them. λ-free: Spearman and Pearson correlations, and R² of the fit "
             "actual ≈ c · predicted through the origin, per run (45 pairs of a 10-task run), mean over seeds "
             f"with its 95% t-interval; each estimator paired seed by seed with `{BASELINE}` (Ω = 1, the squared "
             "distance the weights travelled). How it is computed: benchmark/forgetting_prediction.py.", "",
             f"Runs: experiment {sweep.experiment}, sweep {', '.join(p.id for p in sweep.parents)}: "
             f"{len(sweep.cells)} cells (drivers {', '.join(in_paper_order(sweep.cells.driver))}; seeds "
             f"{', '.join(map(str, sorted(sweep.cells.seed.unique())))}).", "",
             f"Regenerate: `{command}`", ""]
    for (protocol, driver), table in summary.groupby(["protocol", "driver"], sort=False):
        lines += [f"## protocol {protocol}, driver {driver}", "",
                  "| layer | estimator | Spearman | − uniform | Pearson | R² (through 0) | − uniform | pooled c |",
                  "|---|---|---|---|---|---|---|---|"]
        for layer in dict.fromkeys(table.layer):
            for estimator in estimator_order(table[table.layer == layer].estimator):
                r = table[(table.layer == layer) & (table.estimator == estimator)].iloc[0]
                cells, n = [layer, estimator], int(r.seeds)
                for measure in ("spearman", "pearson", "r2"):
                    cells.append(Estimate(r[measure], r[f"{measure}_low"], r[f"{measure}_high"], n).short())
                    if measure != "pearson":
                        diff = f"{measure}_minus_{BASELINE}"
                        cells.append("–" if estimator == BASELINE else
                                     f"{Estimate(r[diff], r[diff + '_low'], r[diff + '_high'], n).short()} "
                                     f"({versus_baseline(r[diff + '_low'], r[diff + '_high'], n)})")
                cells.append(f"{r.pooled_scale:.3g}")
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    drivers = list(dict.fromkeys(summary.driver))
    lines += ["Figures: " + ", ".join(f"[{figure_file(d)}]({figure_file(d)})" for d in drivers)
              + " — per driver, whole network, every point.", "",
              f"Files: `{SUMMARY_FILE}` (every measure with its interval and its paired difference from "
              f"{BASELINE}), `{CELLS_FILE}` (every measure per seed, with the run and the fingerprint it came "
              f"from), `{POINTS_FILE}` (every predicted and actual value).", ""]
    return "\n".join(lines)


def write(store: Store, sweep: RecordedSweep, out: Path, command: str) -> Path:
    """The test over the sweep's cells, into `out`: README.md, summary.csv, cells.csv, points.csv.gz, figure."""
    points = read_points(store, sweep)
    seeds = per_seed(points)
    environment = sweep.cells.set_index("run_id")[list(FINGERPRINT_KEYS)]
    cells = seeds.join(environment, on="run_id")
    cells = cells[[c for c in cells.columns if c != "run_id"] + ["run_id"]]
    summary = summarise(seeds, points)
    out.mkdir(parents=True, exist_ok=True)
    points.drop(columns="run_id").to_csv(out / POINTS_FILE, index=False)
    cells.to_csv(out / CELLS_FILE, index=False)
    summary.to_csv(out / SUMMARY_FILE, index=False)
    for driver in in_paper_order(points.driver.unique()):
        figure(points, driver, out / figure_file(driver))
    (out / "README.md").write_text(readme(summary, command, sweep))
    return out / "README.md"
