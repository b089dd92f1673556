"""`run --parallel K`: cells of any drivers trained stacked are, cell for cell, the cell trained alone."""

from dataclasses import replace

import pytest
import torch

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.loop import Cell, Diverged, run_cells, run_sequence
from benchmark.scenario import load_splits, make_splits, make_task_sequence
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's


def protocol(name: str, epochs: int = 2):
    config = load_config(name)
    return replace(config, training=replace(config.training, epochs=epochs))


def make_cells(config, drivers_and_seeds, splits):
    return [Cell(driver, config.penalty.lambda_.get(driver.split("-")[-1], 0.0), seed,
                 make_task_sequence(config.data, splits, seed)) for driver, seed in drivers_and_seeds]


def assert_same_result(together, alone, where):
    assert together.test_accuracy == alone.test_accuracy, where
    assert together.validation_accuracy == alone.validation_accuracy, where
    for name, value in alone.state_dict.items():
        assert torch.equal(together.state_dict[name], value), (*where, name)
    assert together.accumulated.keys() == alone.accumulated.keys(), where
    for est, imp in alone.accumulated.items():
        for name, value in imp.items():
            assert torch.equal(together.accumulated[est][name], value), (*where, est, name)
    assert together.epoch_losses == alone.epoch_losses, where
    assert together.epoch_penalties == alone.epoch_penalties, where


@pytest.mark.parametrize("name, cells", [
    ("smoke", [("none", 3), ("mas", 0), ("si", 7), ("shuffled-mas", 0), ("fis", 3), ("uniform", 1)]),
    ("smoke-split", [("sig", 0), ("layermean-fis", 1), ("si", 0)]),  # task heads
    ("smoke-conv", [("mas", 0), ("none", 1)]),  # BatchNorm: running statistics per cell
])
def test_stacked_cells_of_mixed_drivers_equal_each_cell_alone_bit_for_bit(name, cells):
    config = protocol(name, epochs=2 if name == "smoke" else 1)
    splits = load_splits(config.data, DATA_DIR, download=True, device="cpu")
    stacked = list(run_cells(config, make_cells(config, cells, splits)))
    assert len(stacked) == config.data.tasks
    for k, cell in enumerate(make_cells(config, cells, splits)):
        for task, alone in enumerate(run_sequence(config, cell.driver, cell.lam, cell.seed, cell.scenario)):
            assert_same_result(stacked[task][k], alone, (cell.driver, cell.seed, task))
    # the cells really differ: a stack that trained one model K times would pass the loop above only by accident
    last = stacked[-1]
    first_weight = next(iter(last[0].state_dict))
    assert not torch.equal(last[0].state_dict[first_weight], last[1].state_dict[first_weight])


def test_a_diverging_cell_leaves_the_others_alone(mnist):
    config = protocol("smoke", epochs=1)
    splits = make_splits(config.data, mnist)
    cells = make_cells(config, [("mas", 0), ("si", 1), ("fis", 2)], {"mnist": splits})
    poisoned = splits.train.x.clone()
    poisoned[:, 400] = float("nan")  # cell 1's images only: its loss is NaN from its first step
    cells[1] = replace(cells[1], scenario=replace(cells[1].scenario, splits=replace(splits, train=replace(
        splits.train, x=poisoned))))
    results = list(run_cells(config, cells))
    failure = results[0][1]
    assert isinstance(failure, Diverged) and (failure.task, failure.step) == (0, 0)
    assert results[1][1] is failure and results[2][1] is failure
    for k in (0, 2):
        for task, alone in enumerate(run_sequence(config, cells[k].driver, cells[k].lam, cells[k].seed,
                                                  cells[k].scenario)):
            assert_same_result(results[task][k], alone, (k, task))
    with pytest.raises(Diverged, match="at task 0, step 0"):  # a cell alone raises its failure
        next(run_sequence(config, "si", 0.25, 1, cells[1].scenario))


def test_batched_products_equal_cells_alone_up_to_rounding(mnist):
    """The GPU path (baddbmm over the stacked weights), run here on the CPU: the same training up to rounding."""
    config = protocol("smoke", epochs=1)
    splits = {"mnist": make_splits(config.data, mnist)}
    cells = make_cells(config, [("fis", 0), ("mas", 5), ("none", 0)], splits)
    batched = list(run_cells(config, cells, batched=True))
    for k, cell in enumerate(cells):
        for task, alone in enumerate(run_sequence(config, cell.driver, cell.lam, cell.seed, cell.scenario)):
            together = batched[task][k]
            for name, value in alone.state_dict.items():
                torch.testing.assert_close(together.state_dict[name], value, rtol=1e-4, atol=1e-5)
            assert together.test_accuracy == pytest.approx(alone.test_accuracy, abs=0.005)
            assert together.epoch_losses == pytest.approx(alone.epoch_losses, rel=1e-4)


def test_run_parallel_logs_each_cell_as_its_own_run(mnist, store_uri, tmp_path):
    """`run --parallel 3` over 2 drivers × 2 seeds: four FINISHED cells (stacks of 3 and 1) whose artifacts equal
    a sequential sweep's, each tagged with its stack's size and its device."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    common = ["run", "--protocol", "smoke", "--drivers", "none,si", "--seeds", "2", "--data-dir", DATA_DIR]
    sequential_uri = f"sqlite:///{tmp_path}/sequential.db"
    assert main([*common, "--tracking-uri", sequential_uri]) == 0
    assert main([*common, "--tracking-uri", store_uri, "--parallel", "3"]) == 0

    def cells(uri):
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("pmnist-smoke")
        runs = client.search_runs([experiment.experiment_id], "tags.kind = 'cell'")
        return client, {(r.data.tags["driver"], int(r.data.tags["seed"])): r for r in runs}

    client, together = cells(store_uri)
    seq_client, alone = cells(sequential_uri)
    assert len(together) == 4 and all(r.info.status == "FINISHED" for r in together.values())
    assert {cell: r.data.tags["stacked"] for cell, r in together.items()} == {
        ("none", 0): "3", ("none", 1): "3", ("si", 0): "3", ("si", 1): "1"}
    assert all(r.data.tags["device_name"] for r in together.values())
    for cell in together:
        for artifact in ("accuracy_matrix.csv", "correlations.csv"):
            a = pd.read_csv(client.download_artifacts(together[cell].info.run_id, artifact, str(tmp_path / "a")))
            b = pd.read_csv(seq_client.download_artifacts(alone[cell].info.run_id, artifact, str(tmp_path / "b")))
            pd.testing.assert_frame_equal(a, b)


def test_parallel_zero_is_one_line_exit_2(untouched_store, capsys):
    assert main(["run", "--protocol", "smoke", "--parallel", "0", "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--parallel" in err and "must be ≥ 1" in err
