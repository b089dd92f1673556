import os
import shutil
from pathlib import Path

import pytest

DATA_DIR = os.environ.get("BENCHMARK_DATA_DIR", "data")


def pytest_configure(config):
    """BENCHMARK_TEST_MKLDNN=off runs the in-process tests with oneDNN's CPU kernels switched off: the suite must pass
    both ways, since which kernel a CPU takes (and how exact it is in float32) is no property of this project."""
    if os.environ.get("BENCHMARK_TEST_MKLDNN") == "off":
        import torch

        torch.backends.mkldnn.enabled = False


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST through torchvision: BENCHMARK_DATA_DIR (CI points it at ../shared/data), else ./data,
    downloaded there by torchvision if missing."""
    from benchmark.scenario import load_dataset

    return load_dataset(DATA_DIR, download=True)


@pytest.fixture(scope="session")
def initialised_store(tmp_path_factory) -> Path:
    """A real MLflow sqlite store, created once; tests copy the file."""
    from tracking import Store

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    Store(f"sqlite:///{path}")
    return path


@pytest.fixture
def store_uri(initialised_store, tmp_path) -> str:
    path = tmp_path / "mlruns" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(initialised_store, path)
    return f"sqlite:///{path}"


@pytest.fixture
def untouched_store(tmp_path):
    """A store URI whose database does not exist yet: after a rejected command it still must not."""
    db = tmp_path / "store" / "mlflow.db"
    yield f"sqlite:///{db}"
    assert not db.parent.exists(), "a rejected command wrote to the store"
