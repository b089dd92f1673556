"""Beyond the paper: a second dataset, online accumulation, the extra pairs and the top-k overlap."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.loop import run_sequence
from benchmark.scenario import load_dataset, make_scenario, make_splits
from tests.conftest import DATA_DIR


def test_fashion_mnist_is_a_second_dataset(mnist):
    fashion = load_dataset(DATA_DIR, "fashion-mnist", download=False)
    assert fashion[0].shape == (60000, 28, 28) and fashion[2].shape == (10000, 28, 28)
    assert sorted(fashion[1].unique().tolist()) == list(range(10))
    assert not torch.equal(fashion[0][:100], mnist[0][:100])


@pytest.mark.slow
def test_run_on_fashion_mnist_is_its_own_experiment(store_uri):
    assert main(["run", "--protocol", "smoke", "--drivers", "mas", "--dataset", "fashion-mnist",
                 "--data-dir", DATA_DIR, "--tracking-uri", store_uri]) == 0
    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("pfashion-mnist-smoke")
    (cell,) = client.search_runs([experiment.experiment_id], "tags.kind = 'cell'")
    assert cell.info.status == "FINISHED" and cell.data.params["data.dataset"] == "fashion-mnist"
    assert client.get_experiment_by_name("pmnist-smoke") is None


@pytest.mark.slow
def test_online_accumulation_decays_earlier_tasks(mnist):
    smoke = load_config("smoke")
    config = replace(smoke, estimators=replace(smoke.estimators, accumulation="online", online_gamma=0.5))
    scenario = make_scenario(make_splits(config.data, mnist), config.data.tasks, seed=0)
    results = list(run_sequence(config, "mas", 4.5, 0, scenario))
    for est in results[0].increments:
        for name, first in results[0].increments[est].items():
            expected = 0.5 * (0.5 * first + results[1].increments[est][name]) + results[2].increments[est][name]
            torch.testing.assert_close(results[2].accumulated[est][name], expected)
    summed = list(run_sequence(smoke, "none", 0.0, 0, scenario))
    np.testing.assert_allclose(summed[1].accumulated["sig"]["fc1.bias"],
                               summed[0].increments["sig"]["fc1.bias"] + summed[1].increments["sig"]["fc1.bias"])


@pytest.mark.parametrize("key, value, message", [
    ("accumulation", "decay", "estimators.accumulation must be 'sum', 'online' or 'blend'"),
    ("online_gamma", 1.5, "estimators.online_gamma must be in (0, 1]"),
    ("online_gamma", 0.0, "estimators.online_gamma must be in (0, 1]"),
])
def test_bad_accumulation_settings_are_rejected(tmp_path, capsys, key, value, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[estimators]\n{key} = {value!r}\n".replace("'", '"'))
    assert main(["run", "--config", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/never/m.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "never").exists()


def test_the_protocol_chooses_which_estimators_observe_and_the_driver_always_does():
    from benchmark.loop import make_estimators

    paper = load_config("paper")
    assert list(make_estimators(paper)) == ["fis", "mas", "si", "sig"]
    assert list(make_estimators(paper, driver="sos")) == ["fis", "mas", "si", "sig", "sos"]
    assert len(make_estimators(load_config("quick"))) == 9


def test_unknown_observed_estimator_is_rejected(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[estimators]\nobserve = ["fis", "ewc"]\n')
    assert main(["run", "--config", str(path), "--tracking-uri", f"sqlite:///{tmp_path}/never/m.db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "estimators.observe: unknown estimator 'ewc'" in err, err
    assert not (tmp_path / "never").exists()
