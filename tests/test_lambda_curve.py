"""`python -m benchmark lambda-curve`: the grid, the choice of the best λ, and both phases end to end on the smoke
protocol with a real MLflow store."""

import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.lambda_curve import CURVE_FIRST_SEED, at_own_optimum, best_lambdas, grid, summarise
from benchmark.report.stats import independent_difference
from tests.conftest import DATA_DIR


def test_grid_is_log_spaced_around_its_centre():
    values = grid(3.307, 7, 3.0)
    assert len(values) == 7
    assert values[3] == 3.307
    assert values[0] == pytest.approx(3.307 / 10 ** 1.5, rel=1e-3) and values[-1] == pytest.approx(3.307 * 10 ** 1.5,
                                                                                                    rel=1e-3)
    assert np.allclose(np.diff(np.log10(values)), 0.5, atol=1e-3)


def curve_cells(values: dict[tuple[str, float], list[float]],
                test_acc: dict[tuple[str, float], list[float]] | None = None) -> pd.DataFrame:
    """Curve cells with these validation ACC (and test ACC, NaN unless given), one per seed."""
    test_acc = test_acc or {}
    rows = [{"driver": d, "lambda": lam, "seed": CURVE_FIRST_SEED + s, "phase": "curve", "val_ACC": acc,
             "ACC": test_acc.get((d, lam), [np.nan] * len(accs))[s], "BWT": np.nan, "run_id": f"{d}{lam}{s}"}
            for (d, lam), accs in values.items() for s, acc in enumerate(accs)]
    return pd.DataFrame(rows)


def fresh(driver: str, lam: float, accs: list[float]) -> pd.DataFrame:
    return pd.DataFrame([{"driver": driver, "lambda": lam, "seed": s, "phase": "test", "val_ACC": np.nan, "ACC": a,
                          "BWT": np.nan, "run_id": f"t{driver}{lam}{s}"} for s, a in enumerate(accs)])


def test_best_lambda_is_the_highest_mean_and_edges_and_gaps_are_said():
    grids = {"mas": [1.0, 10.0, 100.0], "si": [0.1, 1.0, 10.0]}
    seeds = [CURVE_FIRST_SEED, CURVE_FIRST_SEED + 1]
    cells = curve_cells({("mas", 1.0): [0.90, 0.92], ("mas", 10.0): [0.95, 0.93], ("mas", 100.0): [0.94, 0.95],
                         ("si", 0.1): [0.80, 0.82], ("si", 1.0): [0.85], ("si", 10.0): [0.86, 0.84]})
    summary = summarise(cells, grids, seeds)
    mas_at_10 = summary[(summary.driver == "mas") & (summary["lambda"] == 10.0)].iloc[0]
    assert mas_at_10.n == 2 and mas_at_10.val_ACC == pytest.approx(0.94)
    # t-interval by hand: mean 0.94, sd 0.01414, t(0.975, 1) = 12.706
    assert mas_at_10.high - mas_at_10.val_ACC == pytest.approx(12.706 * 0.0141421 / np.sqrt(2), rel=1e-3)
    best = best_lambdas(summary, cells, seeds).set_index("driver")
    # 100 has mean 0.945 > 0.94: the best, at the upper edge of mas's grid
    assert best.loc["mas", "best_lambda"] == 100.0 and best.loc["mas", "at_edge"] and best.loc["mas", "complete"]
    # si at λ = 1 has one seed of two: its curve is incomplete, so no test phase would start for it
    assert best.loc["si", "best_lambda"] == 1.0 and not best.loc["si", "complete"] and not best.loc["si", "at_edge"]


def test_the_test_set_rule_and_what_it_adds_against_fresh_seeds():
    """Validation picks λ = 10, the curve seeds' test ACC picks λ = 1 (the author's rule). At λ = 1 the curve seeds
    gave 0.96, 0.94 (mean 0.95), fresh seeds 0.93, 0.92, 0.94 (mean 0.93): the rule's figure is 0.02 above what
    fresh runs give there, with Welch's interval (the two sets of seeds are disjoint)."""
    grids = {"mas": [1.0, 10.0]}
    seeds = [CURVE_FIRST_SEED, CURVE_FIRST_SEED + 1]
    cells = curve_cells({("mas", 1.0): [0.90, 0.91], ("mas", 10.0): [0.93, 0.94]},
                        test_acc={("mas", 1.0): [0.96, 0.94], ("mas", 10.0): [0.92, 0.93]})
    cells = pd.concat([cells, fresh("mas", 1.0, [0.93, 0.92, 0.94]), fresh("mas", 10.0, [0.91, 0.92, 0.93])])
    summary = summarise(cells, grids, seeds)
    assert list(summary.test_ACC) == [pytest.approx(0.95), pytest.approx(0.925)]
    best = best_lambdas(summary, cells, seeds).iloc[0]
    assert best.best_lambda == 10.0 and best.test_ACC == pytest.approx(0.92) and best.test_n == 3
    assert best.test_rule_lambda == 1.0 and best.test_rule_ACC == pytest.approx(0.95)
    assert best.fresh_n == 3 and best.fresh_ACC == pytest.approx(0.93)
    welch = independent_difference([0.96, 0.94], [0.93, 0.92, 0.94])
    assert (best.inflation, best.inflation_low, best.inflation_high) == (
        pytest.approx(0.02), pytest.approx(welch.low), pytest.approx(welch.high))
    assert welch.low < 0.02 < welch.high


