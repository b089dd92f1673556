"""What "Looking at the runs in MLflow" (docs/running.md) tells a new user, checked in MLflow's own UI (the version
installed, which pyproject pins to 3.x) in headless Chromium: the experiment's description is shown, the Model
training view lists the sweep, and grouping by the `driver` tag gathers the cells. Skipped without Chromium."""

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from benchmark.cli import main
from benchmark.experiment_notes import RUNS_VIEW
from tests.browser import Browser, find_chromium
from tests.conftest import DATA_DIR
from tracking import Store

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no Chromium (Debian: apt-get install chromium)")


@pytest.fixture
def mlflow_ui(initialised_store, tmp_path):
    """A smoke sweep of two drivers in a fresh store, and `mlflow ui` serving it on a free local port."""
    shutil.copy(initialised_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", "--protocol", "smoke", "--drivers", "none,sig", "--tracking-uri", uri,
                 "--data-dir", DATA_DIR]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(address, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow ui did not start") from None
                time.sleep(1)
        experiment = Store(uri).experiment_id("pmnist-smoke")
        yield f"{address}/#/experiments/{experiment}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_runs_as_readme_says(mlflow_ui):
    with Browser(find_chromium(), 1500, 1000) as browser:
        page = browser.open(f"{mlflow_ui}?workflowType=machine_learning")
        body = "document.body.innerText"
        # the note's first line, shown above the runs before it is expanded
        browser.wait_until(page, f"{body}.includes({RUNS_VIEW[:60]!r})")
        browser.wait_until(page, "[...document.querySelectorAll('a')].some(a => a.innerText.trim() === 'smoke-sweep')")
        browser.click_text(page, "Group by", within="button")  # not the note's *Group by*
        browser.click_text(page, "driver", within="[role=menu]")  # the first "driver" in the menu: under Tags
        browser.wait_until(page, f"{body}.includes('Group: none') && {body}.includes('Group: sig')")
        assert browser.evaluate(page, f"{body}.includes('Additional runs')")  # the sweep: no driver tag

        # without the toggle or the parameter MLflow 3 opens the GenAI view, which README warns of
        genai = browser.open(mlflow_ui)
        browser.wait_until(genai, f"{body}.includes('Detect Issues')")
