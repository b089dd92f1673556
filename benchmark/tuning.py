"""λ per driver by Optuna: one study per (driver, protocol), objective on the validation split only.

Search space: λ log-uniform over [1e-3, 1e5] by default. The paper author's optima span 0.1 (sig) to 41 (fis)
with importances summed per sample and no ½; conventions elsewhere (a ½ in the penalty, means instead of sums, a
squared minibatch gradient instead of a per-sample Fisher) move the optimum by orders of magnitude, so the
range covers two decades below the smallest and more than three above the largest published optimum. Other
scenarios can need more (`tune --lambda-range`): an importance that vanishes where the model is sure of itself, as
the empirical Fisher on split MNIST's two-class tasks, needs λ far above 1e5. A study keeps one range: its trials
are all drawn from it.

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
from dataclasses import asdict, dataclass

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


def study_range(study: optuna.Study) -> tuple[float, float] | None:
    """The λ range the study's trials were drawn from (None for a study without trials); a usage error if they
    were drawn from more than one (a study made before the range was checked)."""
    ranges = {(d.low, d.high) for t in study.get_trials(deepcopy=False) if (d := t.distributions.get("lambda"))}
    if len(ranges) > 1:
        raise UsageError(f"study {study.study_name} drew λ from {len(ranges)} ranges: {sorted(ranges)}")
    return ranges.pop() if ranges else None


def check_range(storage, driver: str, config: Config, lambda_range: tuple[float, float]) -> None:
    """A usage error if the (driver, protocol) study exists with its trials drawn from another range: TPE's
    proposals and the study's best would mix two search spaces."""
    try:
        study = load_study(storage, driver, config)
    except KeyError:
        return
    drawn = study_range(study)
    if drawn is not None and drawn != tuple(lambda_range):
        raise UsageError(f"tune: study {study.study_name} drew λ from [{drawn[0]:g}, {drawn[1]:g}], not "
                         f"[{lambda_range[0]:g}, {lambda_range[1]:g}]: pass --lambda-range {drawn[0]:g},{drawn[1]:g}, "
                         "or tune the new range in another storage")


def study_summaries(storage) -> list[dict]:
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        best = summary.best_trial
        rows.append({"study": summary.study_name, "best_lambda": best.params["lambda"] if best else None,
                     "best_value": best.value if best else None, "lambda_range": study_range(study),
                     **trial_counts(study),
                     "confirmation": confirmation(study)})
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
    pruning: bool = True  # False: every trial runs to the last task (each one a complete trial, at full cost)
    lambda_range: tuple[float, float] = LAMBDA_RANGE


# A tuner runs the studies and returns why any part of them failed (empty: none did). tune_here(splits) is the
# default; benchmark/cluster/head.py's RayTuner spreads each study's trials over Ray tasks.
Tuner = Callable[[Studies], list[str]]


def tune_here(splits: dict[str, Splits]) -> Tuner:
    """The studies one after the other in this process, on these splits."""
    def run(studies: Studies) -> list[str]:
        for driver in studies.drivers:
            tune(studies.store, studies.storage, studies.storage_url, studies.config, driver, studies.trials,
                 studies.seeds, splits, studies.command, studies.sampler_seed, studies.pruning, studies.lambda_range)
        return []
    return run


def tune(store: Store, storage, storage_url: str, config: Config, driver: str, trials: int, seeds: list[int],
         splits: dict[str, Splits], command: str, sampler_seed: int | None = None, pruning: bool = True,
         lambda_range: tuple[float, float] = LAMBDA_RANGE):
    """Run `trials` trials of the (driver, protocol) study in this process; return the study. Without pruning
    every trial runs to the end: the median pruner keeps a trial only if it beats the completed ones, which near a
    flat optimum stops most of a long study's later trials, and a study may need a count of complete ones."""
    name = study_name(driver, config.protocol, config.data.dataset)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(n_startup_trials=5, seed=sampler_seed),
        # no pruning in the first half of the tasks: a large λ learns the early tasks a little worse and pays
        # off only once there is something to forget, so early comparisons would favour small λ
        pruner=MedianOfCurrentValuesPruner(n_startup_trials=3, n_warmup_steps=config.data.tasks // 2) if pruning
        else optuna.pruners.NopPruner(),
    )
    experiment = f"{experiment_name(config)}-tuning"
    scenarios = [make_task_sequence(config.data, splits, seed) for seed in seeds]
    versions = {"optuna_version": optuna.__version__}  # Optuna 5 changed TPE's defaults: same seed, other trials
    environment = fingerprint(scenarios[0].device)
    parent = store.start_run(experiment, f"tune-{driver}", tags={
        "kind": "tune", "driver": driver, "protocol": config.protocol, "study": name,
        "storage": redact(storage_url), "trials_requested": trials, "seeds": ",".join(map(str, seeds)),
        "command": command, "pruning": str(pruning).lower(), "lambda_range": f"{lambda_range[0]:g},{lambda_range[1]:g}",
        **versions, **environment},
        experiment_description=tuning_experiment_description(config))
    parent.log_json(config.to_dict(), "config.json")

    def objective(trial: optuna.Trial) -> float:
        lam = trial.suggest_float("lambda", *lambda_range, log=True)
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


