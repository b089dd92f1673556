"""`--executor ray`: a sweep's cells and a study's trials spread over a Ray cluster. The only module that imports
ray, and only when that executor is chosen.

The head (the machine running `python -m benchmark`) resolves everything a cell depends on — its config dict, λ,
device — and hands each Ray task plain data: the tracking URI, the sweep's run id, the protocol as a dict, the
estimator plugins to load, where the data lies. The task, on whichever machine Ray places it, loads the data, opens
the same tracking store and records its cells as children of the head's sweep, as a local run does; results never
travel through Ray. Resuming by config hash therefore works across machines: the hash is computed on the head.

A worker that dies mid-cell (killed, out of memory, its machine lost) cannot mark its own runs. Every run a task
starts carries a token of that task (tag `ray_task`) and the machine and process that ran it (`worker_host`,
`worker_pid`); by the token the head — or the task's retry — finds what the dead worker left RUNNING and marks it
FAILED with the reason.
"""

import io
import logging
import os
import platform
import signal
import socket
import uuid

from benchmark.config import Config, parse_config
from benchmark.environment import experiment_name
from benchmark.errors import UsageError, first_line
from benchmark.progress import Progress
from benchmark.scenario import load_splits, make_task_sequence
from benchmark.sweep import RunningSweep, run_group
from tracking import Store

RETRIED = "Ray worker died; retried"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    return ray


def task_device(device_flag: str, gpus: float) -> str:
    """Where the tasks train: on CUDA if each gets a GPU, else on CPU — whatever this machine, the head, has.
    device_flag: --device (auto, cpu, cuda). Named as a local run records it (its data's device), so that either
    resumes the other's cells: a task sees the GPUs Ray gives it from cuda:0 on."""
    if gpus > 0 and device_flag == "cpu":
        raise UsageError(f"--device cpu with --ray-gpus {gpus:g}: drop one of them")
    if gpus == 0 and device_flag == "cuda":
        raise UsageError("--device cuda with --executor ray needs --ray-gpus > 0: the GPUs each task gets, e.g. 1, or "
                         "0.5 for two tasks on one GPU")
    return "cuda:0" if gpus > 0 else "cpu"


def connect(address: str | None, cpus: float, gpus: float) -> None:
    """Join the Ray cluster whose head is at address (HOST:PORT), or with None start one on this machine (or join
    the one `ray start` runs here, or $RAY_ADDRESS's). A UsageError within seconds if nothing answers at address —
    ray.init itself retries a closed port for minutes — or if no node has the `cpus` and `gpus` a task asks for:
    Ray would wait for one forever."""
    ray = import_ray()
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--ray-address {address!r}: expected HOST:PORT of the Ray head (ray start --head "
                             "--port=PORT)")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e})") from None
    ours = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:  # a version mismatch, a port that is not a Ray head's, …: Ray says which its own way
        raise UsageError(f"cannot join the Ray cluster{' at ' + address if address else ''}: {first_line(e)}") from None
    finally:
        signal.signal(signal.SIGTERM, ours)  # ray.init sets its own (sys.exit); ours ends the runs KILLED
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        raise UsageError(f"no node of the Ray cluster has CPU {cpus:g} and GPU {gpus:g} for a task "
                         f"({cluster_line(ray)}): lower --ray-cpus or --ray-gpus, or start a node that has them")


def cluster_line(ray) -> str:
    resources, nodes = ray.cluster_resources(), len(ray.nodes())
    return (f"Ray cluster: {nodes} node{'s' if nodes > 1 else ''}, CPU {resources.get('CPU', 0):g}, GPU "
            f"{resources.get('GPU', 0):g}")


def absolute(uri_or_path: str) -> str:
    """A relative sqlite URI or journal path as an absolute one: a worker's working directory is not the head's."""
    if uri_or_path.startswith("sqlite:///"):
        return "sqlite:///" + os.path.abspath(uri_or_path[len("sqlite:///"):])
    return uri_or_path if "://" in uri_or_path else os.path.abspath(uri_or_path)


