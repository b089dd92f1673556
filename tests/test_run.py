"""`python -m benchmark run` end to end on real MNIST with a real MLflow sqlite store: the artifact contract."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.config import load_config
from benchmark.correlations import COLUMNS
from benchmark.loop import make_estimators
from benchmark.model import make_mlp
from benchmark.scenario import draw_permutations, make_scenario, make_splits
from tests.conftest import DATA_DIR
from tests.reference import accuracy, mean_loss

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's

PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]


def run_cli(*args, uri, env_extra=None):
    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR, "MLFLOW_TRACKING_URI": uri, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "benchmark", "run", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def smoke_sweep(initialised_store, tmp_path_factory) -> tuple[str, str]:
    """A real `run` process, its stderr a pipe (not a terminal): the store's URI and what it wrote to stderr."""
    path = tmp_path_factory.mktemp("smoke") / "mlflow.db"
    shutil.copy(initialised_store, path)
    uri = f"sqlite:///{path}"
    done = run_cli("--protocol", "smoke", "--drivers", "mas,none", "--seeds", "1", "--log-importances", "all",
                   uri=uri)
    assert done.returncode == 0, done.stderr
    return uri, done.stderr


@pytest.fixture(scope="module")
def smoke_store(smoke_sweep) -> str:
    return smoke_sweep[0]


def runs(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pmnist-smoke")
    return client, client.search_runs([experiment.experiment_id])


def child(uri, driver):
    client, all_runs = runs(uri)
    (run,) = [r for r in all_runs if r.data.tags.get("driver") == driver]
    return client, run, Path(client.download_artifacts(run.info.run_id, ""))


def test_one_parent_with_a_child_per_driver_and_seed(smoke_store):
    _, all_runs = runs(smoke_store)
    parents = [r for r in all_runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("kind") == "cell"]
    assert len(parents) == 1 and len(children) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in all_runs)
    tags = {r.data.tags["driver"]: r.data.tags for r in children}
    assert (tags["mas"]["lambda"], tags["mas"]["lambda_source"], tags["mas"]["seed"]) == ("4.5", "default", "0")
    assert tags["none"]["lambda"] == "0.0"


def test_progress_without_a_terminal_is_a_line_per_finished_cell(smoke_sweep):
    """stderr a pipe, as in `run … > run.log 2>&1 &`: no bar, a start line, then per cell driver, seed, ACC (the
    run's own metric), wall time, cells done/total and the time left."""
    uri, stderr = smoke_sweep
    assert "\r" not in stderr and "task/s" not in stderr and "s/task" not in stderr  # no tqdm bar
    (sweep,) = [r for r in runs(uri)[1] if r.data.tags.get("kind") == "sweep"]
    assert f"sweep {sweep.info.run_id} in experiment pmnist-smoke of {uri}: 2 cells (drivers mas, none; seeds 0)" \
        in stderr
    lines = re.findall(r"^cell (\d)/2 finished: (\w+) seed 0, ACC (\d\.\d{4}), (\d+\.\d) s; (.*)$", stderr, re.M)
    assert [(done, driver) for done, driver, *_ in lines] == [("1", "mas"), ("2", "none")]
    acc = {r.data.tags["driver"]: r.data.metrics["ACC"] for r in runs(uri)[1] if r.data.tags.get("kind") == "cell"}
    assert all(float(value) == pytest.approx(acc[driver], abs=5e-5) for _, driver, value, _, _ in lines)
    assert all(float(seconds) > 0 for *_, seconds, _ in lines)
    assert re.fullmatch(r"about \d+\.\d s left", lines[0][4]) and lines[1][4] == "all done"


def test_progress_on_a_terminal_is_the_bar_alone():
    """A real pseudo-terminal: tqdm's bar as before, none of the log lines."""
    import fcntl
    import pty
    import struct
    import termios

    from benchmark.progress import Progress

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    with os.fdopen(follower, "w") as terminal:
        progress = Progress("cell", total=2, steps_per_item=3, stream=terminal)
        progress.say("a line for logs only")
        for _ in range(3):
            progress.step()
        progress.item_done("finished: mas seed 0, ACC 0.5000, 1.0 s")
        progress.close()
    shown = b""
    while True:  # one read may return only the first chunk the pty hands over; after the close it ends in EIO
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    shown = shown.decode()
    assert "3/6" in shown and "task" in shown
    assert "a line for logs only" not in shown and "finished: mas" not in shown


