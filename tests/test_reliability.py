"""Failures as they happen: real processes, real signals, real stores."""

import collections
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmark.cli import main
from tests.conftest import DATA_DIR
from tracking import Store

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's

SMOKE = ["run", "--protocol", "smoke", "--seeds", "1"]


def start(args, uri):
    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR, "MLFLOW_TRACKING_URI": uri}
    return subprocess.Popen([sys.executable, "-m", "benchmark", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def cells(uri):
    return Store(uri).find_runs("pmnist-smoke", kind="cell")


def test_interrupted_sweep_resumes_only_the_missing_cells(store_uri):
    args = [*SMOKE, "--drivers", "none,fis,mas,si,sig"]
    process = start(args, store_uri)
    deadline = time.monotonic() + 300
    def mid_cell(found) -> bool:  # a cell finished, and the next one has trained a task of its three
        return any(c.status == "FINISHED" for c in found) and \
            any(c.status == "RUNNING" and "task_seconds" in c.metrics for c in found)

    while time.monotonic() < deadline and not mid_cell(cells(store_uri)):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # Ctrl-C while a later cell trains
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err

    before = cells(store_uri)
    statuses = collections.Counter(c.status for c in before)
    # the signal landed inside a cell: that cell KILLED with the task it reached, no RUNNING leftover
    assert statuses["KILLED"] == 1 and statuses["RUNNING"] == 0 and 1 <= statuses["FINISHED"] < 5
    (killed,) = [c for c in before if c.status == "KILLED"]
    assert killed.tags["failure_reason"].startswith("interrupted during task")
    (sweep,) = Store(store_uri).find_runs("pmnist-smoke", kind="sweep")
    assert sweep.status == "KILLED"

    again = start(args, store_uri)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"resuming: {statuses['FINISHED']} of 5 cells already finished" in err
    after = cells(store_uri)
    finished = collections.Counter(c.tags["driver"] for c in after if c.status == "FINISHED")
    assert finished == {d: 1 for d in ("none", "fis", "mas", "si", "sig")}  # nothing finished twice
    assert len(after) == len(before) + (5 - statuses["FINISHED"])
    # the resumed sweep owns the reused cells: a report on it sees all five
    latest = Store(store_uri).find_runs("pmnist-smoke", kind="sweep")[0]
    assert len(latest.tags["reused_cells"].split(",")) == statuses["FINISHED"]


def test_a_changed_configuration_is_not_resumed(store_uri):
    assert main([*SMOKE, "--drivers", "mas", "--tracking-uri", store_uri, "--data-dir", DATA_DIR]) == 0
    assert main([*SMOKE, "--drivers", "mas", "--lambda", "mas=1", "--tracking-uri", store_uri,
                 "--data-dir", DATA_DIR]) == 0
    assert sorted(c.tags["lambda"] for c in cells(store_uri)) == ["1.0", "4.5"]


def test_a_cell_without_fingerprint_is_trained_again(store_uri):
    """A cell finished by code older than the environment fingerprint (its tag removed here, as such a run never
    had it) is not reused: a resumed sweep would otherwise publish a cell nobody can verify."""
    import sqlite3

    args = [*SMOKE, "--drivers", "mas", "--tracking-uri", store_uri, "--data-dir", DATA_DIR]
    assert main(args) == 0
    (old,) = cells(store_uri)
    with sqlite3.connect(store_uri.removeprefix("sqlite:///")) as db:
        assert db.execute("DELETE FROM tags WHERE run_uuid = ? AND key = 'fingerprint'", (old.id,)).rowcount == 1
    assert main(args) == 0
    runs = cells(store_uri)
    assert len(runs) == 2 and all(r.status == "FINISHED" for r in runs)
    assert [r.tags.get("fingerprint", "") for r in runs if r.id != old.id][0] != ""
    assert main(args) == 0  # the retrained cell, with its fingerprint, is reused from now on
    assert len(cells(store_uri)) == 2


def test_two_processes_write_to_one_store_at_once(store_uri, tmp_path):
    first = start([*SMOKE, "--drivers", "none,sig"], store_uri)
    second = start([*SMOKE, "--drivers", "mas,fis"], store_uri)
    for process in (first, second):
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    runs = cells(store_uri)
    assert sorted(c.tags["driver"] for c in runs) == ["fis", "mas", "none", "sig"]
    assert all(c.status == "FINISHED" for c in runs)
    store = Store(store_uri)
    for c in runs:  # every artifact landed
        assert store.download(c.id, "correlations.csv", tmp_path / c.id).stat().st_size > 0


def test_same_seed_same_bytes_in_another_process(tmp_path, initialised_store):
    import shutil

    outputs = []
    for k in range(2):
        db = tmp_path / f"s{k}" / "mlflow.db"
        db.parent.mkdir()
        shutil.copy(initialised_store, db)
        uri = f"sqlite:///{db}"
        process = start([*SMOKE, "--drivers", "si"], uri)
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        (cell,) = cells(uri)
        store = Store(uri)
        outputs.append([store.download(cell.id, path, tmp_path / f"d{k}").read_bytes()
                        for path in ("accuracy_matrix.csv", "tasks/task_02/importances.safetensors",
                                     "tasks/task_02/state_dict.safetensors")])
    assert outputs[0] == outputs[1]


def test_unreachable_tracking_server_is_a_usage_error(capsys):
    started = time.monotonic()
    assert main([*SMOKE, "--drivers", "mas", "--tracking-uri", "http://127.0.0.1:9", "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open tracking store http://127.0.0.1:9" in err
    assert time.monotonic() - started < 60


def test_creating_a_store_writes_nothing_to_stderr(tmp_path):
    """MLflow announces a new store's tables at INFO ("Creating initial MLflow database tables..."): not our line."""
    db = tmp_path / "new" / "mlflow.db"
    done = subprocess.run([sys.executable, "-c", f"from tracking import Store; Store('sqlite:///{db}')"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert db.is_file()
    assert done.stderr == ""
