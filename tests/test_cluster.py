"""`--executor ray` with real parts: a Ray cluster started by `ray start --head` and an `mlflow server`, each a
process of its own on 127.0.0.1, and `python -m benchmark` processes that join them, as on a cluster of machines."""

import collections
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmark.cli import main
from tests.conftest import DATA_DIR

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's

# what needs Ray itself is skipped without it; the checks of the options made before Ray is imported run anyway
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")

BIN = Path(sys.executable).parent  # ray and mlflow come with the package, in the same environment
# Ray turns token authentication on for a head started where ~/.ray/auth_token exists (a local ray.init() writes one),
# and a driver then needs the token: said explicitly, the same for head and drivers whatever the home folder holds
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}
SMOKE = Path(__file__).parent.parent / "benchmark" / "protocols" / "smoke.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, as `ray stop` and Ctrl-C do; SIGKILL to the process group it leads if it outstays a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for(ready, process: subprocess.Popen, log: Path, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert process.poll() is None, f"{what} exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not ready after {seconds} s: {log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster of 2 CPUs: HOST:PORT of its head."""
    pytest.importorskip("ray")
    # Ray's sockets live under its temp dir, and a Unix socket's path is at most 107 bytes: a short one under /tmp
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port, log = free_port(), temp / "head.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [BIN / "ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", f"--dashboard-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={temp}"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=RAY_ENV)
    try:
        wait_for(lambda: "Ray runtime started" in log.read_text(), process, log, "ray start --head", 120)
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """An MLflow tracking server with its own sqlite database and artifact folder: its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port, log = free_port(), root / "server.log"
    uri = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    with open(log, "w") as out:
        process = subprocess.Popen(
            [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'm.db'}", "--artifacts-destination", str(root / "artifacts")],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(answers, process, log, "mlflow server", 120)
        yield uri
    finally:
        stop(process)


def protocol(tmp_path: Path, name: str, epochs: int = 1) -> str:
    """The smoke protocol under another name, so that each test has an experiment of its own on the server; more
    epochs make a cell last long enough to kill its worker in the middle of it."""
    path = tmp_path / f"{name}.toml"
    path.write_text(SMOKE.read_text().replace("epochs = 1\n", f"epochs = {epochs}\n"))
    return str(path)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**RAY_ENV, "BENCHMARK_DATA_DIR": DATA_DIR})


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def cells(uri: str, experiment: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], "tags.kind = 'cell'") if found else []


def by_cell(runs) -> dict[tuple[str, str], list[str]]:
    """Each (driver, seed)'s run statuses."""
    statuses = collections.defaultdict(list)
    for r in runs:
        statuses[(r.data.tags["driver"], r.data.tags["seed"])].append(r.info.status)
    return statuses


