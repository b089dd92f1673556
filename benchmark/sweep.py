"""A sweep: one MLflow parent run per invocation, one child run per (driver, seed), each child's artifacts
in the layout other tools read (see README, "Artifacts").
"""

import hashlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from benchmark import __version__, plugins
from benchmark.config import Config, added_settings, check_chain_runs_here
from benchmark.correlations import COLUMNS, correlation_rows
from benchmark.environment import experiment_name, fingerprint
from benchmark.experiment_notes import sweep_experiment_description
from benchmark.lambdas import Lambda
from benchmark.loop import AdamState, Cell, Diverged, EstimatorFailed, TaskResult, run_cells
from benchmark.metrics import average_accuracy, backward_transfer, forgetting
from benchmark.progress import Progress
from benchmark.scenario import Splits, TaskSequence, make_task_sequence
from tracking import Run, Store


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def cell_config(config: Config, driver: str, seed: int, lam: Lambda, device: str, log_importances: str,
                adam_chain: list[int] | None = None) -> dict:
    """Everything that determines a cell's results and artifacts: config.json, and the key resume matches on;
    with estimator plugins loaded, what code each came from. With training.adam_state = "carried", adam_chain:
    the seeds whose cells, in this order, trained the Adam state this cell starts from (none: the chain's first)."""
    loaded = plugins.provenance()
    carried = config.training.adam_state == "carried"
    return {**config.to_dict(), "driver": driver, "seed": seed, "lambda": lam.value, "lambda_source": lam.source,
            "lambda_study": lam.study, "device": device, "log_importances": log_importances,
            **({"adam_chain": list(adam_chain or [])} if carried else {}),
            **({"plugins": loaded} if loaded else {})}


ADAM_STATE_FILE = "adam_state.safetensors"  # a carried cell's Adam state after its last task (loop.AdamState)
NOT_RUN = "NOT RUN"  # the status of a carried chain's cells after one that failed: they have no state to start from
# training.adam_state = "carried": the Adam state each (driver, seed) cell ended with, where its chain's next cell
# starts from
AdamStates = dict[tuple[str, int], AdamState]


def importances_by_estimator(logged: dict) -> dict[str, dict]:
    """A task's importances.safetensors, whose keys are {estimator}.{parameter} (CellRun.task writes them), as
    {estimator: {parameter: values}}: what every reader of the file takes them back as."""
    out: dict[str, dict] = {}
    for key, value in logged.items():
        estimator, _, name = key.partition(".")  # "fis.fc1.weight"
        out.setdefault(estimator, {})[name] = value
    return out


def config_hash(resolved: dict) -> str:
    # where λ came from does not change a result; its value does
    same = {k: v for k, v in resolved.items() if k not in ("lambda_source", "lambda_study")}
    for (section, key), value in added_settings().items():  # the rule: benchmark/config.py, ADDED
        if same.get(section, {}).get(key) == value:
            same[section] = {k: v for k, v in same[section].items() if k != key}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunningSweep:
    """What every cell of a sweep shares: the store and its parent run, the protocol, the data, the progress."""

    store: Store
    experiment: str
    parent: Run
    config: Config
    splits: dict[str, Splits]
    progress: Progress


# An executor trains groups of cells (the resolved cell configs of cell_config; a group is trained stacked, as one
# run_group) and returns each cell's status by (driver, seed). run_here is the default; benchmark/cluster/head.py's
# RayExecutor spreads the groups over a Ray cluster.
Executor = Callable[[list[list[dict]], RunningSweep], dict[tuple[str, int], str]]


def run_here(groups: list[list[dict]], sweep: RunningSweep, adam_states: AdamStates | None = None
             ) -> dict[tuple[str, int], str]:
    """Each group in this process, one after the other."""
    statuses = {}
    for group in groups:
        sweep.progress.describe(", ".join(f"{c['driver']} seed {c['seed']}" for c in group))
        scenarios = [make_task_sequence(sweep.config.data, sweep.splits, c["seed"]) for c in group]
        outcome = run_group(sweep.store, sweep.experiment, sweep.parent, sweep.config, group, scenarios,
                            sweep.progress, adam_states)
        statuses.update({(c["driver"], c["seed"]): status for c, status in zip(group, outcome)})
    return statuses


