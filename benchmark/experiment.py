"""A sweep: one MLflow parent run per invocation, one child run per (driver, seed), each child's artifacts
in the layout other tools read (see README, "Artifacts").
"""

import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from benchmark import __version__
from benchmark.config import Config
from benchmark.correlations import COLUMNS, correlation_rows
from benchmark.loop import Diverged, run_sequence
from benchmark.metrics import average_accuracy, backward_transfer, forgetting
from benchmark.scenario import PermutedMNIST, Splits, make_scenario
from tracking import Run, Store


@dataclass(frozen=True)
class Lambda:
    value: float
    source: str  # "default" (a shipped protocol), "config" (your --config file), "tuned" or "user" (--lambda)
    study: str = ""  # the Optuna study a tuned λ comes from


def experiment_name(config: Config) -> str:
    return f"pmnist-{config.protocol}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def cell_config(config: Config, driver: str, seed: int, lam: Lambda, device: str, log_importances: str) -> dict:
    """Everything that determines a cell's results and artifacts: config.json, and the key resume matches on."""
    return {**config.to_dict(), "driver": driver, "seed": seed, "lambda": lam.value, "lambda_source": lam.source,
            "lambda_study": lam.study, "device": device, "log_importances": log_importances}


def config_hash(resolved: dict) -> str:
    # where λ came from does not change a result; its value does
    same = {k: v for k, v in resolved.items() if k not in ("lambda_source", "lambda_study")}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]


def run_sweep(store: Store, config: Config, drivers: list[str], seeds: list[int], lambdas: dict[str, Lambda],
              splits: Splits, log_importances: str, command: str) -> tuple[dict[tuple[str, int], str], list[str]]:
    """Run every (driver, seed) cell not already finished in the store with the same configuration.

    Returns each cell's status and the ids of the finished runs that were reused instead of run again."""
    experiment = experiment_name(config)
    device = str(splits.train.x.device)
    cells = {}
    for driver in drivers:
        for seed in seeds:
            lam = lambdas[driver] if driver != "none" else Lambda(0.0, "none")
            cells[(driver, seed)] = cell_config(config, driver, seed, lam, device, log_importances)
    done = {(d, s): store.find_runs(experiment, kind="cell", config_hash=config_hash(c), status="FINISHED")
            for (d, s), c in cells.items()}
    reused = {cell: runs[0].id for cell, runs in done.items() if runs}
    if reused:
        print(f"resuming: {len(reused)} of {len(cells)} cells already finished with the same configuration",
              file=sys.stderr)

    parent = store.start_run(experiment, f"{config.protocol}-sweep", tags={
        "kind": "sweep", "protocol": config.protocol, "drivers": ",".join(drivers),
        "seeds": ",".join(map(str, seeds)), "command": command, "package_version": __version__,
        "git_commit": git_commit(), "machine": f"{platform.node()} {platform.machine()}",
        "torch_version": torch.__version__, "reused_cells": ",".join(reused.values()),
    })
    parent.log_json(config.to_dict(), "config.json")
    statuses = {cell: "FINISHED" for cell in reused}
    bar = tqdm(total=len(cells) * config.data.tasks, initial=len(reused) * config.data.tasks, unit="task",
               disable=None, dynamic_ncols=True)
    try:
        for (driver, seed), resolved in cells.items():
            if (driver, seed) in reused:
                continue
            bar.set_description(f"{driver} seed {seed}")
            scenario = make_scenario(splits, config.data.tasks, seed)
            statuses[(driver, seed)] = run_cell(store, experiment, parent, config, resolved, scenario, bar)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        # a signal between creating a cell's run and entering its own handler would leave it RUNNING forever
        for cell in store.find_runs(experiment, kind="cell", status="RUNNING", **{"mlflow.parentRunId": parent.id}):
            leftover = store.open_run(cell.id)
            leftover.set_tags({"failure_reason": f"{type(e).__name__} before the cell started training"})
            leftover.finish(status)
        parent.finish(status)
        raise
    finally:
        bar.close()
    parent.set_tags({"failed_cells": sum(s != "FINISHED" for s in statuses.values())})
    parent.finish("FINISHED")
    return statuses, list(reused.values())