def protocol_job(config: Config, data_dir: str, download: bool, device: str, tracking_uri: str, cpus: float) -> dict:
    """What every task needs to rebuild the protocol and its data on its worker; `threads`: torch's threads there,
    the task's share of the node's cores (by default torch takes every core, and tasks side by side on one node
    would spin against each other)."""
    from benchmark import plugins

    return {"protocol": config.protocol, "config": config.to_dict(), "tracking_uri": absolute(tracking_uri),
            "plugins": [p["spec"] for p in plugins.provenance().values()], "data_dir": os.path.abspath(data_dir),
            "download": download, "device": device, "threads": max(1, round(cpus))}


def outcome(ray, ref) -> tuple[dict | None, str]:
    """A finished task's result, or why it failed: (result, "") or (None, reason)."""
    try:
        return ray.get(ref), ""
    except ray.exceptions.RayTaskError as e:  # the task raised: its own exception says why
        return None, f"the Ray task failed: {first_line(e.cause)}"
    except ray.exceptions.RayError as e:  # the worker process or its machine went away
        return None, f"Ray worker died: {first_line(e)}"


def wait_for(ray, tasks: dict, finished, store: Store, experiment: str, storage=None) -> None:
    """Call finished(tasks[ref], result, reason) as each task ends (see outcome); tasks[ref] starts with the task's
    token. Whatever stops the waiting (Ctrl-C, a store that fails) cancels the tasks still running, so that none goes
    on writing to the store, and ends what they left RUNNING: KILLED after Ctrl-C, else FAILED."""
    waiting = list(tasks)
    try:
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1, timeout=1.0)  # not forever: signals get through
            for ref in done:
                finished(tasks[ref], *outcome(ray, ref))
    except BaseException as e:
        if waiting:
            for ref in waiting:
                ray.cancel(ref, force=True)
            ray.wait(waiting, num_returns=len(waiting), timeout=30)
        for ref in waiting:
            mark_left_running(store, experiment, tasks[ref][0], f"{type(e).__name__} on the Ray head: its task was "
                              "cancelled", "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", storage)
        raise


class RayExecutor:
    """An executor (benchmark.sweep.Executor): each group of cells one Ray task, with `cpus` and `gpus` of the
    cluster's resources (fractions share a device), retried up to `max_retries` times when its worker dies."""

    def __init__(self, data_dir: str, download: bool, device: str, cpus: float = 1.0, gpus: float = 0.0,
                 max_retries: int = 1):
        self.data_dir, self.download, self.device = data_dir, download, device
        self.cpus, self.gpus, self.max_retries = cpus, gpus, max_retries

    def __call__(self, groups: list[list[dict]], sweep: RunningSweep) -> dict[tuple[str, int], str]:
        ray = import_ray()
        train = ray.remote(train_group).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries)
        common = {**protocol_job(sweep.config, self.data_dir, self.download, self.device, sweep.store.uri,
                                 self.cpus),
                  "experiment": sweep.experiment, "parent": sweep.parent.id}
        sweep.progress.say(f"{cluster_line(ray)}; {len(groups)} tasks of at most {max(map(len, groups), default=0)} "
                           f"cells, each with CPU {self.cpus:g}, GPU {self.gpus:g}")
        sweep.progress.describe(f"{len(groups)} Ray tasks")
        tasks = {}
        for group in groups:
            token = uuid.uuid4().hex
            tasks[train.remote({**common, "token": token, "cells": group})] = (token, group)
        statuses = {}
        tasks_per_cell = sweep.config.data.tasks  # the head's bar never saw a cell's tasks: each catches up at once

        def finished(task: tuple[str, list[dict]], result: dict | None, reason: str) -> None:
            token, group = task
            if result is None:
                result = failed_group(sweep, token, group, reason)
            for driver, seed, status in result["statuses"]:
                statuses[(driver, seed)] = status
            for line in result["lines"]:
                where = f" ({result['worker']})" if result["worker"] else ""
                sweep.progress.item_done(line + where, steps_skipped=tasks_per_cell)

        wait_for(ray, tasks, finished, sweep.store, sweep.experiment)
        return statuses