def test_each_driver_at_its_own_optimum_against_its_reference_paired_by_seed():
    """mas's best λ is 10, shuffled-mas's 100, uniform's 0.01: each control's fresh seeds at its own best λ minus mas's
    at 10, seed by seed. shuffled-mas − mas: 0.85 − 0.95, 0.86 − 0.94, 0.84 − 0.96 = −0.10, −0.08, −0.12 (mean
    −0.10, sd 0.02, t(0.975, 2) = 4.303 ⇒ ± 0.0497). Cells at another λ (mas at 1) never enter; si, whose curve is
    incomplete, gets no row."""
    grids = {"mas": [1.0, 10.0], "shuffled-mas": [10.0, 100.0], "uniform": [0.01, 0.1], "si": [0.1, 1.0]}
    seeds = [CURVE_FIRST_SEED]
    cells = pd.concat([
        curve_cells({("mas", 1.0): [0.90], ("mas", 10.0): [0.94], ("shuffled-mas", 10.0): [0.80],
                     ("shuffled-mas", 100.0): [0.85], ("uniform", 0.01): [0.83], ("uniform", 0.1): [0.82],
                     ("si", 0.1): [0.90]}),
        fresh("mas", 10.0, [0.95, 0.94, 0.96]), fresh("mas", 1.0, [0.50, 0.50, 0.50]),
        fresh("shuffled-mas", 100.0, [0.85, 0.86, 0.84]), fresh("uniform", 0.01, [0.80, 0.81]),
        fresh("si", 0.1, [0.90, 0.91, 0.92])])
    best = best_lambdas(summarise(cells, grids, seeds), cells, seeds)
    table = at_own_optimum(cells, best).set_index("driver")
    assert list(table.index) == ["shuffled-mas", "uniform"]
    shuffled = table.loc["shuffled-mas"]
    assert (shuffled.reference, shuffled.best_lambda, shuffled.reference_lambda, shuffled.n) == ("mas", 100.0, 10.0, 3)
    assert shuffled.difference == pytest.approx(-0.10)
    assert shuffled.high - shuffled.difference == pytest.approx(4.303 * 0.02 / np.sqrt(3), rel=1e-3)
    # uniform has no estimator of its own: against mas, over the two seeds both have
    assert table.loc["uniform", "n"] == 2 and table.loc["uniform", "difference"] == pytest.approx(-0.14)


def test_a_library_shortcut_is_paired_with_the_fisher_it_stands_in_for_not_with_mas():
    """fis_batched at its own best λ (1000) minus fis at its own (10): 0.90 − 0.93, 0.92 − 0.93 = −0.02 on average;
    fis itself, having no estimator it stands in for, is paired with mas: 0.93 − 0.95, 0.93 − 0.94 = −0.015."""
    grids = {"mas": [10.0], "fis": [10.0], "fis_batched": [1000.0]}
    seeds = [CURVE_FIRST_SEED]
    cells = pd.concat([
        curve_cells({("mas", 10.0): [0.94], ("fis", 10.0): [0.93], ("fis_batched", 1000.0): [0.91]}),
        fresh("mas", 10.0, [0.95, 0.94]), fresh("fis", 10.0, [0.93, 0.93]), fresh("fis_batched", 1000.0, [0.90, 0.92])])
    table = at_own_optimum(cells, best_lambdas(summarise(cells, grids, seeds), cells, seeds)).set_index("driver")
    assert table.loc["fis_batched", "reference"] == "fis" and table.loc["fis", "reference"] == "mas"
    assert table.loc["fis_batched", "difference"] == pytest.approx(-0.02)
    assert table.loc["fis", "difference"] == pytest.approx(-0.015)


def run_count(store_uri: str) -> int:
    """How many runs the store holds, read from its sqlite file."""
    with sqlite3.connect(store_uri.removeprefix("sqlite:///")) as db:
        return db.execute("select count(*) from runs").fetchone()[0]


