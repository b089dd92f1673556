from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.config import load_config, parse_config
from benchmark.errors import UsageError
from benchmark.scenario import (
    IDX_FILES,
    draw_permutations,
    load_dataset,
    make_scenario,
    make_splits,
    make_task_sequence,
)
from tests.conftest import DATA_DIR


def test_permutations_drawn_from_seed():
    p = draw_permutations(10, seed=3)
    assert p.shape == (10, 784) and p.dtype == np.int64
    np.testing.assert_array_equal(p[0], np.arange(784))
    for row in p[1:]:
        np.testing.assert_array_equal(np.sort(row), np.arange(784))
        assert not np.array_equal(row, np.arange(784))
    np.testing.assert_array_equal(p, draw_permutations(10, seed=3))
    assert not np.array_equal(p[1], draw_permutations(10, seed=4)[1])
    assert len({row.tobytes() for row in p}) == 10


def test_one_permutation_seed_gives_every_run_the_same_tasks(mnist):
    fixed = parse_config({"data": {"permutation_seed": 7}}, "fixed").data
    splits = {"mnist": make_splits(fixed, mnist)}
    for seed in (0, 1):
        np.testing.assert_array_equal(make_task_sequence(fixed, splits, seed).permutations, draw_permutations(10, 7))
    own = load_config("paper").data
    assert not np.array_equal(make_task_sequence(own, splits, 0).permutations[1],
                              make_task_sequence(own, splits, 1).permutations[1])
    with pytest.raises(UsageError, match="permutation_seed"):
        parse_config({"data": {"permutation_seed": -2}}, "bad")


def test_real_mnist_splits(mnist):
    train_images, train_labels, test_images, _ = mnist
    splits = make_splits(load_config("paper").data, mnist)
    assert splits.train.x.shape == (55000, 784) and splits.test.x.shape == (10000, 784)
    np.testing.assert_array_equal(splits.train.indices, np.arange(55000))
    np.testing.assert_array_equal(splits.validation.indices, np.arange(55000, 60000))
    np.testing.assert_array_equal(splits.importance.indices, np.arange(55000, 60000))
    assert float(splits.train.x.min()) == 0.0 and float(splits.train.x.max()) == 1.0
    # pixels /255, in MNIST's own order, labels alongside
    torch.testing.assert_close(splits.validation.x[7], train_images[55007].reshape(784).float() / 255)
    assert int(splits.validation.y[7]) == int(train_labels[55007])


def test_importance_samples_are_the_first_of_the_validation_split(mnist):
    splits = make_splits(load_config("smoke").data, mnist)
    np.testing.assert_array_equal(splits.importance.indices, np.arange(59500, 59700))


def test_task_inputs_are_permuted_pixels(mnist):
    scenario = make_scenario(make_splits(load_config("smoke").data, mnist), tasks=3, seed=0)
    x0, x2 = scenario.inputs(scenario.test, 0), scenario.inputs(scenario.test, 2)
    torch.testing.assert_close(x0, scenario.test.x)
    k = 400
    source = int(scenario.permutations[2][k])
    torch.testing.assert_close(x2[:, k], scenario.test.x[:, source])


def test_missing_mnist_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="MNIST not found: put the four MNIST idx files in"):
        load_dataset(tmp_path, download=False)


def test_corrupt_mnist_is_a_usage_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"not an idx file")
    with pytest.raises(UsageError, match="MNIST files in .* are unreadable"):
        load_dataset(tmp_path, download=False)


def test_task_scores_equal_the_model_on_permuted_images(mnist):
    from benchmark.evaluation import task_scores
    from benchmark.model import make_mlp
    from tests.reference import accuracy, mean_loss

    config = load_config("smoke")
    scenario = make_scenario(make_splits(config.data, mnist), tasks=5, seed=1)
    torch.manual_seed(1)
    model = make_mlp(config.model)
    x, y = scenario.inputs(scenario.train, 2)[:2000], scenario.train.y[:2000]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):  # a model that is right on task 2 and near chance on the others
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    scores = task_scores(model, scenario.test, torch.from_numpy(scenario.permutations), chunk=333)
    fast = scores.accuracy
    plain = [accuracy(model, scenario.inputs(scenario.test, j), scenario.test.y) for j in range(5)]
    losses = [mean_loss(model, scenario.inputs(scenario.test, j), scenario.test.y) for j in range(5)]
    assert scores.loss == pytest.approx(losses, rel=1e-5)
    assert fast == pytest.approx(plain, abs=2 / len(scenario.test.y))  # a tie in float rounding at most
    assert fast[2] > 0.8 and max(fast[:2] + fast[3:]) < 0.3


def test_idx_reader_equals_torchvisions(mnist):
    """The suite reads the idx files itself (torchvision's import costs seconds); torchvision's own MNIST class is
    the truth it must equal, byte for byte."""
    import torchvision

    train = torchvision.datasets.MNIST(DATA_DIR, train=True, download=False)
    test = torchvision.datasets.MNIST(DATA_DIR, train=False, download=False)
    for ours, theirs in zip(mnist, (train.data, train.targets, test.data, test.targets)):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_truncated_idx_file_is_a_usage_error_naming_it(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        (raw / name).write_bytes((Path(DATA_DIR) / "MNIST" / "raw" / name).read_bytes())
    (raw / IDX_FILES[2]).write_bytes((raw / IDX_FILES[2]).read_bytes()[:-1])
    with pytest.raises(UsageError, match="t10k-images-idx3-ubyte holds 7839999 bytes of data, its header says 7840000"):
        load_dataset(tmp_path, download=False)