def failed_group(sweep: RunningSweep, token: str, group: list[dict], reason: str) -> dict:
    """A task that ended in an error: its cells left RUNNING become FAILED with the reason; a cell that finished
    before stays FINISHED. The same shape as train_group's result."""
    mark_left_running(sweep.store, sweep.experiment, token, reason)
    finished = {(r.tags["driver"], int(r.tags["seed"]))
                for r in sweep.store.find_runs(sweep.experiment, kind="cell", status="FINISHED", ray_task=token)}
    statuses = [(c["driver"], c["seed"], "FINISHED" if (c["driver"], c["seed"]) in finished else "FAILED")
                for c in group]
    lines = [f"{'finished' if status == 'FINISHED' else 'FAILED'}: {driver} seed {seed}"
             + ("" if status == "FINISHED" else f", {reason}") for driver, seed, status in statuses]
    return {"statuses": statuses, "lines": lines, "worker": ""}


def mark_left_running(store: Store, experiment: str, token: str, reason: str, status: str = "FAILED",
                      storage=None) -> None:
    """The runs a task left RUNNING, its worker dead or cancelled: `status`, with the reason; with `storage`, a
    trial's Optuna trial FAIL as well, so that the study never counts it."""
    for left in store.end_left_running(experiment, status, reason, ray_task=token):
        if storage is not None and left.tags.get("kind") == "trial":
            fail_trial(storage, left.tags["study"], int(left.tags["trial"]))


def fail_trial(storage, study: str, number: int) -> None:
    from optuna.trial import TrialState

    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study), number)
    if storage.get_trial(trial_id).state == TrialState.RUNNING:  # it may have ended before its MLflow run did
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


# On the workers


class WorkerStore(Store):
    """The tracking store as a Ray task sees it: every run it starts records the task's token and which machine and
    process ran it."""

    def __init__(self, uri: str, token: str):
        super().__init__(uri)
        self.task_tags = {"ray_task": token, "worker_host": platform.node(), "worker_pid": os.getpid()}

    def start_run(self, experiment, name, tags, parent=None, experiment_description=None):
        return super().start_run(experiment, name, {**tags, **self.task_tags}, parent, experiment_description)


class KeptLines(Progress):
    """A sweep's progress inside a Ray task: nothing printed (a worker's stderr goes to a log on its machine); each
    finished cell's line kept for the head to print."""

    def __init__(self):
        super().__init__("cell", total=0, stream=io.StringIO())
        self.finished: list[str] = []

    def item_done(self, what: str, steps_skipped: int = 0) -> None:
        self.finished.append(what)


def worker_setup(job: dict) -> tuple[Config, dict]:
    """The head's protocol and its data, rebuilt on this worker: (config, splits by dataset)."""
    import torch

    from benchmark import plugins

    for spec in job["plugins"]:
        plugins.load(spec, origin="loaded by the Ray head")
    config = parse_config({k: v for k, v in job["config"].items() if k != "protocol"}, job["protocol"],
                          source="the Ray head's protocol")
    torch.set_num_threads(job["threads"])
    if job["device"] == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device on {platform.node()}")
    return config, load_splits(config.data, job["data_dir"], job["download"], job["device"])