@pytest.mark.slow
def test_lambda_curve_end_to_end_on_smoke(store_uri, initialised_store, tmp_path, capsys):
    out = tmp_path / "curve"
    args = ["lambda-curve", "--protocol", "smoke", "--drivers", "mas,uniform", "--points", "2", "--decades", "1",
            "--seeds", "1", "--test-seeds", "2", "--lambda", "uniform=0.01", "--tracking-uri", store_uri,
            "--data-dir", DATA_DIR, "--out", str(out)]
    assert main(args) == 0
    cells = pd.read_csv(out / "cells.csv")
    curve = cells[cells.phase == "curve"]
    # mas centred on paper-tuned's 3.307, uniform on --lambda's 0.01: one decade, two points
    assert sorted(curve[curve.driver == "mas"]["lambda"]) == [1.046, 10.46]
    assert sorted(curve[curve.driver == "uniform"]["lambda"]) == [0.003162, 0.03162]
    assert set(curve.seed) == {CURVE_FIRST_SEED} and curve.val_ACC.between(0, 1).all()
    assert (cells.fingerprint.str.len() == 16).all() and set(cells.protocol) == {"smoke"}
    best = pd.read_csv(out / "best.csv").set_index("driver")
    test_sweeps = 0
    for driver in ("mas", "uniform"):
        test = cells[(cells.phase == "test") & (cells.driver == driver)]
        # fresh seeds at the validation-best λ and, where it differs, at the λ of highest curve test ACC
        chosen = {best.loc[driver, "best_lambda"], best.loc[driver, "test_rule_lambda"]}
        assert set(test["lambda"]) == chosen and sorted(test.seed) == sorted([0, 1] * len(chosen))
        assert best.loc[driver, "test_n"] == 2 and best.loc[driver, "fresh_n"] == 2
        test_sweeps += len(chosen)
    assert (out / "lambda_response.png").stat().st_size > 0
    # uniform at its own best λ against mas at its own, over the two fresh seeds
    optimum = pd.read_csv(out / "own_optimum.csv")
    assert list(optimum.driver) == ["uniform"] and list(optimum.reference) == ["mas"] and list(optimum.n) == [2]
    readme = (out / "README.md").read_text()
    assert "4 of 4 curve cells finished" in readme and f"{2 * test_sweeps} of {2 * test_sweeps} test cells" in readme
    # a second invocation trains nothing and starts no sweep (no empty parent run): every cell is found finished
    capsys.readouterr()
    runs_before = run_count(store_uri)
    assert main(args) == 0
    assert "sweep" not in capsys.readouterr().err and run_count(store_uri) == runs_before
    assert len(pd.read_csv(out / "cells.csv")) == len(cells)
    # another computation in the same experiment (here: mas alone) publishes its own cells, not uniform's
    only_mas = [*args, "--publish-only"]
    only_mas[only_mas.index("mas,uniform")], only_mas[only_mas.index(str(out))] = "mas", str(tmp_path / "mas")
    assert main(only_mas) == 0
    assert set(pd.read_csv(tmp_path / "mas" / "cells.csv").driver) == {"mas"}

    # a fresh machine: an empty store, resumed from the published folder, trains nothing and republishes every cell
    fresh = tmp_path / "fresh" / "mlflow.db"
    fresh.parent.mkdir()
    shutil.copy(initialised_store, fresh)
    again = tmp_path / "again"
    resumed = [*args[:args.index("--tracking-uri")], "--tracking-uri", f"sqlite:///{fresh}", "--data-dir", DATA_DIR,
               "--out", str(again), "--resume-from", str(out)]
    capsys.readouterr()
    assert main(resumed) == 0
    err = capsys.readouterr().err
    assert f"{len(cells)} published cells count as finished" in err and "sweep" not in err
    republished = pd.read_csv(again / "cells.csv", dtype={"run_id": str})
    assert sorted(republished.run_id) == sorted(cells.run_id.astype(str))
    assert "--resume-from" not in (again / "README.md").read_text()
    # without the published folder the fresh store has nothing: --publish-only writes an empty curve, trains nothing
    assert main([*resumed[:-2], "--publish-only", "--out", str(tmp_path / "empty")]) == 0
    assert pd.read_csv(tmp_path / "empty" / "cells.csv").empty


def test_resume_from_needs_a_published_folder(untouched_store, tmp_path, capsys):
    assert main(["lambda-curve", "--protocol", "smoke", "--tracking-uri", untouched_store,
                 "--resume-from", str(tmp_path)]) == 2
    assert "--resume-from: no cells.csv in" in capsys.readouterr().err


def test_lambda_curve_refuses_a_protocol_without_validation_split(untouched_store, capsys):
    assert main(["lambda-curve", "--protocol", "author", "--tracking-uri", untouched_store]) == 2
    assert "no validation split" in capsys.readouterr().err
