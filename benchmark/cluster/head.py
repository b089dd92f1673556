"""The head's side of `--executor ray`: join the cluster, hand out the tasks (RayExecutor for a sweep's cells,
RayTuner for a study's trials), wait for them and account for every one that failed."""

import logging
import signal
import socket
import uuid

from benchmark.cluster.jobs import DataSource, ProtocolJob, RaySettings, TrainJob, TuneJob, absolute
from benchmark.cluster.leftovers import mark_left_running
from benchmark.cluster.worker import train_group, tune_share
from benchmark.config import Config
from benchmark.environment import experiment_name
from benchmark.errors import UsageError, first_line
from benchmark.progress import Progress
from benchmark.sweep import RunningSweep
from benchmark.tuning import Studies
from tracking import Store


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


def connect(settings: RaySettings) -> None:
    """Join the Ray cluster whose head is at settings.address (HOST:PORT), or with None start one on this machine
    (or join the one `ray start` runs here, or $RAY_ADDRESS's). A UsageError within seconds if nothing answers at
    the address — ray.init itself retries a closed port for minutes — or if no node has the CPUs and GPUs a task
    asks for: Ray would wait for one forever."""
    ray = import_ray()
    address, cpus, gpus = settings.address, settings.cpus, settings.gpus
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


def protocol_job(config: Config, data: DataSource, tracking_uri: str, settings: RaySettings) -> ProtocolJob:
    """What every task needs to rebuild the protocol and its data on its worker; its torch threads are the task's
    share of the node's cores (by default torch takes every core, and tasks side by side on one node would spin
    against each other)."""
    from benchmark import plugins

    return ProtocolJob(protocol=config.protocol, config=config.to_dict(), tracking_uri=absolute(tracking_uri),
                       plugins=tuple(p["spec"] for p in plugins.provenance().values()),
                       data=DataSource(absolute(data.data_dir), data.download, data.device),
                       threads=max(1, round(settings.cpus)))


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
    """An executor (benchmark.sweep.Executor): each group of cells one Ray task, with settings.cpus and .gpus of the
    cluster's resources (fractions share a device), retried up to settings.max_retries times when its worker
    dies."""

    def __init__(self, data: DataSource, settings: RaySettings):
        self.data, self.settings = data, settings

    def __call__(self, groups: list[list[dict]], sweep: RunningSweep) -> dict[tuple[str, int], str]:
        ray = import_ray()
        s = self.settings
        train = ray.remote(train_group).options(num_cpus=s.cpus, num_gpus=s.gpus, max_retries=s.max_retries)
        protocol = protocol_job(sweep.config, self.data, sweep.store.uri, s)
        sweep.progress.say(f"{cluster_line(ray)}; {len(groups)} tasks of at most {max(map(len, groups), default=0)} "
                           f"cells, each with CPU {s.cpus:g}, GPU {s.gpus:g}")
        sweep.progress.describe(f"{len(groups)} Ray tasks")
        tasks = {}
        for group in groups:
            job = TrainJob(protocol, sweep.experiment, sweep.parent.id, uuid.uuid4().hex, tuple(group))
            tasks[train.remote(job)] = (job.token, group)
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


class RayTuner:
    """A tuner (benchmark.tuning.Tuner): each driver's study tuned by settings.workers Ray tasks sharing its
    storage, the trials split between them; returns why each failed task failed."""

    def __init__(self, data: DataSource, settings: RaySettings):
        self.data, self.settings = data, settings

    def __call__(self, studies: Studies) -> list[str]:
        ray = import_ray()
        s = self.settings
        tune = ray.remote(tune_share).options(num_cpus=s.cpus, num_gpus=s.gpus, max_retries=0)
        protocol = protocol_job(studies.config, self.data, studies.store.uri, s)
        shares = [studies.trials // s.workers + (k < studies.trials % s.workers) for k in range(s.workers)]
        tasks = {}
        for driver in studies.drivers:
            for k, share in enumerate(share for share in shares if share):
                # the same sampler seed in every worker would propose the same λ in each
                job = TuneJob(protocol, absolute(studies.storage_url), driver, share, tuple(studies.seeds),
                              studies.command, None if studies.sampler_seed is None else studies.sampler_seed + k,
                              uuid.uuid4().hex, studies.pruning, studies.lambda_range)
                tasks[tune.remote(job)] = (job.token, driver, share)
        progress = Progress("task", total=len(tasks))
        progress.say(f"{cluster_line(ray)}; {len(tasks)} tasks for the studies of {', '.join(studies.drivers)}, "
                     f"{studies.trials} trials per study, each task with CPU {s.cpus:g}, GPU {s.gpus:g}; a line per "
                     "finished task follows")
        experiment, failures = f"{experiment_name(studies.config)}-tuning", []

        def finished(task: tuple[str, str, int], result: dict | None, reason: str) -> None:
            token, driver, share = task
            if result is None:
                mark_left_running(studies.store, experiment, token, reason, storage=studies.storage)
                failures.append(f"{driver}: {reason}")
                progress.item_done(f"FAILED: {share} trials of {driver}, {reason}")
            else:
                progress.item_done(f"finished: {share} trials of study {result['study']} ({result['worker']})")

        try:
            wait_for(ray, tasks, finished, studies.store, experiment, studies.storage)
        finally:
            progress.close()
        return failures