def run_cell(store: Store, experiment: str, parent: Run, config: Config, resolved: dict, scenario: PermutedMNIST,
             bar: tqdm) -> str:
    driver, seed, log_importances = resolved["driver"], resolved["seed"], resolved["log_importances"]
    run = store.start_run(experiment, f"{driver}-seed{seed}", parent=parent, tags={
        "kind": "cell", "driver": driver, "seed": seed, "protocol": config.protocol, "lambda": resolved["lambda"],
        "lambda_source": resolved["lambda_source"], "package_version": __version__,
        "config_hash": config_hash(resolved),
        **({"lambda_study": resolved["lambda_study"]} if resolved["lambda_study"] else {}),
    })
    tasks_done = 0
    try:
        run.log_params(flatten({k: v for k, v in resolved.items() if k != "penalty"}))
        run.log_json(resolved, "config.json")
        run.log_array(scenario.permutations, "permutations.npy")
        run.log_array(scenario.importance.indices.astype(np.int64), "importance_samples.npy")
        test_rows, validation_rows, correlations = [], [], []
        last = scenario.tasks - 1
        global_epoch = 0
        for result in run_sequence(config, driver, resolved["lambda"], seed, scenario):
            t = result.task
            test_rows.append(result.test_accuracy)
            validation_rows.append(result.validation_accuracy)
            run.log_metrics({
                "test_acc": average_accuracy(np.array(test_rows)),
                "val_acc": average_accuracy(np.array(validation_rows)),
                "task_seconds": result.seconds,
                **{f"test_acc_task_{j}": a for j, a in enumerate(result.test_accuracy)},
                **{f"val_acc_task_{j}": a for j, a in enumerate(result.validation_accuracy)},
            }, step=t)
            for loss, penalty in zip(result.epoch_losses, result.epoch_penalties):
                run.log_metrics({"train_loss": loss, "penalty": penalty}, step=global_epoch)
                global_epoch += 1
            correlations += correlation_rows(t, "accumulated", result.accumulated)
            correlations += correlation_rows(t, "increment", result.increments)
            task_dir = f"tasks/task_{t:02d}"
            run.log_tensors(result.state_dict, f"{task_dir}/state_dict.safetensors")
            if log_importances == "all" or (log_importances == "final" and t == last):
                run.log_tensors({f"{est}.{name}": v.float() for est, imp in result.increments.items()
                                 for name, v in imp.items()}, f"{task_dir}/importances.safetensors")
            tasks_done += 1
            bar.update(1)

        columns = [f"task_{j}" for j in range(scenario.tasks)]
        for rows, path in ((test_rows, "accuracy_matrix.csv"), (validation_rows, "validation_accuracy_matrix.csv")):
            table = pd.DataFrame(rows, columns=columns)
            table.insert(0, "after_task", range(len(rows)))
            run.log_text(table.to_csv(index=False), path)
        run.log_text(pd.DataFrame(correlations, columns=COLUMNS).to_csv(index=False), "correlations.csv")
        R, V = np.array(test_rows), np.array(validation_rows)
        run.log_metrics({"ACC": average_accuracy(R), "BWT": backward_transfer(R), "forgetting": forgetting(R),
                         "val_ACC": average_accuracy(V), "val_BWT": backward_transfer(V),
                         "val_forgetting": forgetting(V)}, step=last)
        run.finish("FINISHED")
        return "FINISHED"
    except Diverged as e:
        # a sweep goes on past a diverged cell: it is a result (λ too large), not a crash
        run.set_tags({"failure_reason": str(e)})
        run.finish("FAILED")
        bar.update(scenario.tasks - tasks_done)
        return "FAILED"
    except KeyboardInterrupt:
        run.set_tags({"failure_reason": f"interrupted during task {tasks_done}"})
        run.finish("KILLED")
        raise
    except BaseException as e:
        run.set_tags({"failure_reason": f"{type(e).__name__}: {e}"[:5000]})
        run.finish("FAILED")
        raise
