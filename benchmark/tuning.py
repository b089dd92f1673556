"""λ per driver by Optuna: one study per (driver, protocol), objective on the validation split only.

Search space: λ log-uniform over [1e-3, 1e5]. The paper author's optima span 0.1 (sig) to 41 (fis) with
importances summed per sample and no ½; conventions elsewhere (a ½ in the penalty, means instead of sums, a
squared minibatch gradient instead of a per-sample Fisher) move the optimum by orders of magnitude, so the
range covers two decades below the smallest and more than three above the largest published optimum.

Objective: mean validation accuracy over all tasks after the last task, averaged over the tuning seeds
(10000, 10001, … by default: never the seeds `run` reports). The test split is never read. After each task the
running mean validation accuracy over the tasks seen so far is reported, and a median pruner stops trials whose
value falls below the median of completed trials at the same task, from the middle task on. A trial whose loss stops
being finite is pruned, with the reason in its user attributes and on its MLflow run.

Several processes, on one machine or many, share a study through its storage: the default is a journal file
beside the MLflow store (mlruns/optuna.journal, safe for concurrent processes on one machine); any Optuna
storage URL (e.g. postgresql://user@host/db) works for many machines.
"""

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import optuna

from benchmark.config import Config
from benchmark.environment import experiment_name, fingerprint
from benchmark.errors import UsageError, first_line
from benchmark.experiment_notes import tuning_experiment_description
from benchmark.loop import Diverged, EstimatorFailed, run_sequence
from benchmark.metrics import average_accuracy
from benchmark.progress import Progress, duration
from benchmark.scenario import Splits, make_task_sequence
from tracking import Store, hold_signals_in

LAMBDA_RANGE = (1e-3, 1e5)
STORAGE_ENV = "BENCHMARK_OPTUNA_STORAGE"
DEFAULT_STORAGE = "mlruns/optuna.journal"


def study_name(driver: str, protocol: str, dataset: str = "mnist") -> str:
    return f"lambda-{driver}-{protocol}" + ("" if dataset == "mnist" else f"-{dataset}")


def resolve_storage(flag: str | None = None) -> str:
    return flag or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def redact(url: str) -> str:
    """A storage URL without its password, for messages and tags."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str, create: bool = True):
    """An Optuna storage from a URL (RDB) or a file path (journal); None if a journal file is absent and
    create is False."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    try:
        if "://" not in url:
            if not create and not os.path.exists(url):
                return None
            os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
            return hold_signals_in(JournalStorage(JournalFileBackend(url)))
        for attempt in range(5):
            try:
                return hold_signals_in(RDBStorage(url))
            except (IntegrityError, ProgrammingError):
                # workers started together on an empty database race to create Optuna's tables; the loser
                # finds them made a moment later
                if attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
    except Exception as e:  # SQLAlchemy, the database driver and the file system fail in their own ways
        raise UsageError(f"cannot open Optuna storage {redact(url)}: {redact(first_line(e))}") from None


@dataclass(frozen=True)
class TunedStudy:
    study: str
    best_lambda: float
    best_value: float  # the best trial's validation accuracy
    complete: int  # complete trials


def tuned_study(storage, driver: str, protocol: str, dataset: str = "mnist") -> TunedStudy | None:
    """The study for (driver, protocol) and its best λ, or None if there is no study or no finished trial."""
    if storage is None:
        return None
    name = study_name(driver, protocol, dataset)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        best = study.best_trial
    except (KeyError, ValueError):  # no such study; no completed trial
        return None
    return TunedStudy(name, float(best.params["lambda"]), float(best.value), trial_counts(study)["complete"])


def load_study(storage, driver: str, config: Config) -> optuna.Study:
    return optuna.load_study(study_name=study_name(driver, config.protocol, config.data.dataset), storage=storage)


