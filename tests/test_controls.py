"""Control drivers (estimators/controls.py): uniform, shuffled-<est>, layermean-<est>, and the author protocol."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.loop import run_sequence
from benchmark.model import make_mlp
from benchmark.scenario import make_scenario, make_splits
from tests.conftest import DATA_DIR
from tracking import Store

PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


@pytest.fixture(scope="module")
def smoke_splits(mnist):
    config = load_config("smoke")
    return config, make_splits(config.data, mnist)


def sequence(config, splits, driver, seed=0, lam=4.5):
    return list(run_sequence(config, driver, lam, seed, make_scenario(splits, config.data.tasks, seed)))


@pytest.mark.parametrize("seed", [0, 5])
def test_shuffled_is_one_fixed_permutation_per_tensor_drawn_from_the_seed(smoke_splits, seed):
    config, splits = smoke_splits
    generator = torch.Generator().manual_seed(seed)  # as documented: one randperm per tensor, in parameter order
    sizes = {name: p.numel() for name, p in make_mlp(config.model).named_parameters()}
    permutations = {name: torch.randperm(n, generator=generator) for name, n in sizes.items()}
    for result in sequence(config, splits, "shuffled-mas", seed):
        mas, shuffled = result.increments["mas"], result.increments["shuffled-mas"]
        assert list(shuffled) == PARAMS
        for name in PARAMS:
            a, b = mas[name].flatten(), shuffled[name].flatten()
            assert torch.equal(b, a[permutations[name]])  # the same permutation in every task
            assert torch.equal(a.sort().values, b.sort().values) and not torch.equal(a, b)
            # what the penalty sees: the accumulated importance is mas's accumulated one, permuted
            torch.testing.assert_close(result.accumulated["shuffled-mas"][name].flatten(),
                                       result.accumulated["mas"][name].flatten()[permutations[name]],
                                       rtol=1e-6, atol=0)


def test_layermean_keeps_each_tensors_mean_and_nothing_else(smoke_splits):
    config, splits = smoke_splits
    for result in sequence(config, splits, "layermean-mas"):
        for name in PARAMS:
            mas, mean = result.increments["mas"][name], result.increments["layermean-mas"][name]
            assert mean.shape == mas.shape and torch.all(mean == mean.flatten()[0])
            torch.testing.assert_close(mean.double().mean(), mas.double().mean(), rtol=1e-6, atol=0)


def test_uniform_is_one_everywhere_and_accumulates_like_an_estimator(smoke_splits):
    config, splits = smoke_splits
    results = sequence(config, splits, "uniform", lam=1.0)
    for result in results:
        assert set(result.increments["uniform"]) == set(PARAMS)
        assert all(torch.all(v == 1) for v in result.increments["uniform"].values())
        assert all(torch.all(v == result.task + 1) for v in result.accumulated["uniform"].values())
    assert results[-1].epoch_penalties[-1] > 0  # the L2 pull is applied


@pytest.mark.slow
def test_controls_run_as_drivers_and_are_recorded(store_uri, tmp_path, capsys):
    assert main(["run", "--protocol", "smoke", "--drivers", "mas,shuffled-mas,layermean-mas,uniform",
                 "--lambda", "uniform=2", "--log-importances", "final", "--tracking-uri", store_uri,
                 "--data-dir", DATA_DIR, "--lambda-source", "protocol"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert "shuffled-mas: λ 4.5 (mas's λ, protocol smoke)" in lines
    assert "uniform: λ 2 (--lambda)" in lines
    store = Store(store_uri)
    cells = {r.tags["driver"]: r for r in store.find_runs("pmnist-smoke", kind="cell")}
    assert set(cells) == {"mas", "shuffled-mas", "layermean-mas", "uniform"}
    assert all(r.status == "FINISHED" for r in cells.values())
    assert cells["layermean-mas"].tags["lambda"] == "4.5" and cells["uniform"].tags["lambda"] == "2.0"
    path = store.download(cells["shuffled-mas"].id, "tasks/task_02/importances.safetensors", tmp_path)
    stored = load_file(path)
    for name in PARAMS:  # the artifact holds the control's importance beside the estimator's
        assert torch.equal(stored[f"shuffled-mas.{name}"].flatten().sort().values,
                           stored[f"mas.{name}"].flatten().sort().values)


def test_unknown_control_is_one_line_exit_2(untouched_store, capsys):
    assert main(["run", "--protocol", "smoke", "--drivers", "shuffled-nothing", "--tracking-uri", untouched_store,
                 "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmark: error: unknown driver 'shuffled-nothing'") and err.count("\n") == 1


def test_author_protocol_trains_on_every_image_and_takes_importance_samples_from_them(mnist):
    config = load_config("author")
    assert (config.data.train_images, config.data.validation_images, config.estimators.si_gradient) == (
        60000, 0, "total")
    splits = make_splits(config.data, mnist)
    np.testing.assert_array_equal(splits.importance.indices, np.arange(55000, 60000))
    assert len(splits.validation.x) == 0 and len(splits.train.x) == 60000


@pytest.mark.slow
def test_a_protocol_without_validation_split_records_no_validation(tmp_path, store_uri):
    config = tmp_path / "novalidation.toml"
    smoke = (Path(__file__).parents[1] / "benchmark/protocols/smoke.toml").read_text()
    config.write_text(smoke.replace("validation_images = 500", 'validation_images = 0\nimportance_from = "train"'))
    assert main(["run", "--config", str(config), "--drivers", "mas", "--tracking-uri", store_uri,
                 "--data-dir", DATA_DIR]) == 0
    store = Store(store_uri)
    (cell,) = store.find_runs("pmnist-novalidation", kind="cell")
    assert cell.status == "FINISHED"
    artifacts = {p.name for p in store.download(cell.id, "", tmp_path / "artifacts").iterdir()}
    assert "accuracy_matrix.csv" in artifacts and "validation_accuracy_matrix.csv" not in artifacts


def test_tune_refuses_a_protocol_without_validation_split(untouched_store, tmp_path, capsys):
    assert main(["tune", "--protocol", "author", "--driver", "mas", "--trials", "1", "--tracking-uri",
                 untouched_store, "--storage", str(tmp_path / "o.journal"), "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert "no validation split" in err and err.count("\n") == 1
    assert not (tmp_path / "o.journal").exists()
