"""What the head hands a Ray task, as frozen dataclasses: plain data that pickles, read by name on the worker."""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RaySettings:
    """--ray-address, --ray-cpus, --ray-gpus, --ray-max-retries and --workers."""

    address: str | None = None  # HOST:PORT of the head to join; None: $RAY_ADDRESS, `ray start` here, or a new one
    cpus: float = 1.0  # per task
    gpus: float = 0.0  # per task; a fraction shares a device
    max_retries: int = 1  # a sweep's task run again this often when its worker dies
    workers: int = 1  # tune: the Ray tasks sharing each study's trials


@dataclass(frozen=True)
class DataSource:
    """Where a worker finds the data, and the device its task trains on."""

    data_dir: str  # absolute: a worker's working directory is not the head's
    download: bool
    device: str  # "cpu" or "cuda:0" (each task sees the GPUs Ray gives it from cuda:0 on)


@dataclass(frozen=True)
class ProtocolJob:
    """What every task needs to rebuild the protocol and its data on its worker."""

    protocol: str
    config: dict  # Config.to_dict()
    tracking_uri: str  # absolute, as the workers reach it
    plugins: tuple[str, ...]  # estimator plugins to load, "module:Class"
    data: DataSource
    threads: int  # torch's threads on the worker: the task's share of the node's cores


@dataclass(frozen=True)
class TrainJob:
    """A sweep's Ray task: a group of cells trained stacked, recorded under the head's sweep."""

    protocol: ProtocolJob
    experiment: str
    parent: str  # the sweep's run id
    token: str  # tag ray_task of every run the task starts
    cells: tuple[dict, ...]  # resolved cell configs (sweep.cell_config)


@dataclass(frozen=True)
class TuneJob:
    """A study's Ray task: its share of the study's trials, in the storage every worker shares."""

    protocol: ProtocolJob
    storage_url: str
    driver: str
    trials: int
    seeds: tuple[int, ...]  # the tuning seeds
    command: str
    sampler_seed: int | None
    token: str
    pruning: bool
    lambda_range: tuple[float, float]  # λ log-uniform over [low, high]


def absolute(uri_or_path: str) -> str:
    """A relative sqlite URI or journal path as an absolute one: a worker's working directory is not the head's."""
    if uri_or_path.startswith("sqlite:///"):
        return "sqlite:///" + os.path.abspath(uri_or_path[len("sqlite:///"):])
    return uri_or_path if "://" in uri_or_path else os.path.abspath(uri_or_path)
