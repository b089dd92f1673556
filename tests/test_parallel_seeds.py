"""--parallel-seeds: the stacked training is, seed for seed, the sequential algorithm."""

from dataclasses import replace

import pytest
import torch

from benchmark.config import load_config
from benchmark.loop import Diverged, run_sequence
from benchmark.parallel_seeds import run_sequences
from benchmark.scenario import make_scenario, make_splits


def small_config(epochs=2):
    smoke = load_config("smoke")
    return replace(smoke, training=replace(smoke.training, epochs=epochs))


@pytest.mark.parametrize("driver", ["none", "mas", "si", "shuffled-mas"])
def test_stacked_seeds_equal_sequential_seeds_bit_for_bit(mnist, driver):
    config = small_config()
    splits = make_splits(config.data, mnist)
    seeds = [3, 0, 7]
    scenarios = [make_scenario(splits, config.data.tasks, s) for s in seeds]
    lam = config.penalty.lambda_.get(driver.removeprefix("shuffled-"), 0.0)
    stacked = list(run_sequences(config, driver, lam, seeds, scenarios))
    for k, (seed, scenario) in enumerate(zip(seeds, scenarios)):
        for task, alone in enumerate(run_sequence(config, driver, lam, seed, scenario)):
            together = stacked[task][k]
            assert together.test_accuracy == alone.test_accuracy
            assert together.validation_accuracy == alone.validation_accuracy
            for name, value in alone.state_dict.items():
                assert torch.equal(together.state_dict[name], value), (seed, task, name)
            for est, imp in alone.accumulated.items():
                for name, value in imp.items():
                    assert torch.equal(together.accumulated[est][name], value), (seed, task, est, name)
            assert together.epoch_losses == alone.epoch_losses
            assert together.epoch_penalties == alone.epoch_penalties
    assert stacked[-1][0].state_dict["fc1.weight"].ne(stacked[-1][1].state_dict["fc1.weight"]).any()


def test_a_diverging_seed_leaves_the_others_alone(mnist):
    config = small_config(epochs=1)
    splits = make_splits(config.data, mnist)
    seeds = [0, 1]
    scenarios = [make_scenario(splits, config.data.tasks, s) for s in seeds]
    poisoned = splits.train.x.clone()
    poisoned[:, 400] = float("nan")  # seed 1's images only: its loss is NaN from its first step
    scenarios[1] = replace(scenarios[1], splits=replace(splits, train=replace(splits.train, x=poisoned)))
    results = list(run_sequences(config, "mas", 4.5, seeds, scenarios))
    assert isinstance(results[0][1], Diverged) and (results[0][1].task, results[0][1].step) == (0, 0)
    assert results[1][1] is results[0][1] and results[2][1] is results[0][1]
    alone = list(run_sequence(config, "mas", 4.5, 0, scenarios[0]))
    for task in range(3):
        assert results[task][0].test_accuracy == alone[task].test_accuracy


def test_batched_products_equal_sequential_seeds_up_to_rounding(mnist):
    """The GPU path (bmm over stacked weights), run here on the CPU: the same training up to float rounding."""
    config = small_config(epochs=1)
    splits = make_splits(config.data, mnist)
    seeds = [0, 5]
    scenarios = [make_scenario(splits, config.data.tasks, s) for s in seeds]
    batched = list(run_sequences(config, "fis", 41.0, seeds, scenarios, batched=True))
    for k, (seed, scenario) in enumerate(zip(seeds, scenarios)):
        for task, alone in enumerate(run_sequence(config, "fis", 41.0, seed, scenario)):
            together = batched[task][k]
            for name, value in alone.state_dict.items():
                torch.testing.assert_close(together.state_dict[name], value, rtol=1e-4, atol=1e-5)
            assert together.test_accuracy == pytest.approx(alone.test_accuracy, abs=0.005)
            assert together.epoch_losses == pytest.approx(alone.epoch_losses, rel=1e-4)


def test_run_parallel_seeds_logs_each_seed_as_its_own_cell(mnist, store_uri, tmp_path):
    """`run --parallel-seeds 2` over 3 seeds: three FINISHED cells whose artifacts equal a sequential sweep's."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from benchmark.cli import main
    from tests.conftest import DATA_DIR

    common = ["run", "--protocol", "smoke", "--drivers", "mas", "--seeds", "3", "--data-dir", DATA_DIR]
    sequential_uri = f"sqlite:///{tmp_path}/sequential.db"
    assert main([*common, "--tracking-uri", sequential_uri]) == 0
    assert main([*common, "--tracking-uri", store_uri, "--parallel-seeds", "2"]) == 0

    def cells(uri):
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("pmnist-smoke")
        runs = client.search_runs([experiment.experiment_id], "tags.kind = 'cell'")
        return client, {int(r.data.tags["seed"]): r for r in runs}

    client, together = cells(store_uri)
    seq_client, alone = cells(sequential_uri)
    assert sorted(together) == [0, 1, 2] and all(r.info.status == "FINISHED" for r in together.values())
    assert {s: r.data.tags["parallel_seeds"] for s, r in together.items()} == {0: "2", 1: "2", 2: "1"}
    for seed in range(3):
        for artifact in ("accuracy_matrix.csv", "correlations.csv"):
            a = pd.read_csv(client.download_artifacts(together[seed].info.run_id, artifact, str(tmp_path / "a")))
            b = pd.read_csv(seq_client.download_artifacts(alone[seed].info.run_id, artifact, str(tmp_path / "b")))
            pd.testing.assert_frame_equal(a, b)
