"""training.adam_state: "fresh" (every cell its own Adam, as before the option) and "carried" (a driver's seeds as
one chain, each cell starting from the Adam state the previous seed's cell ended with, as the paper author's script
keeps one Adam across its runs), on the smoke protocol."""

import io
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from safetensors.torch import load

from benchmark.cli import main
from benchmark.config import PROTOCOL_DIR, load_config
from benchmark.evaluation import task_scores
from benchmark.lambdas import Lambda
from benchmark.model import make_model
from benchmark.scenario import load_splits, make_task_sequence
from benchmark.sweep import NOT_RUN, cell_config, config_hash, run_sweep
from tests.conftest import DATA_DIR
from tracking import Store

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's

SMOKE = (PROTOCOL_DIR / "smoke.toml").read_text()
LAST_WEIGHTS = "tasks/task_02/state_dict.safetensors"  # smoke has 3 tasks


def smoke_with(adam_state: str, tmp_path: Path) -> Path:
    """The smoke protocol with training.adam_state set, as a config file."""
    path = tmp_path / f"smoke-{adam_state}.toml"
    path.write_text(SMOKE.replace("epochs = 1\n", f'epochs = 1\nadam_state = "{adam_state}"\n'))
    return path


@pytest.fixture(scope="module")
def splits():
    return load_splits(load_config("smoke").data, DATA_DIR, download=True, device="cpu")


def sweep(uri: str, config, seeds: list[int], splits, drivers=("none",)) -> tuple[dict, list[str]]:
    return run_sweep(Store(uri), config, list(drivers), seeds, {"mas": Lambda(4.5, "default")}, splits, "none",
                     "test", experiment=config.protocol)


def cell_runs(uri: str, experiment: str) -> dict[int, list]:
    """The experiment's finished cells by seed, newest first."""
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               "tags.kind = 'cell' and attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"])
    runs: dict[int, list] = {}
    for run in found:
        runs.setdefault(int(run.data.tags["seed"]), []).append(run)
    return runs