def run_chains(pending: list[dict], reused: dict[tuple[str, int], str],
               sweep: RunningSweep) -> dict[tuple[str, int], str]:
    """training.adam_state = "carried": the pending cells one at a time, in this process, in chain order (each
    driver's seeds in seed order), each starting from the Adam state its chain's previous cell ended with: handed
    over in memory, or, where an earlier sweep finished that cell, read from its adam_state.safetensors. A cell
    that does not finish ends its chain: the cells after it are NOT RUN."""
    statuses: dict[tuple[str, int], str] = {}
    ended_with: AdamStates = {}
    broken: set[str] = set()  # drivers whose chain has a cell that did not finish
    for resolved in pending:
        driver, seed, chain = resolved["driver"], resolved["seed"], resolved["adam_chain"]
        if driver in broken:
            statuses[(driver, seed)] = NOT_RUN
            sweep.progress.item_done(f"not run: {driver} seed {seed}, an earlier cell of its Adam chain did not "
                                     "finish", steps_skipped=sweep.config.data.tasks)
            continue
        previous = (driver, chain[-1]) if chain else None
        if previous is not None and previous not in ended_with:
            ended_with[previous] = read_adam_state(sweep.store, reused[previous])
        statuses.update(run_here([[resolved]], sweep, ended_with))
        if statuses[(driver, seed)] != "FINISHED":
            broken.add(driver)
    return statuses


def read_adam_state(store: Store, run_id: str) -> AdamState:
    with tempfile.TemporaryDirectory() as tmp:
        return load_file(store.download(run_id, ADAM_STATE_FILE, tmp))


def run_sweep(store: Store, config: Config, drivers: list[str], seeds: list[int], lambdas: dict[str, Lambda],
              splits: dict[str, Splits], log_importances: str, command: str, parallel: int = 1,
              executor: Executor = run_here, device: str | None = None,
              experiment: str | None = None) -> tuple[dict[tuple[str, int], str], list[str]]:
    """Run every (driver, seed) cell not already finished in the store with the same configuration; up to
    `parallel` cells at a time, whatever their drivers, are trained stacked (benchmark.loop.run_cells).

    device: where the cells train (default: where the data lies); experiment: where they are recorded (default
    the protocol's, experiment_name). Returns each cell's status and the ids of the finished runs that were reused
    instead of run again.

    With training.adam_state = "carried" each driver's seeds, in seed order, are one chain (run_chains): its cells
    are trained one at a time, never stacked, and a chain is reused up to its first unfinished cell only."""
    check_chain_runs_here(config, parallel, ray=executor is not run_here)
    experiment = experiment or experiment_name(config)
    device = device or str(next(iter(splits.values())).train.x.device)
    carried = config.training.adam_state == "carried"
    if carried:
        seeds = sorted(seeds)  # the chains' order
    cells = {}
    for driver in drivers:
        for position, seed in enumerate(seeds):
            lam = lambdas[driver] if driver != "none" else Lambda(0.0, "none")
            cells[(driver, seed)] = cell_config(config, driver, seed, lam, device, log_importances,
                                                adam_chain=seeds[:position])
    # a cell recorded before runs carried an environment fingerprint is trained again: a published cell needs one
    done = {(d, s): [r for r in store.find_runs(experiment, kind="cell", config_hash=config_hash(c),
                                                status="FINISHED") if r.tags.get("fingerprint")]
            for (d, s), c in cells.items()}
    if carried:  # a chain is reused up to its first unfinished cell; from there on it is trained again
        for driver in drivers:
            first_missing = next((k for k, seed in enumerate(seeds) if not done[(driver, seed)]), len(seeds))
            for seed in seeds[first_missing:]:
                done[(driver, seed)] = []
    reused = {cell: runs[0].id for cell, runs in done.items() if runs}
    if reused:
        print(f"resuming: {len(reused)} of {len(cells)} cells already finished with the same configuration",
              file=sys.stderr)

    parent = store.start_run(experiment, f"{config.protocol}-sweep", tags={
        "kind": "sweep", "protocol": config.protocol, "drivers": ",".join(drivers),
        "seeds": ",".join(map(str, seeds)), "command": command, "package_version": __version__,
        "machine": f"{platform.node()} {platform.machine()}", **fingerprint(torch.device(device)),
        "reused_cells": ",".join(reused.values()),
    }, experiment_description=sweep_experiment_description(config))
    parent.log_json(config.to_dict(), "config.json")
    statuses = {cell: "FINISHED" for cell in reused}
    progress = Progress("cell", total=len(cells), done=len(reused), steps_per_item=config.data.tasks)
    progress.say(f"sweep {parent.id} in experiment {experiment} of {store.uri}: {len(cells)} cells (drivers "
                 f"{', '.join(drivers)}; seeds {', '.join(map(str, seeds))}), {len(reused)} already finished; "
                 "a line per finished cell follows")
    try:
        pending = [config for cell, config in cells.items() if cell not in reused]
        sweep = RunningSweep(store, experiment, parent, config, splits, progress)
        if carried:
            statuses.update(run_chains(pending, reused, sweep))
        else:
            groups = [pending[start:start + parallel] for start in range(0, len(pending), parallel)]
            statuses.update(executor(groups, sweep))
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        # a signal between creating a cell's run and entering its own handler would leave it RUNNING forever
        store.end_left_running(experiment, status, f"{type(e).__name__} before the cell started training",
                               kind="cell", **{"mlflow.parentRunId": parent.id})
        parent.finish(status)
        raise
    finally:
        progress.close()
    parent.set_tags({"failed_cells": sum(s != "FINISHED" for s in statuses.values())})
    parent.finish("FINISHED")
    return statuses, list(reused.values())


