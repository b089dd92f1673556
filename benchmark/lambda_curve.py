"""λ-response curves: each driver's final accuracy as a function of λ, so that every driver — the controls
included — is judged at its own best λ rather than at another estimator's.

Two phases, both resumable (a cell finished with the same configuration is never trained again):

    curve   every driver on a log-spaced grid of `points` λ values spanning `decades` decades around a centre
            (its λ in the centres' protocol; a control without one takes its estimator's), on `seeds` curve seeds
            from CURVE_FIRST_SEED; each cell's final *validation* ACC (mean over every task after the last, on the
            validation split, which neither training nor the importances see).
    test    once a driver's curve has every seed at every point: its best λ (the highest mean validation ACC over
            the curve seeds) on `test_seeds` fresh seeds from 0 — the seeds `run` reports — judged on *test* ACC.
            Also, where it differs, the λ that the paper author's rule picks: the highest mean *test* ACC over
            the curve seeds (his scripts choose λ on the test set). Its curve-seed mean minus the fresh seeds'
            test ACC at the same λ measures what choosing on the test set adds to the reported figure.

Each curve point and each test cell is an ordinary sweep (`run_sweep`) with an explicit λ, so any one of them can
be rerun alone with `python -m benchmark run --lambda DRIVER=VALUE --first-seed SEED --seeds 1`. The cells are
recorded in their own experiment (`<experiment>-lambda-curve`), apart from `run`'s.

On a machine whose store lacks the cells (a fresh one), `--resume-from FOLDER` counts the cells an earlier
computation published in FOLDER/cells.csv as finished: they are not trained again, and the folder written lists
them beside the new ones, each with the run id and fingerprint it was recorded with.

Order: seed-major (every driver and λ at the first curve seed, then the second, …), and within a seed from the
centre outwards, so an interrupted computation leaves a contiguous stretch of every curve around its centre, at
fewer seeds, rather than part of it at many.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.config import CURVE_FIRST_SEED, Config
from benchmark.drivers import reference_of
from benchmark.environment import CELLS_FILE, FINGERPRINT_KEYS, experiment_name
from benchmark.lambdas import Lambda
from benchmark.report.stats import independent_difference, mean_ci, paired_difference

SUMMARY_FILE, BEST_FILE, FIGURE_FILE = "curve_summary.csv", "best.csv", "lambda_response.png"
OPTIMA_FILE = "own_optimum.csv"
# the paper's driver: a driver without a reference of its own (drivers.reference_of) is compared with it
REFERENCE = "mas"
# cells.csv's columns (the layout verify reads, benchmark/report/cells.py), and the phase each cell belongs to
CELL_COLUMNS = ("protocol", "dataset", "driver", "seed", "lambda", "lambda_source", "phase", "val_ACC", "ACC", "BWT",
                *FINGERPRINT_KEYS, "run_id")


def grid(center: float, points: int, decades: float) -> list[float]:
    """`points` λ values, evenly spaced in log10, spanning `decades` decades with `center` in the middle; rounded
    to 4 significant digits so that a value reads and hashes the same wherever it is written."""
    exponents = np.linspace(-decades / 2, decades / 2, points)
    return [float(f"{center * 10 ** e:.4g}") for e in exponents]


def experiment_of(config: Config) -> str:
    return f"{experiment_name(config)}-lambda-curve"


def finished_cells(store, experiment: str, config: Config) -> pd.DataFrame:
    """Every finished cell of the curve's experiment, one row each with CELL_COLUMNS (a cell recorded before runs
    carried a fingerprint has those columns empty)."""
    rows = [{"protocol": config.protocol, "dataset": config.data.dataset, "driver": r.tags["driver"],
             "seed": int(r.tags["seed"]), "lambda": float(r.tags["lambda"]), "lambda_source": r.tags["lambda_source"],
             "phase": "curve" if int(r.tags["seed"]) >= CURVE_FIRST_SEED else "test",
             **{m: r.metrics.get(m, math.nan) for m in ("val_ACC", "ACC", "BWT")},
             **{k: r.tags.get(k, "") for k in FINGERPRINT_KEYS}, "run_id": r.id}
            for r in store.find_runs(experiment, kind="cell", status="FINISHED")]
    cells = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    # a cell finished twice (a sweep rerun with --lambda of the same value) counts once: the newest
    return cells.drop_duplicates(["driver", "lambda", "seed"]).sort_values(["driver", "lambda", "seed"])


def published_cells(folder: Path, config: Config, grids: dict[str, list[float]], seeds: list[int],
                    test_seeds: list[int]) -> pd.DataFrame:
    """The cells FOLDER/cells.csv publishes for this computation: this protocol and dataset, one of its drivers at a
    point of that driver's grid, a curve or test seed of this computation. Whoever names the folder vouches that it
    was computed with the same options (its README's command)."""
    published = pd.read_csv(folder / CELLS_FILE, dtype={"run_id": str, "fingerprint": str, "git_commit": str})
    published = published[(published.protocol == config.protocol) & (published.dataset == config.data.dataset)]
    return of_computation(published, grids, seeds, test_seeds).reindex(columns=list(CELL_COLUMNS))


def of_computation(cells: pd.DataFrame, grids: dict[str, list[float]], seeds: list[int],
                   test_seeds: list[int]) -> pd.DataFrame:
    """The cells this computation asks for: one of its drivers at a point of that driver's grid, a curve or test
    seed of it — not the cells another computation (other drivers, another grid) left in the same experiment."""
    if cells.empty:
        return cells
    mine = cells.apply(lambda r: r.driver in grids and bool(np.isclose(grids[r.driver], r["lambda"]).any())
                       and r.seed in (seeds if r.phase == "curve" else test_seeds), axis=1)
    return cells[mine]


def summarise(cells: pd.DataFrame, grids: dict[str, list[float]], seeds: list[int]) -> pd.DataFrame:
    """Per driver and grid point: validation ACC over the curve seeds, mean and 95% t-interval, and the same
    cells' mean test ACC (what a λ chosen on the test set is chosen by)."""
    rows = []
    for driver, values in grids.items():
        for k, lam in enumerate(values):
            at = cells_at(cells, "curve", driver, lam, seeds)
            est = mean_ci(at.val_ACC)
            rows.append({"driver": driver, "point": k, "lambda": lam, "n": est.n, "val_ACC": est.mean,
                         "low": est.low, "high": est.high, "test_ACC": at.ACC.mean()})
    return pd.DataFrame(rows)


def best_lambdas(summary: pd.DataFrame, cells: pd.DataFrame, seeds: list[int]) -> pd.DataFrame:
    """Per driver: the grid point of highest mean validation ACC, whether every point has every curve seed
    (only then is it the best λ rather than the best so far), whether it lies at the grid's edge (the optimum
    may be outside), and the test ACC of the fresh seeds at that λ. Beside it the author's rule: the grid point of
    highest mean test ACC over the curve seeds (`test_rule_lambda`), that mean (`test_rule_ACC`, the figure the
    rule reports), the fresh seeds' test ACC at the same λ, and the difference of the two (curve seeds minus fresh
    seeds, disjoint seeds: Welch's interval) — the inflation that choosing λ on the test set brings."""
    rows = []
    for driver, curve in summary.groupby("driver", sort=False):
        measured = curve[curve.n > 0]
        if measured.empty:
            continue
        top = measured.loc[measured.val_ACC.idxmax()]
        tested = measured.dropna(subset=["test_ACC"])
        by_test = tested.loc[tested.test_ACC.idxmax()] if len(tested) else top
        est = mean_ci(cells_at(cells, "test", driver, top["lambda"]).ACC)
        chosen_on_test = cells_at(cells, "curve", driver, by_test["lambda"], seeds)
        fresh_at_rule = cells_at(cells, "test", driver, by_test["lambda"]).ACC
        inflation = independent_difference(chosen_on_test.ACC, fresh_at_rule)
        rows.append({"driver": driver, "best_lambda": top["lambda"], "val_ACC": top.val_ACC, "val_low": top.low,
                     "val_high": top.high, "curve_seeds": int(top.n),
                     "complete": bool((curve.n == len(seeds)).all()),
                     "at_edge": int(top.point) in (0, len(curve) - 1),
                     "test_n": est.n, "test_ACC": est.mean, "test_low": est.low, "test_high": est.high,
                     "test_rule_lambda": by_test["lambda"], "test_rule_ACC": by_test.test_ACC,
                     "fresh_n": len(fresh_at_rule), "fresh_ACC": fresh_at_rule.mean(),
                     "inflation": inflation.mean, "inflation_low": inflation.low, "inflation_high": inflation.high})
    return pd.DataFrame(rows)


def at_own_optimum(cells: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """Each driver against its reference (drivers.reference_of: a control against the estimator it transforms, a
    library shortcut against the estimator it stands in for, any other driver against REFERENCE), each at its own
    best λ: test ACC minus the reference's, paired by test seed (the fresh seeds are shared: same permutations,
    initial weights and batch order). Only drivers whose complete curve has fresh seeds in common with its
    reference's."""
    columns = ["driver", "best_lambda", "reference", "reference_lambda", "n", "difference", "low", "high"]
    if best.empty:
        return pd.DataFrame(columns=columns)
    complete = best[best.complete].set_index("driver")
    rows = []
    for driver, row in complete.iterrows():
        reference = reference_of(driver, REFERENCE)
        if driver == reference or reference not in complete.index:
            continue
        ours, theirs = (cells_at(cells, "test", d, complete.loc[d, "best_lambda"]).set_index("seed").ACC
                        for d in (driver, reference))
        est = paired_difference(ours.to_dict(), theirs.to_dict())
        if est.n >= 2:
            rows.append({"driver": driver, "best_lambda": row.best_lambda, "reference": reference,
                         "reference_lambda": complete.loc[reference, "best_lambda"], "n": est.n,
                         "difference": est.mean, "low": est.low, "high": est.high})
    return pd.DataFrame(rows, columns=columns)


def cells_at(cells: pd.DataFrame, phase: str, driver: str, lam: float, seeds: list[int] | None = None) -> pd.DataFrame:
    """One phase's cells of one driver at one λ (of these seeds, if given)."""
    at = cells[(cells.phase == phase) & (cells.driver == driver) & np.isclose(cells["lambda"], lam)]
    return at if seeds is None else at[at.seed.isin(seeds)]


def plot(summary: pd.DataFrame, path: Path) -> None:
    """Validation ACC against λ, one curve per driver, a 95% t-interval band where a point has ≥ 2 seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for driver, curve in summary[summary.n > 0].groupby("driver", sort=False):
        (line,) = ax.plot(curve["lambda"], 100 * curve.val_ACC, marker="o", ms=3, label=driver)
        banded = curve[curve.n >= 2]
        ax.fill_between(banded["lambda"], 100 * banded.low, 100 * banded.high, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("λ")
    ax.set_ylabel("final validation ACC %")
    ax.set_title("λ-response, paper protocol (validation split)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_lambda_curve(store, config: Config, drivers: list[str], centers: dict[str, float], points: int,
                     decades: float, seeds: list[int], test_seeds: list[int], splits, command: str, out: Path | None,
                     parallel: int = 1, resume_from: Path | None = None, train: bool = True) -> pd.DataFrame:
    """Both phases, then the results folder (`out`, rewritten after every sweep so that a partial computation can
    be published as it stands). `resume_from`: a folder whose published cells count as finished; `train=False`
    writes the folder from the finished cells and trains nothing. Returns the best-λ table."""
    from benchmark.sweep import run_sweep

    experiment = experiment_of(config)
    grids = {d: grid(centers[d], points, decades) for d in drivers}
    prior = (published_cells(resume_from, config, grids, seeds, test_seeds) if resume_from is not None
             else pd.DataFrame(columns=list(CELL_COLUMNS)))
    if len(prior):
        print(f"resuming from {resume_from}: {len(prior)} published cells count as finished", file=sys.stderr)

    def finished() -> pd.DataFrame:
        recorded = of_computation(finished_cells(store, experiment, config), grids, seeds, test_seeds)
        # a cell in both the store and the published folder is the store's (the same cell, rerun here)
        return recorded if prior.empty else pd.concat([recorded, prior]) \
            .drop_duplicates(["driver", "lambda", "seed"]).sort_values(["driver", "lambda", "seed"])

    def publish(cells: pd.DataFrame) -> pd.DataFrame:
        summary = summarise(cells, grids, seeds)
        best = best_lambdas(summary, cells, seeds)
        if out is not None:
            write_results(out, cells, summary, best, grids, seeds, test_seeds, command)
        return best

    # a sweep only where a cell is missing: a sweep whose cells are all finished would record an empty parent run
    def missing(cells: pd.DataFrame, driver: str, lam: float, phase: str, wanted: list[int]) -> list[int]:
        return [s for s in wanted if s not in set(cells_at(cells, phase, driver, lam).seed)]

    cells = finished()
    centre_out = sorted(range(points), key=lambda k: abs(k - (points - 1) / 2))
    for seed in seeds if train else []:
        for k in centre_out:
            due = [d for d in drivers if missing(cells, d, grids[d][k], "curve", [seed])]
            if due:
                lambdas = {d: Lambda(grids[d][k], "user") for d in due}
                run_sweep(store, config, due, [seed], lambdas, splits, "none", command, parallel,
                          experiment=experiment)
                cells = finished()
                publish(cells)
    best = publish(cells)
    for _, row in best[best.complete].iterrows() if train else []:
        for lam in dict.fromkeys([row.best_lambda, row.test_rule_lambda]):
            due = missing(cells, row.driver, lam, "test", test_seeds)
            if due:
                run_sweep(store, config, [row.driver], due, {row.driver: Lambda(lam, "user")}, splits, "final",
                          command, parallel, experiment=experiment)
                cells = finished()
                best = publish(cells)
    return best


def write_results(out: Path, cells: pd.DataFrame, summary: pd.DataFrame, best: pd.DataFrame,
                  grids: dict[str, list[float]], seeds: list[int], test_seeds: list[int], command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cells.to_csv(out / CELLS_FILE, index=False)
    summary.to_csv(out / SUMMARY_FILE, index=False, float_format="%.6g")
    best.to_csv(out / BEST_FILE, index=False, float_format="%.6g")
    optima = at_own_optimum(cells, best)
    optima.to_csv(out / OPTIMA_FILE, index=False, float_format="%.6g")
    if (summary.n > 0).any():
        plot(summary, out / FIGURE_FILE)
    done = int((summary.n == len(seeds)).sum())
    complete = best[best.complete] if len(best) else best
    test_cells_due = sum(len({r.best_lambda, r.test_rule_lambda}) for r in complete.itertuples()) * len(test_seeds)
    lines = [
        "# λ-response curves",
        "",
        f"State: {int(summary.n.sum())} of {len(summary) * len(seeds)} curve cells finished ({done} of "
        f"{len(summary)} grid points with all {len(seeds)} curve seeds); {int((cells.phase == 'test').sum())} of "
        f"{test_cells_due} test cells at a complete curve's best λ (and at the λ the test-set rule picks).",
        "",
        f"Regenerate (resumes where it stopped): `{command}`",
        "",
        f"Curve seeds {', '.join(map(str, seeds))} (validation split); test seeds {', '.join(map(str, test_seeds))} "
        "(test split). Grids:",
        "",
        *[f"- {d}: {', '.join(f'{v:g}' for v in values)}" for d, values in grids.items()],
        "",
        "| driver | best λ | curve seeds | validation ACC % [95% t] | complete | at grid edge "
        "| test ACC % [95% t] (n) |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in best.iterrows():
        val = f"{100 * r.val_ACC:.2f}" + (f" [{100 * r.val_low:.2f}, {100 * r.val_high:.2f}]"
                                          if r.curve_seeds >= 2 else "")
        test = f"{100 * r.test_ACC:.2f} [{100 * r.test_low:.2f}, {100 * r.test_high:.2f}] ({r.test_n})" \
            if r.test_n >= 2 else "not yet run"
        lines.append(f"| {r.driver} | {r.best_lambda:g} | {r.curve_seeds} | {val} | {'yes' if r.complete else 'no'} "
                     f"| {'yes' if r.at_edge else 'no'} | {test} |")
    lines += [
        "",
        "**λ chosen on the test set** (the paper author's rule: the grid point of highest mean test ACC over the curve "
        "seeds). What the rule reports, against fresh seeds' test ACC at the same λ; their difference (Welch's 95% "
        "interval: the two sets of seeds are disjoint) is what choosing on the test set adds:",
        "",
        "| driver | λ by test ACC | same as best λ | its curve seeds' test ACC % | fresh seeds' test ACC % (n) "
        "| curve minus fresh, points [95% Welch] |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in best.iterrows():
        fresh = f"{100 * r.fresh_ACC:.2f} ({r.fresh_n})" if r.fresh_n >= 2 else "not yet run"
        gain = (f"{100 * r.inflation:+.2f} [{100 * r.inflation_low:+.2f}, {100 * r.inflation_high:+.2f}]"
                if r.fresh_n >= 2 and r.curve_seeds >= 2 else "–")
        same = "yes" if r.test_rule_lambda == r.best_lambda else "no"
        lines.append(f"| {r.driver} | {r.test_rule_lambda:g} | {same} | {100 * r.test_rule_ACC:.2f} | {fresh} "
                     f"| {gain} |")
    lines += [
        "",
        f"**Each driver at its own best λ** against {REFERENCE} at its own (a shuffled-/layermean- control against "
        "the estimator it transforms, a library shortcut against the estimator it stands in for), test ACC minus "
        "the reference's in points, paired by fresh seed — mean [95% t-interval]:",
        "",
        "| driver (best λ) | reference (best λ) | difference, points [95% t] (n) |",
        "|---|---|---|",
        *[f"| {r.driver} ({r.best_lambda:g}) | {r.reference} ({r.reference_lambda:g}) | {100 * r.difference:+.2f} "
          f"[{100 * r.low:+.2f}, {100 * r.high:+.2f}] ({r.n}) |" for r in optima.itertuples()],
        *([] if len(optima) else ["| none: no driver has a complete curve, fresh seeds and its reference's both "
                                  "in this computation | | |"]),
        "",
        f"Files: `{CELLS_FILE}` (one row a finished cell, its fingerprint; `verify` reruns them), "
        f"`{SUMMARY_FILE}` (per driver and λ), `{BEST_FILE}`, `{OPTIMA_FILE}`, `{FIGURE_FILE}`.", ""]
    (out / "README.md").write_text("\n".join(lines))