def study_summaries(storage) -> list[dict]:
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        best = summary.best_trial
        rows.append({"study": summary.study_name, "best_lambda": best.params["lambda"] if best else None,
                     "best_value": best.value if best else None, **trial_counts(study)})
    return rows


def trial_counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state.name for t in study.trials]
    return {"complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "running": states.count("RUNNING")}


class MedianOfCurrentValuesPruner(optuna.pruners.BasePruner):
    """Prune a trial whose value at this step is below the median of the completed trials' values at the step.

    Optuna's MedianPruner compares the trial's best value over all steps so far; the running validation
    accuracy here is highest near task 0 and falls as tasks are added, so that best value is the early value
    every trial shares, and once the median falls below it MedianPruner never prunes. This one compares the
    current value.
    """

    def __init__(self, n_startup_trials: int, n_warmup_steps: int):
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if step is None or step < self.n_warmup_steps or len(completed) < self.n_startup_trials:
            return False
        others = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        return bool(others) and trial.intermediate_values[step] < float(np.median(others))


@dataclass(frozen=True)
class Studies:
    """One `tune` call: each driver's study of the protocol, `trials` more trials in each, in `storage` (at
    storage_url), on the tuning seeds, recorded in `store`."""

    store: Store
    storage: object  # an Optuna storage
    storage_url: str
    config: Config
    drivers: list[str]
    trials: int
    seeds: list[int]
    command: str
    sampler_seed: int | None


# A tuner runs the studies and returns why any part of them failed (empty: none did). tune_here(splits) is the
# default; benchmark/cluster/head.py's RayTuner spreads each study's trials over Ray tasks.
Tuner = Callable[[Studies], list[str]]


def tune_here(splits: dict[str, Splits]) -> Tuner:
    """The studies one after the other in this process, on these splits."""
    def run(studies: Studies) -> list[str]:
        for driver in studies.drivers:
            tune(studies.store, studies.storage, studies.storage_url, studies.config, driver, studies.trials,
                 studies.seeds, splits, studies.command, studies.sampler_seed)
        return []
    return run


def tune(store: Store, storage, storage_url: str, config: Config, driver: str, trials: int, seeds: list[int],
         splits: dict[str, Splits], command: str, sampler_seed: int | None = None):
    """Run `trials` trials of the (driver, protocol) study in this process; return the study."""
    name = study_name(driver, config.protocol, config.data.dataset)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(n_startup_trials=5, seed=sampler_seed),
        # no pruning in the first half of the tasks: a large λ learns the early tasks a little worse and pays
        # off only once there is something to forget, so early comparisons would favour small λ
        pruner=MedianOfCurrentValuesPruner(n_startup_trials=3, n_warmup_steps=config.data.tasks // 2),
    )
    experiment = f"{experiment_name(config)}-tuning"
    scenarios = [make_task_sequence(config.data, splits, seed) for seed in seeds]
    versions = {"optuna_version": optuna.__version__}  # Optuna 5 changed TPE's defaults: same seed, other trials
    environment = fingerprint(scenarios[0].device)
    parent = store.start_run(experiment, f"tune-{driver}", tags={
        "kind": "tune", "driver": driver, "protocol": config.protocol, "study": name,
        "storage": redact(storage_url), "trials_requested": trials, "seeds": ",".join(map(str, seeds)),
        "command": command, **versions, **environment}, experiment_description=tuning_experiment_description(config))
    parent.log_json(config.to_dict(), "config.json")

    def objective(trial: optuna.Trial) -> float:
        lam = trial.suggest_float("lambda", *LAMBDA_RANGE, log=True)
        run = store.start_run(experiment, f"{driver}-trial{trial.number}", parent=parent, tags={
            "kind": "trial", "driver": driver, "protocol": config.protocol, "study": name,
            "trial": trial.number, "lambda": lam, **versions, **environment})
        run.log_params({"lambda": lam, "trial": trial.number, "seeds": ",".join(map(str, seeds))})
        try:
            value = _evaluate(config, driver, lam, seeds, scenarios, trial, run)
        except optuna.TrialPruned as pruned:
            run.set_tags({"trial_state": "PRUNED", "prune_reason": str(pruned) or "median pruner"})
            run.finish("FINISHED")
            raise
        except BaseException as e:
            run.set_tags({"trial_state": "FAIL", "failure_reason": f"{type(e).__name__}: {e}"[:5000]})
            run.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        run.log_metrics({"objective": value})
        run.set_tags({"trial_state": "COMPLETE"})
        run.finish("FINISHED")
        return value

    status = "FAILED"
    progress = Progress("trial", total=trials)
    progress.describe(name)
    progress.say(f"tune {parent.id} in experiment {experiment} of {store.uri}: {trials} trials of study {name}; "
                 "a line per finished trial follows")

    def trial_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        progress.step()
        progress.item_done(trial_line(study, trial))

    try:
        # a plugin estimator that fails fails its trial, not the study
        study.optimize(objective, n_trials=trials, catch=(EstimatorFailed,), callbacks=[trial_done])
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        progress.close()
        # a signal between creating a trial's run and entering its handler would leave the run RUNNING
        store.end_left_running(experiment, "KILLED" if status == "KILLED" else "FAILED", kind="trial",
                               **{"mlflow.parentRunId": parent.id})
        counts = trial_counts(study)
        summary = {"n_complete": counts["complete"], "n_pruned": counts["pruned"], "n_failed": counts["failed"]}
        best = {}
        if counts["complete"]:
            best = {"best_lambda": study.best_params["lambda"], "best_value": study.best_value,
                    "best_trial": study.best_trial.number}
        parent.set_tags({**summary, **best})
        parent.finish(status)
    return study


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """A finished trial for the progress log: number, λ, how it ended, its wall time and the study's best."""
    if trial.state.name == "COMPLETE":
        outcome = f"validation ACC {trial.value:.4f}"
    elif "failure_reason" in trial.user_attrs:  # diverged
        outcome = f"{trial.state.name.lower()}: {trial.user_attrs['failure_reason']}"
    elif trial.state.name == "PRUNED" and trial.last_step is not None:
        outcome = f"pruned after task {trial.last_step} (val_acc {trial.intermediate_values[trial.last_step]:.4f})"
    else:
        outcome = trial.state.name.lower()
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else 0.0
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = max(completed, key=lambda t: t.value) if completed else None
    best_text = f"best λ {best.params['lambda']:.4g} ({best.value:.4f})" if best else "no completed trial yet"
    return (f"finished: {study.study_name} trial #{trial.number}, λ {trial.params['lambda']:.4g}, {outcome}, "
            f"{duration(seconds)}; {best_text}")


def _evaluate(config: Config, driver: str, lam: float, seeds: list[int], scenarios, trial, run) -> float:
    """Train every tuning seed in lockstep, task by task, reporting the running validation accuracy."""
    sequences: Iterable = zip(*(run_sequence(config, driver, lam, seed, scenario, use_test_split=False)
                                for seed, scenario in zip(seeds, scenarios)))
    matrices: list[list[list[float]]] = [[] for _ in seeds]
    try:
        for task_results in sequences:
            for rows, result in zip(matrices, task_results):
                rows.append(result.validation_accuracy)
            task = task_results[0].task
            running = float(np.mean([average_accuracy(np.array(rows)) for rows in matrices]))
            run.log_metrics({"val_acc": running}, step=task)
            trial.report(running, step=task)
            if trial.should_prune():
                raise optuna.TrialPruned(f"median pruner at task {task} (val_acc {running:.4f})")
    except Diverged as e:
        trial.set_user_attr("failure_reason", str(e))
        raise optuna.TrialPruned(f"diverged: {e}") from None
    return float(np.mean([average_accuracy(np.array(rows)) for rows in matrices]))
