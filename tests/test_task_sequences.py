"""Task sequences beyond permuted MNIST (rotated, split, sequence), the convolutional model, and the smoke
protocols end to end: `run` honours the artifact contract and `report` builds from it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.evaluation import evaluate, task_head
from benchmark.model import make_model
from benchmark.scenario import datasets_needed, load_dataset, make_splits, make_task_sequence, rotate
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def fashion():
    return load_dataset(DATA_DIR, "fashion-mnist", download=False)


def splits_for(config, mnist, fashion):
    loaded = {"mnist": mnist, "fashion-mnist": fashion}
    return {name: make_splits(config.data, loaded[name]) for name in datasets_needed(config.data)}


def test_rotation_is_counter_clockwise_and_exact_for_right_angles():
    image = torch.zeros(1, 28, 28)
    image[0, 0, 27] = 1.0  # top right corner
    turned = rotate(image.reshape(1, 784), 90.0).view(28, 28)
    assert turned[0, 0] == 1.0 and turned.sum() == 1.0  # counter-clockwise: top right goes to top left
    x = torch.rand(5, 784)
    torch.testing.assert_close(rotate(x, 180.0), x.view(5, 28, 28).flip(1, 2).reshape(5, 784), rtol=0, atol=0)
    torch.testing.assert_close(rotate(x, 360.0), x, rtol=0, atol=0)
    assert rotate(x, 30.0).shape == (5, 784) and not torch.equal(rotate(x, 30.0), x)


def test_rotated_angles_drawn_from_the_seed_and_stored(mnist):
    config = load_config("smoke-rotated")
    splits = splits_for(config, mnist, None)
    a, b, c = (make_task_sequence(config.data, splits, seed) for seed in (0, 0, 1))
    assert a.angles == b.angles != c.angles and a.angles[0] == 0.0 and all(0 <= v < 180 for v in a.angles)
    tasks = a.record()["task_sequence.json"]["tasks"]
    assert [t["angle"] for t in tasks] == list(a.angles) and tasks[1]["dataset"] == "mnist"
    x, y = a.split("test", 2)
    torch.testing.assert_close(x, rotate(splits["mnist"].test.x, a.angles[2]))
    assert torch.equal(y, splits["mnist"].test.y)


def test_split_tasks_keep_their_pair_of_classes(mnist):
    config = load_config("smoke-split")
    sequence = make_task_sequence(config.data, splits_for(config, mnist, None), seed=0)
    for task in range(3):
        for split in ("train", "validation", "importance", "test"):
            _, y = sequence.split(split, task)
            assert len(y) and set(y.tolist()) == {2 * task, 2 * task + 1}
        assert sequence.classes(task).tolist() == [2 * task, 2 * task + 1]
    assert sequence.record()["task_sequence.json"]["tasks"][2]["classes"] == [4, 5]


def test_the_authors_sequence_is_mnist_fashion_and_both_rotated(mnist, fashion):
    config = load_config("smoke-conv")
    splits = splits_for(config, mnist, fashion)
    sequence = make_task_sequence(config.data, splits, seed=0)
    x1, _ = sequence.split("train", 1)
    x3, y3 = sequence.split("train", 3)
    torch.testing.assert_close(x1, splits["fashion-mnist"].train.x)
    torch.testing.assert_close(x3, rotate(splits["fashion-mnist"].train.x, 90.0))
    assert torch.equal(y3, splits["fashion-mnist"].train.y)


def test_a_task_head_is_the_softmax_over_its_classes():
    torch.manual_seed(0)
    model = make_model(load_config("smoke-split").model)
    x, y = torch.rand(6, 784), torch.tensor([2, 3, 2, 3, 3, 2])
    classes = torch.tensor([2, 3])
    with task_head(model, classes):
        loss = F.cross_entropy(model(x), y)
    expected = F.cross_entropy(model(x)[:, classes], y - 2)
    torch.testing.assert_close(loss, expected)
    assert torch.isfinite(model(x)).all()  # the head is gone outside the block


def test_evaluation_uses_each_tasks_head(mnist):
    config = load_config("smoke-split")
    sequence = make_task_sequence(config.data, splits_for(config, mnist, None), seed=0)
    torch.manual_seed(0)
    model = make_model(config.model).eval()
    by_hand = []
    for task in range(3):
        x, y = sequence.split("test", task)
        pair = torch.tensor([2 * task, 2 * task + 1])
        by_hand.append(float((model(x)[:, pair].argmax(1) + 2 * task == y).double().mean()))
    assert evaluate(model, sequence, "test", trained=2).accuracy == pytest.approx(by_hand, abs=1e-12)


def test_conv_model_is_the_authors_network():
    model = make_model(load_config("conv").model)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["conv1.weight"] == (64, 1, 5, 5) and shapes["conv3.weight"] == (256, 128, 3, 3)
    assert shapes["bn2.weight"] == (128,) and shapes["fc.weight"] == (10, 8 * 8 * 256)
    assert {name for name, _ in model.named_buffers()} >= {"bn1.running_mean", "bn1.running_var"}


@pytest.mark.parametrize("text, message", [
    ('[model]\nkind = "resnet"\n', "model.kind = 'resnet': choose from mlp, conv"),
    ('[data]\nsequence = "shuffled"\n', "data.sequence = 'shuffled': choose from permuted, rotated, split, sequence"),
    ('[model]\nkind = "conv"\nkernels = [29, 3, 3]\n', "shrink a 28×28 image to nothing"),
    ('[data]\nsequence = "split"\ntasks = 6\n', "data.tasks must be at most 5 for split"),
])
def test_bad_model_or_sequence_is_one_line_exit_2(text, message, tmp_path, untouched_store, capsys):
    protocol = tmp_path / "mine.toml"
    protocol.write_text(text)
    assert main(["run", "--config", str(protocol), "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_model_the_exact_rules_cannot_treat_is_refused(monkeypatch, untouched_store, capsys):
    from benchmark import model as models

    class Normalised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(784, track_running_stats=False)
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(self.norm(x))

    monkeypatch.setitem(models.MODELS, "mlp", lambda config: Normalised())
    assert main(["run", "--protocol", "smoke", "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.kind = 'mlp': layer norm (BatchNorm1d) normalises with batch" in err


def run_cli(*args, uri):
    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.parametrize("protocol, experiment, recorded", [
    ("smoke-conv", "sequence-smoke-conv", "task_sequence.json"),
    ("smoke-rotated", "rotated-mnist-smoke-rotated", "task_sequence.json"),
    ("smoke-split", "split-mnist-smoke-split", "task_sequence.json"),
])
@pytest.mark.slow
def test_smoke_protocol_end_to_end(protocol, experiment, recorded, initialised_store, tmp_path):
    """`run --drivers mas --seeds 1 --log-importances all` and `report`, real processes on a real store."""
    path = tmp_path / "mlflow.db"
    shutil.copy(initialised_store, path)
    uri = f"sqlite:///{path}"
    done = run_cli("run", "--protocol", protocol, "--drivers", "mas", "--seeds", "1", "--log-importances", "all",
                   uri=uri)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (cell,) = [r for r in runs if r.data.tags.get("kind") == "cell"]
    assert cell.info.status == "FINISHED" and 0 <= cell.data.metrics["ACC"] <= 1
    artifacts = Path(client.download_artifacts(cell.info.run_id, ""))
    config = load_config(protocol)
    tasks = config.data.tasks
    resolved = json.loads((artifacts / "config.json").read_text())
    assert resolved["data"]["sequence"] == config.data.sequence and resolved["model"]["kind"] == config.model.kind
    sequence = json.loads((artifacts / recorded).read_text())
    assert sequence["kind"] == config.data.sequence and len(sequence["tasks"]) == tasks
    assert np.load(artifacts / "importance_samples.npy", allow_pickle=False).dtype == np.int64
    for name in ("accuracy_matrix.csv", "validation_accuracy_matrix.csv", "correlations.csv"):
        assert (artifacts / name).stat().st_size > 0
    parameters = {name: tuple(p.shape) for name, p in make_model(config.model).named_parameters()}
    for t in range(tasks):
        state = load_file(artifacts / f"tasks/task_{t:02d}/state_dict.safetensors")
        importances = load_file(artifacts / f"tasks/task_{t:02d}/importances.safetensors")
        assert {k for k in state if k in parameters} == set(parameters)
        for estimator in config.estimators.observe:
            for name, shape in parameters.items():
                value = importances[f"{estimator}.{name}"]
                assert tuple(value.shape) == shape and torch.isfinite(value).all(), (estimator, name)
    if config.model.kind == "conv":  # running statistics are stored, never given importances
        assert "bn1.running_mean" in state and not any(k.endswith("running_mean") for k in importances)
    report = run_cli("report", "--tracking-uri", uri, "--out", str(tmp_path / "report"), uri=uri)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "index.html").exists()
    # the report's layers go from input to output, as the model's parameters do (conv1, bn1, …, fc for conv)
    summary = pd.read_csv(tmp_path / "report" / "correlations_summary.csv")
    assert list(dict.fromkeys(summary.layer)) == list(dict.fromkeys(name.rsplit(".", 1)[0] for name in parameters))


def test_a_conv_net_on_permuted_tasks_is_evaluated_on_the_permuted_images(mnist):
    """The general evaluation path (the first-layer shortcut is the MLP's): each task's accuracy is the model's
    on that task's images."""
    from tests.reference import accuracy

    config = load_config("smoke")
    sequence = make_task_sequence(config.data, {"mnist": make_splits(config.data, mnist)}, seed=1)
    torch.manual_seed(0)
    model = make_model(load_config("smoke-conv").model).eval()
    expected = [accuracy(model, sequence.inputs(sequence.test, j), sequence.test.y) for j in range(3)]
    assert evaluate(model, sequence, "test", trained=2).accuracy == pytest.approx(expected, abs=1e-12)