def test_the_experiment_says_what_its_runs_are(smoke_store):
    """The MLflow UI shows an experiment's note (tag mlflow.note.content) above its runs; its first line is what
    shows before it is expanded, so it says where the runs are."""
    from benchmark.experiment_notes import RUNS_VIEW

    note = MlflowClient(smoke_store).get_experiment_by_name("pmnist-smoke").tags["mlflow.note.content"]
    assert note.startswith(RUNS_VIEW + "\n\n**Protocol `smoke`**: permuted MNIST, 3 tasks")
    assert "MLP with hidden layers 32-16" in note and "1000 training images" in note and "named `smoke-sweep`" in note
    assert "*Group by* → Tags → `driver`" in note and "metric `ACC`" in note


def test_an_experiment_note_is_written_once_and_never_over_a_users(store_uri):
    from tracking import Store

    store = Store(store_uri)
    store.experiment_id("made-before-notes")
    assert store.experiment_note("made-before-notes") is None
    store.experiment_id("made-before-notes", "what the runs are")  # an old experiment gets its note
    assert store.experiment_note("made-before-notes") == "what the runs are"
    MlflowClient(store_uri).set_experiment_tag(store.experiment_id("made-before-notes"), "mlflow.note.content",
                                               "my own words")
    store.start_run("made-before-notes", "r", tags={}, experiment_description="what the runs are")
    assert store.experiment_note("made-before-notes") == "my own words"


def test_artifact_layout(smoke_store):
    _, _, root = child(smoke_store, "mas")
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    expected = {"config.json", "permutations.npy", "importance_samples.npy", "accuracy_matrix.csv",
                "validation_accuracy_matrix.csv", "loss_matrix.csv", "correlations.csv"}
    expected |= {f"tasks/task_{t:02d}/{f}" for t in range(3) for f in ("state_dict.safetensors",
                                                                         "importances.safetensors")}
    assert files == expected

    config = json.loads((root / "config.json").read_text())
    assert (config["driver"], config["seed"], config["lambda"], config["protocol"]) == ("mas", 0, 4.5, "smoke")
    assert config["model"]["leaky_relu_slope"] == 0.01 and config["training"]["optimizer"] == "adam"

    np.testing.assert_array_equal(np.load(root / "permutations.npy", allow_pickle=False), draw_permutations(3, 0))
    np.testing.assert_array_equal(np.load(root / "importance_samples.npy", allow_pickle=False),
                                  np.arange(59500, 59700))


def test_accuracy_matrix_and_metrics(smoke_store):
    client, run, root = child(smoke_store, "mas")
    R = pd.read_csv(root / "accuracy_matrix.csv")
    assert list(R.columns) == ["after_task", "task_0", "task_1", "task_2"] and len(R) == 3
    values = R.drop(columns="after_task").to_numpy()
    assert ((values >= 0) & (values <= 1)).all()
    assert run.data.metrics["ACC"] == pytest.approx(values[-1].mean())
    assert run.data.metrics["BWT"] == pytest.approx(np.mean([values[2, j] - values[j, j] for j in range(2)]))
    history = client.get_metric_history(run.info.run_id, "test_acc")
    assert [m.step for m in history] == [0, 1, 2]
    assert history[1].value == pytest.approx(values[1, :2].mean())


def test_correlations_table(smoke_store):
    _, _, root = child(smoke_store, "mas")
    c = pd.read_csv(root / "correlations.csv")
    assert list(c.columns) == COLUMNS
    # 3 tasks × 3 layers × {weight, bias, all} × {accumulated, increment} × (6 paper pairs + 7 more)
    # × {pearson, spearman, jaccard_top10}
    assert len(c) == 3 * 3 * 3 * 2 * 13 * 3
    assert set(c["method"]) == {"pearson", "spearman", "jaccard_top10"}
    assert set(c["layer"]) == {"fc1", "fc2", "fc3"} and set(c["kind"]) == {"accumulated", "increment"}
    assert set(zip(c.estimator_a, c.estimator_b)) >= {("fis", "mas"), ("fis", "mas^2"), ("sqrt(fis)", "mas")}
    assert c["value"].dropna().between(-1 - 1e-9, 1 + 1e-9).all()
    # after task 0 nothing has been accumulated yet beyond the task itself
    first = c[c.task == 0].pivot_table(index=["layer", "param", "estimator_a", "estimator_b", "method"],
                                       columns="kind", values="value")
    np.testing.assert_allclose(first["accumulated"], first["increment"])