class CellRun:
    """One (driver, seed) cell's MLflow run, filled task by task: the layout README's "Artifacts" describes."""

    def __init__(self, store: Store, experiment: str, parent: Run, config: Config, resolved: dict,
                 scenario: TaskSequence, stacked: int = 1):
        driver, seed = resolved["driver"], resolved["seed"]
        self.config, self.resolved, self.scenario = config, resolved, scenario
        self.started = time.monotonic()  # the cell's wall time, for the progress line
        self.run = store.start_run(experiment, f"{driver}-seed{seed}", parent=parent, tags={
            "kind": "cell", "driver": driver, "seed": seed, "protocol": config.protocol, "lambda": resolved["lambda"],
            "lambda_source": resolved["lambda_source"], "package_version": __version__,
            "config_hash": config_hash(resolved), "stacked": stacked, **fingerprint(scenario.device),
            **({"lambda_study": resolved["lambda_study"]} if resolved["lambda_study"] else {}),
        })
        self.tasks_done, self.global_epoch = 0, 0
        self.test_rows, self.validation_rows, self.loss_rows, self.correlations = [], [], [], []

    def start(self) -> None:
        self.run.log_params(flatten({k: v for k, v in self.resolved.items() if k != "penalty"}))
        self.run.log_json(self.resolved, "config.json")
        for name, content in self.scenario.record().items():  # what recomputes the task sequence
            if isinstance(content, np.ndarray):
                self.run.log_array(content, name)
            else:
                self.run.log_json(content, name)
        self.run.log_array(self.scenario.importance_indices.astype(np.int64), "importance_samples.npy")

    def task(self, result: TaskResult) -> None:
        run, t = self.run, result.task
        self.test_rows.append(result.test_accuracy)
        self.validation_rows.append(result.validation_accuracy)
        self.loss_rows.append(result.test_loss)
        validation = {"val_acc": average_accuracy(np.array(self.validation_rows)),
                      **{f"val_acc_task_{j}": a for j, a in enumerate(result.validation_accuracy)}} \
            if result.validation_accuracy else {}  # none in a protocol without a validation split
        run.log_metrics({
            "test_acc": average_accuracy(np.array(self.test_rows)),
            "task_seconds": result.seconds,
            **{f"test_acc_task_{j}": a for j, a in enumerate(result.test_accuracy)},
            **validation,
        }, step=t)
        for loss, penalty in zip(result.epoch_losses, result.epoch_penalties):
            run.log_metrics({"train_loss": loss, "penalty": penalty}, step=self.global_epoch)
            self.global_epoch += 1
        top_k = self.config.analysis.top_k_percent
        self.correlations += correlation_rows(t, "accumulated", result.accumulated, top_k)
        self.correlations += correlation_rows(t, "increment", result.increments, top_k)
        task_dir = f"tasks/task_{t:02d}"
        run.log_tensors(result.state_dict, f"{task_dir}/state_dict.safetensors")
        if result.adam_state is not None:
            run.log_tensors(result.adam_state, ADAM_STATE_FILE)
        log_importances = self.resolved["log_importances"]
        if log_importances == "all" or (log_importances == "final" and t == self.scenario.tasks - 1):
            run.log_tensors({f"{est}.{name}": v.float() for est, imp in result.increments.items()
                             for name, v in imp.items()}, f"{task_dir}/importances.safetensors")
        self.tasks_done += 1

    def finish(self) -> str:
        run, columns = self.run, [f"task_{j}" for j in range(self.scenario.tasks)]
        has_validation = bool(self.validation_rows[0])
        matrices = [(self.test_rows, "accuracy_matrix.csv")]
        matrices += [(self.validation_rows, "validation_accuracy_matrix.csv")] if has_validation else []
        matrices += [(self.loss_rows, "loss_matrix.csv")]
        for rows, path in matrices:
            table = pd.DataFrame(rows, columns=columns)
            table.insert(0, "after_task", range(len(rows)))
            run.log_text(table.to_csv(index=False), path)
        run.log_text(pd.DataFrame(self.correlations, columns=COLUMNS).to_csv(index=False), "correlations.csv")
        R, V = np.array(self.test_rows), np.array(self.validation_rows)
        validation = {"val_ACC": average_accuracy(V), "val_BWT": backward_transfer(V),
                      "val_forgetting": forgetting(V)} if has_validation else {}
        run.log_metrics({"ACC": average_accuracy(R), "BWT": backward_transfer(R), "forgetting": forgetting(R),
                         **validation}, step=self.scenario.tasks - 1)
        run.finish("FINISHED")
        return "FINISHED"

    def done(self, status: str, progress: Progress, detail: str = "") -> str:
        """The cell's line in the progress log: driver, seed, ACC (or why it failed) and wall time."""
        outcome = f"ACC {average_accuracy(np.array(self.test_rows)):.4f}" if status == "FINISHED" else detail
        progress.item_done(f"{status.lower() if status == 'FINISHED' else status}: {self.resolved['driver']} seed "
                           f"{self.resolved['seed']}, {outcome}, {time.monotonic() - self.started:.1f} s",
                           steps_skipped=self.scenario.tasks - self.tasks_done)
        return status

    def failed(self, e: Diverged | EstimatorFailed, progress: Progress) -> str:
        # a sweep goes on past a diverged cell (λ too large: a result) or a plugin's failure (not the sweep's)
        self.run.set_tags({"failure_reason": str(e)})
        self.run.finish("FAILED")
        return self.done("FAILED", progress, str(e))

    def abort(self, e: BaseException) -> None:
        if isinstance(e, KeyboardInterrupt):
            self.run.set_tags({"failure_reason": f"interrupted during task {self.tasks_done}"})
            self.run.finish("KILLED")
        else:
            self.run.set_tags({"failure_reason": f"{type(e).__name__}: {e}"[:5000]})
            self.run.finish("FAILED")


