"""MLflow behind two small classes: Store (experiments, runs) and Run (what one run records)."""

import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100


class StoreError(Exception):
    """The tracking store cannot be opened or written."""


def resolve_tracking_uri(flag: str | None = None) -> str:
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


class Store:
    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        db = _sqlite_path(uri)
        # a local sqlite store keeps its artifacts beside the database (mlruns/artifacts by default)
        self.artifact_root = (db.resolve().parent / "artifacts").as_uri() if db else None
        try:
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
                if not os.access(db.parent, os.W_OK):
                    raise PermissionError(f"{db.parent} is not writable")
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)  # opens (and on first use creates) the store
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StoreError(f"cannot open tracking store {uri}: {reason}") from None

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = f"{self.artifact_root}/{name}" if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    def start_run(self, experiment: str, name: str, tags: dict[str, str], parent: "Run | None" = None) -> "Run":
        tags = {k: str(v) for k, v in tags.items()}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.id
        run = self.client.create_run(self.experiment_id(experiment), tags=tags, run_name=name)
        return Run(self.client, run.info.run_id)


class Run:
    def __init__(self, client, run_id: str):
        self.client = client
        self.id = run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """All values in batches: one call per 1000 values instead of one per value."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.id, metrics=items[i:i + MAX_METRICS_PER_BATCH])

    def _log_bytes(self, data: bytes, path: str) -> None:
        directory, filename = os.path.split(path)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / filename
            local.write_bytes(data)
            self.client.log_artifact(self.id, str(local), artifact_path=directory or None)

    def log_json(self, obj, path: str) -> None:
        self._log_bytes(json.dumps(obj, indent=2, sort_keys=True).encode(), path)

    def log_text(self, text: str, path: str) -> None:
        self._log_bytes(text.encode(), path)

    def log_array(self, array: np.ndarray, path: str) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self._log_bytes(buffer.getvalue(), path)

    def log_tensors(self, tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None):
        directory, filename = os.path.split(path)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / filename
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(local), metadata)
            self.client.log_artifact(self.id, str(local), artifact_path=directory or None)

    def finish(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.id, status=status)