def test_state_dicts_reproduce_the_accuracies_and_losses(smoke_store, mnist):
    _, _, root = child(smoke_store, "mas")
    config = load_config("smoke")
    scenario = make_scenario(make_splits(config.data, mnist), config.data.tasks, seed=0)
    R = pd.read_csv(root / "accuracy_matrix.csv").drop(columns="after_task").to_numpy()
    L = pd.read_csv(root / "loss_matrix.csv").drop(columns="after_task").to_numpy()
    for t in range(3):
        model = make_mlp(config.model)
        model.load_state_dict(load_file(root / f"tasks/task_{t:02d}/state_dict.safetensors"))
        model.eval()
        measured = [accuracy(model, scenario.inputs(scenario.test, j), scenario.test.y) for j in range(3)]
        np.testing.assert_allclose(measured, R[t])
        losses = [mean_loss(model, scenario.inputs(scenario.test, j), scenario.test.y) for j in range(3)]
        np.testing.assert_allclose(losses, L[t], rtol=1e-5)


def test_stored_importances_are_each_tasks_own(smoke_store, mnist):
    _, _, root = child(smoke_store, "mas")
    config = load_config("smoke")
    scenario = make_scenario(make_splits(config.data, mnist), config.data.tasks, seed=0)
    estimators = make_estimators(config)
    for t in range(3):
        stored = load_file(root / f"tasks/task_{t:02d}/importances.safetensors")
        assert set(stored) == {f"{e}.{p}" for e in config.estimators.observe for p in PARAMS}
        assert all(v.dtype == torch.float32 for v in stored.values())
        model = make_mlp(config.model)
        model.load_state_dict(load_file(root / f"tasks/task_{t:02d}/state_dict.safetensors"))
        x, y = scenario.inputs(scenario.importance, t), scenario.importance.y
        for name in ("fis", "mas", "sig", "fis_exact", "fis_sampled", "fis_batched", "abs_fisher"):
            # recomputable from the stored parameters alone (fis_sampled: from the run's seed and the task)
            estimators[name].begin_task(model)
            recomputed = estimators[name].importance(model, x, y)
            for p in PARAMS:
                torch.testing.assert_close(stored[f"{name}.{p}"], recomputed[p].float(), rtol=1e-5, atol=1e-9)
        assert all(stored[f"si.{p}"].abs().sum() > 0 for p in PARAMS)  # SI saw real parameter changes
        assert all(stored[f"sos.{p}"].min() >= 0 and stored[f"sos.{p}"].sum() > 0 for p in PARAMS)


def test_default_stores_importances_of_the_last_task_only(store_uri):
    done = run_cli("--protocol", "smoke", "--drivers", "sig", uri=store_uri)
    assert done.returncode == 0, done.stderr
    _, _, root = child(store_uri, "sig")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("importances.safetensors")) == [
        "tasks/task_02/importances.safetensors"]


def test_same_seed_same_results(mnist):
    from benchmark.loop import run_sequence

    config = load_config("smoke")
    scenario = make_scenario(make_splits(config.data, mnist), config.data.tasks, seed=7)
    first, second = (list(run_sequence(config, "si", 0.25, 7, scenario)) for _ in range(2))
    for a, b in zip(first, second):
        assert a.test_accuracy == b.test_accuracy
        for est in config.estimators.observe:
            for p in PARAMS:
                assert torch.equal(a.increments[est][p], b.increments[est][p])


def test_diverging_cell_is_marked_failed_and_the_sweep_goes_on(store_uri, tmp_path):
    config = tmp_path / "explode.toml"
    config.write_text((Path(__file__).parents[1] / "benchmark/protocols/smoke.toml").read_text()
                      .replace("lr = 0.001", "lr = 1e30"))
    code = main(["run", "--config", str(config), "--drivers", "none,sig", "--tracking-uri", store_uri,
                 "--data-dir", DATA_DIR])
    assert code == 1
    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("pmnist-explode")
    cells = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("kind") == "cell"]
    assert len(cells) == 2
    assert all(r.info.status == "FAILED" and "loss became" in r.data.tags["failure_reason"] for r in cells)


def test_sigterm_marks_the_interrupted_run_killed(store_uri):
    """A real process, a real signal: the running cell and the sweep end KILLED, not RUNNING forever."""
    import signal
    import time

    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR, "MLFLOW_TRACKING_URI": store_uri}
    process = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--protocol", "quick", "--drivers", "none"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    client = MlflowClient(store_uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the cell has started training
        experiment = client.get_experiment_by_name("pmnist-quick")
        cells = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("kind") == "cell"] \
            if experiment else []
        if cells:
            break
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("benchmark: interrupted")
    statuses = {r.data.tags["kind"]: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert statuses == {"sweep": "KILLED", "cell": "KILLED"}