def run_group(store: Store, experiment: str, parent: Run, config: Config, cells: list[dict],
              scenarios: list[TaskSequence], progress: Progress, adam_states: AdamStates | None = None) -> list[str]:
    """Cells trained stacked (benchmark.loop.run_cells; a cell alone is a group of one), each its own run.
    adam_states (training.adam_state = "carried"): where a cell finds the Adam state its chain's previous cell
    ended with, and leaves its own."""
    records = [CellRun(store, experiment, parent, config, resolved, scenario, stacked=len(cells))
               for resolved, scenario in zip(cells, scenarios)]
    statuses: list[str | None] = [None] * len(cells)
    try:
        for record in records:
            record.start()
        stack = [Cell(c["driver"], c["lambda"], c["seed"], scenario,
                      adam_states[(c["driver"], c["adam_chain"][-1])] if c.get("adam_chain") else None)
                 for c, scenario in zip(cells, scenarios)]
        for results in run_cells(config, stack):
            for k, (record, result) in enumerate(zip(records, results)):
                if statuses[k] is not None:
                    continue
                if isinstance(result, (Diverged, EstimatorFailed)):
                    statuses[k] = record.failed(result, progress)
                else:
                    record.task(result)
                    progress.step()
                    if result.adam_state is not None:
                        adam_states[(record.resolved["driver"], record.resolved["seed"])] = result.adam_state
        for k, record in enumerate(records):
            if statuses[k] is None:
                statuses[k] = record.done(record.finish(), progress)
        return statuses
    except BaseException as e:
        for status, record in zip(statuses, records):
            if status is None:
                record.abort(e)
        raise