@dataclass(frozen=True)
class Confirmation:
    """A study's K best λ rerun on a tuning seed its trials never used: does its best λ stay the best?

    One seed per trial cannot tell a flat optimum's best λ from its runner-up (the trial-to-trial noise of one
    seed is a few tenths of a point); a second seed shows whether the order was luck."""

    seed: int
    lambdas: list[float]  # the study's K best complete trials' λ, best first
    study_values: list[float]  # their objective in the study
    values: list[float]  # their validation ACC on `seed`

    @property
    def confirmed(self) -> bool:
        """The study's best λ is also the best of the K on the new seed."""
        return max(range(len(self.values)), key=self.values.__getitem__) == 0

    def line(self) -> str:
        pairs = ", ".join(f"λ {lam:.4g}: {old:.4f} → {new:.4f}"
                          for lam, old, new in zip(self.lambdas, self.study_values, self.values))
        verdict = "confirmed" if self.confirmed else "not confirmed"
        return f"on seed {self.seed} the best λ is {verdict} ({pairs})"


def confirmation(study: optuna.Study) -> Confirmation | None:
    record = study.user_attrs.get("confirmation")
    return Confirmation(**record) if record else None


def best_trials(storage, driver: str, config: Config, top: int) -> tuple[optuna.Study, list]:
    """The (driver, protocol) study and its `top` best complete trials, best first; a usage error if there are
    fewer than 2 to compare."""
    try:
        study = load_study(storage, driver, config)
    except KeyError:
        raise UsageError(f"tune --confirm: no study {study_name(driver, config.protocol, config.data.dataset)} to "
                         "confirm; run its trials first") from None
    complete = sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                      key=lambda t: t.value, reverse=True)[:top]
    if len(complete) < 2:
        raise UsageError(f"tune --confirm: study {study.study_name} has {len(complete)} complete trial(s); a "
                         "confirmation compares at least 2")
    return study, complete


def confirm(store: Store, study: optuna.Study, complete: list, config: Config, driver: str, seed: int,
            splits: dict[str, Splits], command: str) -> Confirmation:
    """Rerun the study's best trials' λ (`complete`, from best_trials) on tuning seed `seed` (validation split
    only) and record the result on the study (user attribute `confirmation`) and in MLflow (a `confirm` run, a
    child per λ)."""
    experiment = f"{experiment_name(config)}-tuning"
    scenario = make_task_sequence(config.data, splits, seed)
    parent = store.start_run(experiment, f"confirm-{driver}", tags={
        "kind": "confirm", "driver": driver, "protocol": config.protocol, "study": study.study_name,
        "seeds": str(seed), "command": command, **fingerprint(scenario.device)},
        experiment_description=tuning_experiment_description(config))
    progress = Progress("λ", total=len(complete), steps_per_item=config.data.tasks)
    progress.describe(f"confirm {study.study_name}")
    values, status = [], "FAILED"
    try:
        for trial in complete:
            lam = float(trial.params["lambda"])
            run = store.start_run(experiment, f"{driver}-confirm-trial{trial.number}", parent=parent, tags={
                "kind": "confirm-lambda", "driver": driver, "study": study.study_name, "trial": trial.number,
                "lambda": lam})
            run.log_params({"lambda": lam, "trial": trial.number, "seeds": str(seed)})

            def report(task: int, running: float, run=run) -> None:
                run.log_metrics({"val_acc": running}, step=task)
                progress.step()

            try:
                value = validation_objective(config, driver, lam, [seed], [scenario], report)
            except BaseException as e:
                run.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
                raise
            run.log_metrics({"objective": value})
            run.finish("FINISHED")
            values.append(value)
            progress.item_done(f"λ {lam:.4g} (trial #{trial.number}, study {trial.value:.4f}): validation ACC "
                               f"{value:.4f} on seed {seed}")
        result = Confirmation(seed, [float(t.params["lambda"]) for t in complete],
                              [float(t.value) for t in complete], values)
        study.set_user_attr("confirmation", asdict(result))
        parent.set_tags({"confirmed": str(result.confirmed).lower()})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        progress.close()
        parent.finish(status)
    return result


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
    """Train every tuning seed in lockstep, task by task, reporting the running validation accuracy to the trial
    (which may prune it) and the run."""
    def report(task: int, running: float) -> None:
        run.log_metrics({"val_acc": running}, step=task)
        trial.report(running, step=task)
        if trial.should_prune():
            raise optuna.TrialPruned(f"median pruner at task {task} (val_acc {running:.4f})")

    try:
        return validation_objective(config, driver, lam, seeds, scenarios, report)
    except Diverged as e:
        trial.set_user_attr("failure_reason", str(e))
        raise optuna.TrialPruned(f"diverged: {e}") from None


def validation_objective(config: Config, driver: str, lam: float, seeds: list[int], scenarios,
                         report: Callable[[int, float], None]) -> float:
    """Mean validation accuracy over all tasks after the last, averaged over the seeds; after each task,
    report(task, running value over the tasks seen)."""
    sequences: Iterable = zip(*(run_sequence(config, driver, lam, seed, scenario, use_test_split=False)
                                for seed, scenario in zip(seeds, scenarios)))
    matrices: list[list[list[float]]] = [[] for _ in seeds]
    for task_results in sequences:
        for rows, result in zip(matrices, task_results):
            rows.append(result.validation_accuracy)
        report(task_results[0].task, float(np.mean([average_accuracy(np.array(rows)) for rows in matrices])))
    return float(np.mean([average_accuracy(np.array(rows)) for rows in matrices]))
