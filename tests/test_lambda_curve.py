"""`python -m benchmark lambda-curve`: the grid, the choice of the best λ, and both phases end to end on the smoke
protocol with a real MLflow store."""

import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.lambda_curve import CURVE_FIRST_SEED, best_lambdas, grid, summarise
from tests.conftest import DATA_DIR


def test_grid_is_log_spaced_around_its_centre():
    values = grid(3.307, 7, 3.0)
    assert len(values) == 7
    assert values[3] == 3.307
    assert values[0] == pytest.approx(3.307 / 10 ** 1.5, rel=1e-3) and values[-1] == pytest.approx(3.307 * 10 ** 1.5,
                                                                                                    rel=1e-3)
    assert np.allclose(np.diff(np.log10(values)), 0.5, atol=1e-3)


def curve_cells(values: dict[tuple[str, float], list[float]]) -> pd.DataFrame:
    rows = [{"driver": d, "lambda": lam, "seed": CURVE_FIRST_SEED + s, "phase": "curve", "val_ACC": acc,
             "ACC": np.nan, "BWT": np.nan, "run_id": f"{d}{lam}{s}"}
            for (d, lam), accs in values.items() for s, acc in enumerate(accs)]
    return pd.DataFrame(rows)


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


@pytest.mark.slow
def test_lambda_curve_end_to_end_on_smoke(store_uri, tmp_path, capsys):
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
    for driver in ("mas", "uniform"):
        test = cells[(cells.phase == "test") & (cells.driver == driver)]
        assert sorted(test.seed) == [0, 1]
        assert (test["lambda"] == best.loc[driver, "best_lambda"]).all()
        assert best.loc[driver, "test_n"] == 2
    assert (out / "lambda_response.png").stat().st_size > 0
    assert "4 of 4 curve cells finished" in (out / "README.md").read_text()
    # a second invocation trains nothing: every cell is found finished
    capsys.readouterr()
    assert main(args) == 0
    # two curve points and two test sweeps, each finding all its cells finished
    assert capsys.readouterr().err.count("resuming: 2 of 2 cells already finished") == 4
    assert len(pd.read_csv(out / "cells.csv")) == len(cells)


def test_lambda_curve_refuses_a_protocol_without_validation_split(untouched_store, capsys):
    assert main(["lambda-curve", "--protocol", "author", "--tracking-uri", untouched_store]) == 2
    assert "no validation split" in capsys.readouterr().err