def kill_a_worker_mid_cell(uri: str, experiment: str, process: subprocess.Popen) -> str:
    """SIGKILL the Ray worker training the first cell seen RUNNING: that run's id."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        running = [r for r in cells(uri, experiment) if r.info.status == "RUNNING"]
        if running:
            os.kill(int(running[0].data.tags["worker_pid"]), signal.SIGKILL)
            return running[0].info.run_id
        time.sleep(0.1)
    raise AssertionError(f"no cell ever RUNNING: {finish(process)[1]}")


def test_sweep_records_every_cell_once_and_a_rerun_resumes(ray_head, tracking_server, tmp_path):
    args = ["run", "--config", protocol(tmp_path, "smoke-cluster"), "--drivers", "none,mas", "--seeds", "2",
            "--parallel", "2", "--executor", "ray", "--ray-address", ray_head, "--tracking-uri", tracking_server]
    code, err = finish(start(*args))
    assert code == 0, err
    assert "Ray cluster: 1 node" in err and len(re.findall(r"cell \d/4 finished: .* \(\S+ pid \d+\)", err)) == 4, err
    runs = cells(tracking_server, "pmnist-smoke-cluster")
    assert by_cell(runs) == {(d, s): ["FINISHED"] for d in ("none", "mas") for s in ("0", "1")}
    assert all(r.data.tags["worker_pid"].isdigit() and r.data.tags["worker_host"] for r in runs)
    assert len({r.data.tags["ray_task"] for r in runs}) == 2  # two groups of two cells, one Ray task each
    assert {r.data.tags["threads"] for r in runs} == {"1"}  # a task of 1 CPU trains with 1 torch thread

    code, err = finish(start(*args))
    assert code == 0, err
    assert "resuming: 4 of 4 cells already finished" in err
    assert len(cells(tracking_server, "pmnist-smoke-cluster")) == 4  # no cell started again


def test_a_killed_worker_leaves_its_cell_failed_and_a_rerun_completes_the_sweep(ray_head, tracking_server, tmp_path):
    args = ["run", "--config", protocol(tmp_path, "smoke-killed", epochs=100), "--drivers", "mas", "--seeds", "2",
            "--executor", "ray", "--ray-address", ray_head, "--ray-max-retries", "0", "--tracking-uri", tracking_server]
    process = start(*args)
    killed = kill_a_worker_mid_cell(tracking_server, "pmnist-smoke-killed", process)
    code, err = finish(process)
    assert code == 1, err
    runs = {r.info.run_id: r for r in cells(tracking_server, "pmnist-smoke-killed")}
    assert runs[killed].info.status == "FAILED"
    assert runs[killed].data.tags["failure_reason"].startswith("Ray worker died: "), runs[killed].data.tags
    assert f"FAILED: mas seed {runs[killed].data.tags['seed']}, Ray worker died" in err
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED"]

    code, err = finish(start(*args))
    assert code == 0, err
    assert "resuming: 1 of 2 cells already finished" in err
    assert {cell: "FINISHED" in statuses for cell, statuses in by_cell(
        cells(tracking_server, "pmnist-smoke-killed")).items()} == {("mas", "0"): True, ("mas", "1"): True}


def test_a_killed_worker_is_retried(ray_head, tracking_server, tmp_path):
    args = ["run", "--config", protocol(tmp_path, "smoke-retried", epochs=100), "--drivers", "mas", "--seeds", "1",
            "--executor", "ray", "--ray-address", ray_head, "--ray-max-retries", "1", "--tracking-uri", tracking_server]
    process = start(*args)
    killed = kill_a_worker_mid_cell(tracking_server, "pmnist-smoke-retried", process)
    code, err = finish(process)
    assert code == 0, err
    runs = {r.info.run_id: r for r in cells(tracking_server, "pmnist-smoke-retried")}
    assert runs[killed].info.status == "FAILED"
    assert runs[killed].data.tags["failure_reason"] == "Ray worker died; retried"
    (retry,) = [r for r in runs.values() if r.info.run_id != killed]
    assert retry.info.status == "FINISHED" and retry.data.tags["ray_task"] == runs[killed].data.tags["ray_task"]


def test_tune_workers_share_one_study(ray_head, tracking_server, tmp_path):
    import optuna

    journal = tmp_path / "optuna.journal"
    code, err = finish(start("tune", "--protocol", "smoke", "--driver", "mas", "--trials", "2", "--workers", "2",
                             "--executor", "ray", "--ray-address", ray_head, "--storage", str(journal),
                             "--tracking-uri", tracking_server))
    assert code == 0, err
    study = optuna.load_study(study_name="lambda-mas-smoke",
                              storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                                  str(journal))))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert "lambda-mas-smoke: best λ" in err and "after 2 trials" in err
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("pmnist-smoke-tuning")
    tunes = client.search_runs([experiment.experiment_id], "tags.kind = 'tune'")
    assert sorted(r.data.tags["trials_requested"] for r in tunes) == ["1", "1"]  # one run per worker, a trial each


@pytest.mark.parametrize("args, message", [
    pytest.param(["--executor", "ray", "--ray-address", "127.0.0.1:1"],
                 "--ray-address 127.0.0.1:1: no Ray cluster answers there", marks=needs_ray),
    pytest.param(["--executor", "ray", "--ray-address", "head-without-port"], "expected HOST:PORT of the Ray head",
                 marks=needs_ray),
    (["--ray-address", "127.0.0.1:1"], "--ray-address needs --executor ray"),
    (["--ray-gpus", "1"], "--ray-gpus needs --executor ray"),
    pytest.param(["--executor", "ray", "--device", "cuda"], "--device cuda with --executor ray needs --ray-gpus > 0",
                 marks=needs_ray),
    (["--executor", "ray", "--ray-gpus", "-1"], "argument --ray-gpus: must be a finite number ≥ 0, not -1"),
    (["--executor", "ray", "--ray-max-retries", "-1"], "argument --ray-max-retries: must be ≥ 0, not -1"),
    (["--executor", "dask"], "argument --executor: invalid choice: 'dask'"),
    (["--parallel", "0"], "argument --parallel: must be ≥ 1, not 0"),
])
def test_bad_input(args, message, untouched_store, capsys):
    assert main(["run", "--protocol", "smoke", "--data-dir", DATA_DIR, *args, "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("benchmark: error: ") and message in err, err


def test_a_task_no_node_has_room_for_is_a_usage_error(ray_head, untouched_store):
    code, err = finish(start("run", "--protocol", "smoke", "--executor", "ray", "--ray-address", ray_head,
                             "--ray-gpus", "1", "--tracking-uri", untouched_store))
    assert code == 2
    assert err.splitlines() == ["benchmark: error: no node of the Ray cluster has CPU 1 and GPU 1 for a task (Ray "
                                "cluster: 1 node, CPU 2, GPU 0): lower --ray-cpus or --ray-gpus, or start a node that "
                                "has them"]


def test_tune_workers_need_the_ray_executor(untouched_store, tmp_path, capsys):
    assert main(["tune", "--protocol", "smoke", "--driver", "mas", "--workers", "2", "--storage",
                 str(tmp_path / "optuna.journal"), "--tracking-uri", untouched_store]) == 2
    assert capsys.readouterr().err == "benchmark: error: --workers needs --executor ray\n"
    assert not (tmp_path / "optuna.journal").exists()


def test_without_ray_installed(untouched_store, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the package is not installed
    assert main(["run", "--protocol", "smoke", "--executor", "ray", "--tracking-uri", untouched_store]) == 2
    assert "--executor ray needs Ray: pip install -e '.[ray]'" in capsys.readouterr().err