def artifact(uri: str, run_id: str, path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return Store(uri).download(run_id, path, tmp).read_bytes()


def accuracy_matrix(uri: str, run_id: str) -> list[list[float]]:
    table = pd.read_csv(io.BytesIO(artifact(uri, run_id, "accuracy_matrix.csv")))
    return table.drop(columns="after_task").values.tolist()


def final_weights(uri: str, run_id: str) -> dict[str, torch.Tensor]:
    return load(artifact(uri, run_id, LAST_WEIGHTS))


def authors_chain(config, splits, seeds: list[int]) -> dict[int, tuple[list[list[float]], dict[str, torch.Tensor]]]:
    """The author's script, driver none: one model and one Adam for all runs; each run re-initialises the model's
    weights in place (from its seed, as the suite draws them) and keeps the optimiser. Per seed: the test accuracy
    matrix and the weights after the last task."""
    torch.manual_seed(seeds[0])
    model = make_model(config.model)
    # fused: the suite's Adam (the same algorithm as the default one, its float operations in another order)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.training.lr, fused=True)
    batch = config.training.batch_size
    chain = {}
    for seed in seeds:
        torch.manual_seed(seed)
        for layer in model.modules():  # in construction order: the weights make_model draws from this seed
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
        shuffle = torch.Generator().manual_seed(seed)
        scenario = make_task_sequence(config.data, splits, seed)
        rows = []
        for task in range(scenario.tasks):
            x, y = scenario.split("train", task)
            for _ in range(config.training.epochs):
                order = torch.randperm(len(x), generator=shuffle)
                for start in range(0, len(x), batch):
                    optimizer.zero_grad()
                    F.cross_entropy(model(x[order[start:start + batch]]), y[order[start:start + batch]]).backward()
                    optimizer.step()
            rows.append(task_scores(model, scenario.test, torch.from_numpy(scenario.permutations)).accuracy)
        chain[seed] = rows, {k: v.detach().clone() for k, v in model.state_dict().items()}
    return chain


@pytest.fixture(scope="module")
def carried_config(tmp_path_factory):
    return load_config(path=smoke_with("carried", tmp_path_factory.mktemp("carried")))


@pytest.fixture(scope="module")
def by_hand(carried_config, splits):
    return authors_chain(carried_config, splits, [0, 1])


def test_fresh_is_the_run_without_the_key(store_uri, splits, tmp_path):
    """adam_state = "fresh" is today's behaviour: the same configuration, the same hash as before the key existed
    (a sweep with the key resumes the cells of one without it), the same accuracy matrix and weights."""
    explicit = replace(load_config(path=smoke_with("fresh", tmp_path)), protocol="smoke")
    without = load_config("smoke")
    assert explicit == without
    resolved = cell_config(explicit, "mas", 0, Lambda(4.5, "default"), "cpu", "none")
    assert "adam_chain" not in resolved
    before = {**resolved, "training": {k: v for k, v in resolved["training"].items() if k != "adam_state"}}
    assert config_hash(resolved) == config_hash(before)

    other_uri = store_uri.replace("mlflow.db", "other.db")
    sweep(store_uri, without, [0], splits, drivers=["mas"])
    sweep(other_uri, explicit, [0], splits, drivers=["mas"])
    (a,), (b,) = cell_runs(store_uri, "smoke")[0], cell_runs(other_uri, "smoke")[0]
    assert artifact(store_uri, a.info.run_id, "accuracy_matrix.csv") == \
        artifact(other_uri, b.info.run_id, "accuracy_matrix.csv")
    assert artifact(store_uri, a.info.run_id, LAST_WEIGHTS) == artifact(other_uri, b.info.run_id, LAST_WEIGHTS)
    statuses, reused = sweep(store_uri, explicit, [0], splits, drivers=["mas"])
    assert reused == [a.info.run_id]


def test_a_carried_chain_is_the_authors_one_adam(store_uri, carried_config, splits, by_hand):
    statuses, _ = sweep(store_uri, carried_config, [1, 0], splits)  # the chain runs in seed order whatever the list
    assert statuses == {("none", 0): "FINISHED", ("none", 1): "FINISHED"}
    runs = cell_runs(store_uri, carried_config.protocol)
    for seed, chain in ((0, "[]"), (1, "[0]")):
        (run,) = runs[seed]
        assert run.data.params["adam_chain"] == chain
        matrix, weights = by_hand[seed]
        assert accuracy_matrix(store_uri, run.info.run_id) == matrix, seed
        stored = final_weights(store_uri, run.info.run_id)
        assert all(torch.equal(stored[k], v) for k, v in weights.items()), seed

    # the second cell is not its fresh counterpart: the carried moments and step count changed its training
    fresh_config = replace(carried_config, training=replace(carried_config.training, adam_state="fresh"))
    sweep(store_uri, fresh_config, [1], splits)
    fresh = [r for r in cell_runs(store_uri, carried_config.protocol)[1] if "adam_chain" not in r.data.params]
    (fresh_run,) = fresh
    fresh_weights = final_weights(store_uri, fresh_run.info.run_id)
    assert not any(torch.equal(fresh_weights[k], v) for k, v in by_hand[1][1].items())
    assert accuracy_matrix(store_uri, fresh_run.info.run_id) != by_hand[1][0]


def test_resuming_a_chain_starts_from_the_stored_adam_state(store_uri, carried_config, splits, by_hand):
    """A chain is reused up to its first unfinished cell and trained again from there, its first cell starting
    from the Adam state the previous one stored; a cell of another chain (seed 1 alone) is never reused."""
    experiment = carried_config.protocol
    sweep(store_uri, carried_config, [1], splits)  # seed 1 first in its chain: not the cell of the chain 0 → 1
    sweep(store_uri, carried_config, [0], splits)
    (first,) = cell_runs(store_uri, experiment)[0]
    statuses, reused = sweep(store_uri, carried_config, [0, 1], splits)
    assert reused == [first.info.run_id]
    resumed = cell_runs(store_uri, experiment)[1][0]  # the newest
    assert resumed.data.params["adam_chain"] == "[0]"
    stored = final_weights(store_uri, resumed.info.run_id)
    assert all(torch.equal(stored[k], v) for k, v in by_hand[1][1].items())

    # the chain's first cell missing: everything after it is trained again, the finished seed 1 too
    MlflowClient(store_uri).delete_run(first.info.run_id)
    statuses, reused = sweep(store_uri, carried_config, [0, 1], splits)
    assert reused == [] and statuses == {("none", 0): "FINISHED", ("none", 1): "FINISHED"}
    assert len(cell_runs(store_uri, experiment)[1]) == 3


def test_a_failed_cell_ends_its_chain(store_uri, carried_config, splits):
    """A cell that diverges leaves no Adam state to carry: the cells after it in its chain are not run."""
    mnist = splits["mnist"]
    poisoned = mnist.train.x.clone()
    poisoned[:, 400] = float("nan")  # the loss is NaN from the first step
    poisoned_splits = {"mnist": replace(mnist, train=replace(mnist.train, x=poisoned))}
    statuses, _ = sweep(store_uri, carried_config, [0, 1], poisoned_splits)
    assert statuses == {("none", 0): "FAILED", ("none", 1): NOT_RUN}


@pytest.mark.parametrize("value, message", [
    ('"warm"', "training.adam_state = 'warm': choose from 'fresh', 'carried'"),
    ('"carried"\noptimizer = "sgd"', "training.adam_state = 'carried' needs training.optimizer = 'adam'"),
])
def test_a_bad_adam_state_is_a_one_line_error(value, message, tmp_path, untouched_store, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(SMOKE.replace('optimizer = "adam"\n', "").replace("epochs = 1\n", f"epochs = 1\nadam_state = "
                                                                                      f"{value}\n"))
    assert main(["run", "--config", str(path), "--tracking-uri", untouched_store, "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("args, refused", [
    (["run", "--parallel", "2"], "drop --parallel"),
    (["tune", "--driver", "mas"], "tune: protocol smoke-carried has training.adam_state = 'carried'"),
    (["lambda-curve", "--drivers", "mas"], "lambda-curve: protocol smoke-carried has training.adam_state"),
])
def test_what_cannot_train_a_chain_refuses_it(args, refused, store_uri, tmp_path, capsys):
    config = smoke_with("carried", tmp_path)
    assert main([*args, "--config", str(config), "--tracking-uri", store_uri, "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and refused in err, err


def test_the_ablation_protocol_is_author_with_a_carried_adam():
    carried = load_config(path=Path(__file__).parents[1] / "results/author-ablation/author-adam-carried.toml")
    author = load_config("author")
    assert carried.training.adam_state == "carried"
    assert replace(carried, protocol="author", training=replace(carried.training, adam_state="fresh")) == author
