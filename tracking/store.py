"""MLflow behind two small classes: Store (experiments, runs) and Run (what one run records)."""

import contextlib
import inspect
import io
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the CLI imports this module before it knows whether anything will train
    import numpy as np
    import torch

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
MAX_PARAMS_PER_BATCH = 100
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows (and edits) as an experiment's or a run's description
# MLflow's and Alembic's INFO lines about creating or upgrading a store's tables: stderr carries the suite's lines
# only (its warnings and errors still come through)
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")


class StoreError(Exception):
    """The tracking store cannot be opened or written."""


def resolve_tracking_uri(flag: str | None = None) -> str:
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "benchmark"


def _empty_store_template() -> Path:
    """An empty sqlite store of the installed MLflow, made once per MLflow version and kept in the user's cache.

    MLflow creates a new sqlite store by running every schema migration since its first release, seconds of a run's
    start-up and of each test that makes a store; copying the result is milliseconds. The template holds the tables
    and the schema version only: its Default experiment is deleted, so MLflow creates that row itself when the copy
    is first opened (with the artifact location and times it would have given a store it made).
    """
    from mlflow import __version__ as mlflow_version
    from mlflow.tracking import MlflowClient

    template = _cache_dir() / f"mlflow-{mlflow_version}-empty-store.db"
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    building = template.parent / f"building-{os.getpid()}-{uuid.uuid4().hex}.db"
    try:
        MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments(max_results=1)
        with contextlib.closing(sqlite3.connect(building)) as db:
            with db:
                db.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                db.execute("DELETE FROM experiments WHERE experiment_id = 0")
        os.replace(building, template)  # whole or not at all: another process may be making the same template
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(building)
    return template


def _create_from_template(db: Path) -> None:
    """Create the store at db as a copy of the empty-store template; if anything stands in the way (no writable
    cache, no hard links on db's file system) leave db absent, and MLflow creates the store itself."""
    try:
        template = _empty_store_template()
    except Exception:  # the template is an optimisation: MLflow's own error, if any, comes when it makes the store
        return
    copy = db.parent / f".{db.name}-{os.getpid()}-{uuid.uuid4().hex}"  # made with the umask's mode, as MLflow's
    try:
        shutil.copyfile(template, copy)
        os.link(copy, db)  # fails if db exists: a store another process created meanwhile is never overwritten
    except OSError:
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(copy)


# Signals are held while a store writes: a KeyboardInterrupt raised inside an SQLite transaction leaves the
# database locked for every later write in the process — the writes that mark runs KILLED included — and one raised
# inside Optuna's journal-file lock leaves the lock half released (its next write fails).
_calls_in_progress = 0
_held_signal: int | None = None


def interrupt(signum, _frame) -> None:
    """Handler for SIGINT and SIGTERM: KeyboardInterrupt now, or as soon as the store call in progress returns."""
    global _held_signal
    if _calls_in_progress:
        _held_signal = signum
    else:
        raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM arriving inside (with `interrupt` as their handler) are raised when it ends."""
    global _calls_in_progress, _held_signal
    _calls_in_progress += 1
    try:
        yield
    finally:
        _calls_in_progress -= 1
        if _calls_in_progress == 0 and _held_signal is not None:
            signum, _held_signal = _held_signal, None
            raise KeyboardInterrupt(f"signal {signum}")


def _held(method):
    def call(*args, **kwargs):
        with signals_held():
            return method(*args, **kwargs)

    return call


def hold_signals_in(storage):
    """`storage` with every public method run to its end before a signal is raised (wrapped on the instance, so it
    stays an instance of its class): for the Optuna storage, which writes outside MLflow."""
    for name in dir(storage):
        method = getattr(storage, name)
        if not name.startswith("_") and inspect.ismethod(method):  # methods only: a callable attribute stays itself
            setattr(storage, name, _held(method))
    return storage


class _ShieldedClient:
    """An MlflowClient whose every call runs to its end before a held signal is raised."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        return _held(attribute) if callable(attribute) else attribute


@dataclass(frozen=True)
class RunRecord:
    """What a reader needs of a finished or running run, in plain Python types."""

    id: str
    name: str
    experiment: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    start_time: int  # ms since the epoch
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric


