"""library-practice: the libraries' Fisher shortcuts against the exact Fisher on the networks a sweep trained."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.model import make_model
from benchmark.scenario import make_splits, make_task_sequence
from estimators import ESTIMATORS
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.slow  # trains through the CLI and a real store


def test_measured_on_each_network_as_its_run_left_it(store_uri, tmp_path, mnist):
    assert main(["run", "--protocol", "smoke", "--drivers", "none,mas", "--seeds", "3", "--data-dir", DATA_DIR,
                 "--tracking-uri", store_uri, "--log-importances", "all"]) == 0
    out = tmp_path / "out"
    assert main(["library-practice", "--experiment", "pmnist-smoke", "--task", "1", "--data-dir", DATA_DIR,
                 "--tracking-uri", store_uri, "--out", str(out)]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells.task) == {1} and set(cells.seed) == {0, 1, 2} and set(cells.driver) == {"none", "mas"}
    assert {"fingerprint", "run_id"} <= set(cells.columns)
    assert set(zip(cells.estimator_a, cells.estimator_b)) >= {("fis_batched", "fis"), ("fis_maxpred", "fis_exact"),
                                                              ("fis_pweighted", "fis")}
    # every task's importance logged: the options that act across tasks too, for every cell
    options = cells[cells.estimator_a.isin(["fis[blend]", "mas[blend]", "si[bound]"])]
    assert set(zip(options.estimator_a, options.estimator_b)) == {("fis[blend]", "fis"), ("mas[blend]", "mas"),
                                                                  ("si[bound]", "si")}
    assert options.groupby(["driver", "seed"]).ngroups == 6

    # one value by hand: mas seed 2's network after task 1, on task 1's importance samples
    client = MlflowClient(store_uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("pmnist-smoke").experiment_id])
              if r.data.tags.get("driver") == "mas" and r.data.tags.get("seed") == "2"]
    state = Path(client.download_artifacts(run.info.run_id, "tasks/task_01/state_dict.safetensors", str(tmp_path)))
    config = load_config("smoke")
    model = make_model(config.model)
    model.load_state_dict(load_file(state))
    model.eval()
    sequence = make_task_sequence(config.data, {"mnist": make_splits(config.data, mnist)}, seed=2)
    x, y = sequence.split("importance", 1)
    fisher = ESTIMATORS["fis"](batch_size=1000).importance(model, x, y)["fc1.weight"].flatten().double()
    maxpred = ESTIMATORS["fis_maxpred"](batch_size=1000).importance(model, x, y)["fc1.weight"].flatten().double()
    by_hand = float(torch.corrcoef(torch.stack([maxpred, fisher]))[0, 1])
    row = cells[(cells.driver == "mas") & (cells.seed == 2) & (cells.layer == "fc1") & (cells.param == "weight")
                & (cells.estimator_a == "fis_maxpred") & (cells.estimator_b == "fis") & (cells.method == "pearson")]
    assert row.value.item() == pytest.approx(by_hand, abs=1e-6)

    summary = pd.read_csv(out / "summary.csv")
    mine = summary[(summary.driver == "mas") & (summary.layer == "fc1") & (summary.param == "weight")
                   & (summary.estimator_a == "fis_maxpred") & (summary.estimator_b == "fis")
                   & (summary.method == "pearson")]
    seeds = cells[(cells.driver == "mas") & (cells.layer == "fc1") & (cells.param == "weight")
                  & (cells.estimator_a == "fis_maxpred") & (cells.estimator_b == "fis") & (cells.method == "pearson")]
    assert mine["mean"].item() == pytest.approx(np.mean(seeds.value)) and mine.n.item() == 3
    assert mine.ci_low.item() < mine["mean"].item() < mine.ci_high.item()
    readme = (out / "README.md").read_text()
    assert "python -m benchmark library-practice --experiment pmnist-smoke --task 1 --out" in readme
    assert store_uri not in readme and DATA_DIR not in readme


def test_a_task_the_runs_do_not_have_is_one_line(store_uri, tmp_path, capsys):
    assert main(["run", "--protocol", "smoke", "--drivers", "none", "--seeds", "1", "--data-dir", DATA_DIR,
                 "--tracking-uri", store_uri]) == 0
    out = tmp_path / "out"
    assert main(["library-practice", "--task", "7", "--data-dir", DATA_DIR, "--tracking-uri", store_uri,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--task 7: run" in err and "has tasks 0 … 2" in err and "Traceback" not in err
    assert not out.exists()
