"""What a Ray task does on its worker: rebuild the head's protocol and data, then train its cells (train_group) or
its share of a study's trials (tune_share), recording into the head's tracking store."""

import io
import os
import platform

from benchmark.cluster.jobs import ProtocolJob, TrainJob, TuneJob
from benchmark.cluster.leftovers import RETRIED, mark_left_running
from benchmark.config import Config, parse_config
from benchmark.progress import Progress
from benchmark.scenario import load_splits, make_task_sequence
from benchmark.sweep import run_group
from tracking import Store


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


def worker_setup(job: ProtocolJob) -> tuple[Config, dict]:
    """The head's protocol and its data, rebuilt on this worker: (config, splits by dataset)."""
    import torch

    from benchmark import plugins

    for spec in job.plugins:
        plugins.load(spec, origin="loaded by the Ray head")
    config = parse_config({k: v for k, v in job.config.items() if k != "protocol"}, job.protocol,
                          source="the Ray head's protocol")
    torch.set_num_threads(job.threads)
    if job.data.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"no CUDA device on {platform.node()}")
    return config, load_splits(config.data, job.data.data_dir, job.data.download, job.data.device)


def worker_name() -> str:
    return f"{platform.node()} pid {os.getpid()}"


def train_group(job: TrainJob) -> dict:
    """A Ray task: one group of cells trained together (sweep.run_group) and recorded under the head's sweep.
    A retry first marks what its dead predecessor left RUNNING, and trains only the cells it did not finish.
    Returns each cell's (driver, seed, status), the finished cells' progress lines and which worker ran them."""
    store = WorkerStore(job.protocol.tracking_uri, job.token)
    mark_left_running(store, job.experiment, job.token, RETRIED)
    done_before = {(r.tags["driver"], int(r.tags["seed"]))
                   for r in store.find_runs(job.experiment, kind="cell", status="FINISHED", ray_task=job.token)}
    config, splits = worker_setup(job.protocol)
    cells = [c for c in job.cells if (c["driver"], c["seed"]) not in done_before]
    progress = KeptLines()
    statuses = {(driver, seed): "FINISHED" for driver, seed in done_before}
    if cells:
        scenarios = [make_task_sequence(config.data, splits, c["seed"]) for c in cells]
        trained = run_group(store, job.experiment, store.open_run(job.parent), config, cells, scenarios, progress)
        statuses.update({(c["driver"], c["seed"]): status for c, status in zip(cells, trained)})
    lines = [f"finished before a retry: {driver} seed {seed}" for driver, seed in sorted(done_before)]
    return {"statuses": [(c["driver"], c["seed"], statuses[(c["driver"], c["seed"])]) for c in job.cells],
            "lines": progress.finished + lines, "worker": worker_name()}


def tune_share(job: TuneJob) -> dict:
    """A Ray task: its share of a study's trials (benchmark.tuning.tune), in the storage every worker shares."""
    from benchmark import tuning

    store = WorkerStore(job.protocol.tracking_uri, job.token)
    config, splits = worker_setup(job.protocol)
    storage = tuning.open_storage(job.storage_url)
    study = tuning.tune(store, storage, job.storage_url, config, job.driver, job.trials, list(job.seeds), splits,
                        job.command, job.sampler_seed, job.pruning, job.lambda_range)
    return {"study": study.study_name, "worker": worker_name()}