@contextlib.contextmanager
def _patient_only_later():
    """No retries for the first request: a server that is not there should be an error in seconds, not after
    MLflow's minutes of backoff; later requests keep MLflow's retries for a server that hiccups."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Store:
    def __init__(self, uri: str, must_exist: bool = False):
        """must_exist: for readers, a local sqlite store that is not there is an error, not a new store."""
        from mlflow.tracking import MlflowClient

        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = uri
        db = _sqlite_path(uri)
        if must_exist and db is not None and not db.is_file():
            raise StoreError(f"no tracking store at {db}: run `python -m benchmark run` first, or pass "
                             "--tracking-uri")
        # a local sqlite store keeps its artifacts beside the database (mlruns/artifacts by default)
        self.artifact_root = (db.resolve().parent / "artifacts").as_uri() if db else None
        try:
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)
                if not os.access(db.parent, os.W_OK):
                    raise PermissionError(f"{db.parent} is not writable")
                if not db.exists():
                    _create_from_template(db)
            self.client = _ShieldedClient(MlflowClient(tracking_uri=uri))
            with _patient_only_later():
                self.client.search_experiments(max_results=1)  # opens (and on first use creates) the store
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise StoreError(f"cannot open tracking store {uri}: {reason}") from None

    def experiment_id(self, name: str, description: str | None = None) -> str:
        """The experiment's id, the experiment created if need be. description: Markdown for the MLflow UI's note
        on the experiment (the `mlflow.note.content` tag), set if the experiment has none — never over a note a
        user has written."""
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = f"{self.artifact_root}/{name}" if self.artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location,
                                                     tags={NOTE_TAG: description} if description else None)
            except MlflowException:
                # another process (a second sweep, a Ray worker) created it since we looked: use theirs
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if description and not experiment.tags.get(NOTE_TAG):  # an experiment made before notes were written
            self.client.set_experiment_tag(experiment.experiment_id, NOTE_TAG, description)
        return experiment.experiment_id

    def experiment_note(self, name: str) -> str | None:
        experiment = self.client.get_experiment_by_name(name)
        return experiment.tags.get(NOTE_TAG) if experiment is not None else None

    def start_run(self, experiment: str, name: str, tags: dict[str, str], parent: "Run | None" = None,
                  experiment_description: str | None = None) -> "Run":
        tags = {k: str(v) for k, v in tags.items()}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.id
        experiment_id = self.experiment_id(experiment, experiment_description)
        run = self.client.create_run(experiment_id, tags=tags, run_name=name)
        return Run(self.client, run.info.run_id)

    def open_run(self, run_id: str) -> "Run":
        """An existing run, to add artifacts to it (the report onto its sweep)."""
        return Run(self.client, run_id)

    def find_runs(self, experiment: str | None = None, run_ids: list[str] | None = None, status: str | None = None,
                  max_results: int = 50000, **tags: str) -> list[RunRecord]:
        """Runs of an experiment (of every experiment if None; or the given ids) whose tags equal the given values
        (and with the given status: RUNNING, FINISHED, FAILED, KILLED), newest first, at most max_results."""
        if run_ids is not None:
            records = []
            for run_id in run_ids:
                try:
                    records.append(self._record(self.client.get_run(run_id)))
                except Exception:
                    raise StoreError(f"no run {run_id!r} in {self.uri}") from None
            return [r for r in records if all(r.tags.get(k) == v for k, v in tags.items())
                    and status in (None, r.status)]
        if experiment is None:
            experiment_ids = [e.experiment_id for e in self.client.search_experiments()]
        else:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                return []
            experiment_ids = [found.experiment_id]
        conditions = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
        conditions += [f"attributes.status = '{status}'"] if status else []
        query = " and ".join(conditions)
        runs = self.client.search_runs(experiment_ids, filter_string=query, max_results=max_results,
                                       order_by=["attributes.start_time DESC"])
        return [self._record(run, experiment) for run in runs]

    def end_left_running(self, experiment: str, status: str, reason: str | None = None,
                         **tags: str) -> list[RunRecord]:
        """Mark the experiment's RUNNING runs with these tags `status` (FAILED or KILLED), with the reason as tag
        failure_reason: what a process that was interrupted, or died, left behind. Returns them as they were."""
        left = self.find_runs(experiment, status="RUNNING", **tags)
        for record in left:
            run = self.open_run(record.id)
            if reason is not None:
                run.set_tags({"failure_reason": reason})
            run.finish(status)
        return left

    def experiments(self) -> list[str]:
        return [e.name for e in self.client.search_experiments()]

    def _record(self, run, experiment: str | None = None) -> RunRecord:
        if experiment is None:
            experiment = self.client.get_experiment(run.info.experiment_id).name
        return RunRecord(id=run.info.run_id, name=run.info.run_name, experiment=experiment,
                         status=run.info.status, start_time=run.info.start_time, tags=dict(run.data.tags),
                         metrics=dict(run.data.metrics))

    def download(self, run_id: str, path: str, destination: str | Path) -> Path:
        """Copy a run's artifact file or folder to destination/<its folder in the run>; return the local path.
        Keeping the run's folders matters: MLflow writes an artifact under its base name, so two tasks'
        importances.safetensors downloaded into one folder would be one file, and the tensors safetensors
        memory-maps from the first would read the second's values."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file is noise
        folder = Path(destination) / Path(path).parent
        folder.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(folder)))


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

    def log_array(self, array: "np.ndarray", path: str) -> None:
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self._log_bytes(buffer.getvalue(), path)

    def log_tensors(self, tensors: "dict[str, torch.Tensor]", path: str, metadata: dict[str, str] | None = None):
        from safetensors.torch import save_file

        directory, filename = os.path.split(path)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / filename
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(local), metadata)
            self.client.log_artifact(self.id, str(local), artifact_path=directory or None)

    def log_dir(self, local_dir: str | Path, path: str) -> None:
        self.client.log_artifacts(self.id, str(local_dir), artifact_path=path)

    def finish(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.id, status=status)
