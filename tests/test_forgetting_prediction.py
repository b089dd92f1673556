"""predict-forgetting: the quadratic prediction ½ Σ Ω Δθ² against the measured rise of an old task's loss."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.forgetting_prediction import ALL_LAYERS, BASELINE, fit, predicted_increase, run_points
from tests.conftest import DATA_DIR


def test_prediction_by_hand():
    before = {"fc1.weight": np.array([[1.0, 2.0]]), "fc1.bias": np.array([0.0]), "fc2.weight": np.array([[3.0]])}
    after = {"fc1.weight": np.array([[2.0, 0.0]]), "fc1.bias": np.array([1.0]), "fc2.weight": np.array([[3.5]])}
    omega = {"fc1.weight": np.array([[2.0, 0.5]]), "fc1.bias": np.array([4.0]), "fc2.weight": np.array([[8.0]])}
    got = predicted_increase(omega, before, after)
    # fc1: ½ (2·1² + 0.5·2² + 4·1²) = 4; fc2: ½ · 8 · 0.5² = 1
    assert got == {"fc1": 4.0, "fc2": 1.0, ALL_LAYERS: 5.0}


def test_points_pair_every_old_task_with_every_later_one():
    rng = np.random.default_rng(0)
    states = [{"fc1.weight": rng.normal(size=(2, 3)), "fc1.bias": rng.normal(size=2)} for _ in range(3)]
    increments = [{"mas": {n: rng.random(v.shape) for n, v in s.items()}} for s in states]
    loss = np.array([[0.1, 2.0, 2.0], [0.5, 0.2, 2.0], [0.9, 0.4, 0.3]])
    points = run_points(loss, states, increments)
    assert sorted(set(zip(points.old_task, points.after_task))) == [(0, 1), (0, 2), (1, 2)]
    assert set(points.estimator) == {"mas", BASELINE} and set(points.layer) == {"fc1", ALL_LAYERS}
    row = points[(points.old_task == 0) & (points.after_task == 2) & (points.estimator == BASELINE)
                 & (points.layer == "fc1")].iloc[0]
    assert row.actual == pytest.approx(0.9 - 0.1)
    distance = sum(((states[2][n] - states[0][n]) ** 2).sum() for n in states[0])
    assert row.predicted == pytest.approx(0.5 * distance)
    # the increment of the OLD task is what predicts its forgetting, not the later task's
    row = points[(points.old_task == 1) & (points.after_task == 2) & (points.estimator == "mas")
                 & (points.layer == "fc1")].iloc[0]
    expected = 0.5 * sum((increments[1]["mas"][n] * (states[2][n] - states[1][n]) ** 2).sum() for n in states[1])
    assert row.predicted == pytest.approx(expected)


def test_fit_is_scale_free_and_r2_fits_through_the_origin():
    predicted = np.array([1.0, 2.0, 3.0, 4.0])
    exact = fit(predicted, 7 * predicted)
    assert exact["spearman"] == pytest.approx(1) and exact["pearson"] == pytest.approx(1)
    assert exact["r2"] == pytest.approx(1) and exact["scale"] == pytest.approx(7)
    # a constant offset keeps the correlations at 1 but not the fit through the origin
    offset = fit(predicted, predicted + 10)
    assert offset["pearson"] == pytest.approx(1) and offset["r2"] < 0.9
    assert np.isnan(fit(predicted, np.ones(4))["spearman"])


@pytest.mark.slow
def test_end_to_end_on_logged_runs(store_uri, tmp_path, capsys):
    assert main(["run", "--protocol", "smoke", "--drivers", "none,mas", "--seeds", "3", "--log-importances", "all",
                 "--data-dir", DATA_DIR, "--tracking-uri", store_uri]) == 0
    out = tmp_path / "out"
    assert main(["predict-forgetting", "--experiment", "pmnist-smoke", "--tracking-uri", store_uri,
                 "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"README.md", "summary.csv", "cells.csv", "points.csv.gz",
                                               "predicted_vs_actual_none.png", "predicted_vs_actual_mas.png"}
    points = pd.read_csv(out / "points.csv.gz")
    # 3 tasks: pairs (0,1), (0,2), (1,2); per driver and seed; the protocol's nine estimators and uniform
    estimators = len(load_config("smoke").estimators.observe) + 1
    assert set(points.estimator) == {*load_config("smoke").estimators.observe, BASELINE}
    assert len(points) == 2 * 3 * 3 * estimators * 4  # drivers × seeds × pairs × estimators × (fc1, fc2, fc3, all)

    # one point recomputed from the run's own artifacts, independently of the module
    client = MlflowClient(store_uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("pmnist-smoke").experiment_id])
              if r.data.tags.get("driver") == "mas" and r.data.tags.get("seed") == "1"]
    root = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    loss = pd.read_csv(root / "loss_matrix.csv").drop(columns="after_task").to_numpy()
    theta_0 = load_file(root / "tasks/task_00/state_dict.safetensors")
    theta_2 = load_file(root / "tasks/task_02/state_dict.safetensors")
    omega = load_file(root / "tasks/task_00/importances.safetensors")
    by_hand = sum(0.5 * float((omega[f"fis.{n}"].double() * (theta_2[n].double() - theta_0[n].double()) ** 2).sum())
                  for n in theta_0 if n.startswith("fc2."))
    row = points[(points.driver == "mas") & (points.seed == 1) & (points.old_task == 0) & (points.after_task == 2)
                 & (points.estimator == "fis") & (points.layer == "fc2")].iloc[0]
    assert row.predicted == pytest.approx(by_hand, rel=1e-6)
    assert row.actual == pytest.approx(loss[2, 0] - loss[0, 0])

    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 2 * 3 * estimators * 4 and {"fingerprint", "run_id", "spearman", "r2"} <= set(cells.columns)
    summary = pd.read_csv(out / "summary.csv")
    mas_all = summary[(summary.driver == "none") & (summary.estimator == "mas") & (summary.layer == ALL_LAYERS)]
    assert mas_all.seeds.item() == 3 and mas_all.spearman_low.item() <= mas_all.spearman.item()
    readme = (out / "README.md").read_text()
    assert "python -m benchmark predict-forgetting --experiment pmnist-smoke --out" in readme
    assert store_uri not in readme


@pytest.mark.slow
def test_runs_without_every_tasks_importances_are_refused(store_uri, tmp_path, capsys):
    assert main(["run", "--protocol", "smoke", "--drivers", "none", "--seeds", "1", "--data-dir", DATA_DIR,
                 "--tracking-uri", store_uri]) == 0
    out = tmp_path / "out"
    assert main(["predict-forgetting", "--tracking-uri", store_uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lacks loss_matrix.csv or a task's importances" in err and "--log-importances all" in err
    assert "Traceback" not in err and not out.exists()