def train_group(job: dict) -> dict:
    """A Ray task: one group of cells trained together (experiment.run_group) and recorded under the head's sweep.
    A retry first marks what its dead predecessor left RUNNING, and trains only the cells it did not finish.
    Returns each cell's (driver, seed, status), the finished cells' progress lines and which worker ran them."""
    store = WorkerStore(job["tracking_uri"], job["token"])
    mark_left_running(store, job["experiment"], job["token"], RETRIED)
    done_before = {(r.tags["driver"], int(r.tags["seed"]))
                   for r in store.find_runs(job["experiment"], kind="cell", status="FINISHED", ray_task=job["token"])}
    config, splits = worker_setup(job)
    cells = [c for c in job["cells"] if (c["driver"], c["seed"]) not in done_before]
    progress = KeptLines()
    statuses = {(driver, seed): "FINISHED" for driver, seed in done_before}
    if cells:
        scenarios = [make_task_sequence(config.data, splits, c["seed"]) for c in cells]
        trained = run_group(store, job["experiment"], store.open_run(job["parent"]), config, cells, scenarios,
                            progress)
        statuses.update({(c["driver"], c["seed"]): status for c, status in zip(cells, trained)})
    lines = [f"finished before a retry: {driver} seed {seed}" for driver, seed in sorted(done_before)]
    return {"statuses": [(c["driver"], c["seed"], statuses[(c["driver"], c["seed"])]) for c in job["cells"]],
            "lines": progress.finished + lines, "worker": f"{platform.node()} pid {os.getpid()}"}


# tune --executor ray


def tune_on_cluster(store: Store, storage, storage_url: str, config: Config, drivers: list[str], trials: int,
                    workers: int, seeds: list[int], command: str, sampler_seed: int | None, data_dir: str,
                    download: bool, device: str, cpus: float = 1.0, gpus: float = 0.0) -> list[str]:
    """Each driver's study tuned by `workers` Ray tasks sharing its storage, `trials` trials in all between them.
    Returns why each failed task failed (empty if none did)."""
    ray = import_ray()
    tune = ray.remote(tune_share).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    common = {**protocol_job(config, data_dir, download, device, store.uri, cpus), "storage_url": absolute(storage_url),
              "seeds": seeds, "command": command}
    shares = [trials // workers + (k < trials % workers) for k in range(workers)]
    tasks = {}
    for driver in drivers:
        for k, share in enumerate(s for s in shares if s):
            token = uuid.uuid4().hex
            # the same sampler seed in every worker would propose the same λ in each
            job = {**common, "token": token, "driver": driver, "trials": share,
                   "sampler_seed": None if sampler_seed is None else sampler_seed + k}
            tasks[tune.remote(job)] = (token, driver, share)
    progress = Progress("task", total=len(tasks))
    progress.say(f"{cluster_line(ray)}; {len(tasks)} tasks for the studies of {', '.join(drivers)}, {trials} trials "
                 f"per study, each task with CPU {cpus:g}, GPU {gpus:g}; a line per finished task follows")
    experiment, failures = f"{experiment_name(config)}-tuning", []

    def finished(task: tuple[str, str, int], result: dict | None, reason: str) -> None:
        token, driver, share = task
        if result is None:
            mark_left_running(store, experiment, token, reason, storage=storage)
            failures.append(f"{driver}: {reason}")
            progress.item_done(f"FAILED: {share} trials of {driver}, {reason}")
        else:
            progress.item_done(f"finished: {share} trials of study {result['study']} ({result['worker']})")

    try:
        wait_for(ray, tasks, finished, store, experiment, storage)
    finally:
        progress.close()
    return failures


def tune_share(job: dict) -> dict:
    """A Ray task: its share of a study's trials (benchmark.tuning.tune), in the storage every worker shares."""
    from benchmark import tuning

    store = WorkerStore(job["tracking_uri"], job["token"])
    config, splits = worker_setup(job)
    storage = tuning.open_storage(job["storage_url"])
    study = tuning.tune(store, storage, job["storage_url"], config, job["driver"], job["trials"], job["seeds"],
                        splits, job["command"], job["sampler_seed"])
    return {"study": study.study_name, "worker": f"{platform.node()} pid {os.getpid()}"}
