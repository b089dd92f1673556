"""What each MLflow experiment is, for the MLflow UI: the description (Markdown) shown above its runs, written when
`run` or `tune` creates the experiment. It says what the protocol is, how the runs are organised, and how to
compare drivers in the UI (checked against MLflow 3.17; README, "Look at the runs")."""

from benchmark.config import DATASET_NAMES, Config

# MLflow 3 opens an experiment in its GenAI view (traces, "Detect Issues"); the runs are in "Model training". The
# note's first line is what the experiment page shows before the note is expanded, and the experiments list shows
# its first characters as they are, Markdown and all: so it is plain text and says where the runs are.
RUNS_VIEW = ("To see the runs, click Model training in the toggle at the top left (MLflow 3 opens experiments in its "
             "GenAI view; the browser remembers the choice), or add ?workflowType=machine_learning to the address.")


def _tasks(config: Config) -> str:
    d = config.data
    dataset = DATASET_NAMES.get(d.dataset, d.dataset)
    if d.sequence == "permuted":
        return (f"permuted {dataset}, {d.tasks} tasks (task 0 the plain images, the others fixed pixel permutations "
                "drawn from the seed)")
    if d.sequence == "rotated":
        angles = (f"angles {', '.join(f'{a:g}°' for a in d.angles)}" if d.angles else
                  f"task 0 at 0°, the others at angles drawn from the seed in [0°, {d.max_angle:g}°)")
        return f"rotated {dataset}, {d.tasks} tasks ({angles})"
    if d.sequence == "split":
        return f"split {dataset}, {d.tasks} tasks of two classes each (0/1, 2/3, …)"
    rotations = f", rotated by {', '.join(f'{a:g}°' for a in d.rotations)}" if d.rotations else ""
    return f"{d.tasks} tasks, one dataset each ({', '.join(DATASET_NAMES.get(x, x) for x in d.datasets)}{rotations})"


def _model(config: Config) -> str:
    m = config.model
    if m.kind == "conv":
        return (f"convolutional network (channels {'-'.join(map(str, m.channels))}, kernels "
                f"{'-'.join(map(str, m.kernels))}, pools {'-'.join(map(str, m.pools))}"
                f"{', BatchNorm' if m.batch_norm else ''}, leakyReLU {m.leaky_relu_slope}, then a linear layer)")
    return f"MLP with hidden layers {'-'.join(map(str, m.hidden))} (leakyReLU {m.leaky_relu_slope})"


def protocol_summary(config: Config) -> str:
    d, t = config.data, config.training
    validation = f"{d.validation_images} validation images" if d.validation_images else "no validation split"
    return (f"**Protocol `{config.protocol}`**: {_tasks(config)}; {_model(config)}; {t.optimizer} lr {t.lr:g}, batch "
            f"{t.batch_size}, {t.epochs} epoch{'s' if t.epochs != 1 else ''} a task on {d.train_images} training "
            f"images; importances from {d.importance_samples} samples ({d.importance_from} split); {validation}; "
            f"accuracies on {d.test_images} test images.")


def sweep_experiment_description(config: Config) -> str:
    return "\n\n".join([
        RUNS_VIEW,
        protocol_summary(config),
        "**Runs.** One parent run per `python -m benchmark run` (tag `kind` = `sweep`, named "
        f"`{config.protocol}-sweep`), with one child run per (driver, seed) (`kind` = `cell`, named "
        "`<driver>-seed<seed>`; tags `driver`, `seed`, `lambda`, `lambda_source`). A child's metrics: `ACC`, `BWT`, "
        "`forgetting` after the last task, `test_acc` and `task_seconds` per task (the step is the task); its "
        "artifacts: `accuracy_matrix.csv`, `correlations.csv`, `config.json`, parameters and importances per task. "
        "`python -m benchmark report` adds its report to the parent run's artifacts (`report/index.html`).",
        "**Compare drivers.** The cells are hidden under their sweep (the `+` beside its name shows them). *Group "
        "by* → Tags → `driver`; then the chart view (the second icon left of the search box) → *Add chart* → *Bar "
        "chart*, metric `ACC`: a bar per driver, the mean over its seeds. A group's row in the table opens onto its "
        "cells; the sweep itself has no driver and is under *Additional runs*.",
    ])


def tuning_experiment_description(config: Config) -> str:
    return "\n\n".join([
        RUNS_VIEW,
        protocol_summary(config),
        "**Runs.** λ tuning with Optuna. One parent run per `python -m benchmark tune` (tag `kind` = `tune`, named "
        "`tune-<driver>`; tags `study`, `best_lambda`, trial counts), one child run per trial (`kind` = `trial`, "
        "named `<driver>-trial<n>`; param `lambda`, tags `trial_state`, `prune_reason`). Metrics: `val_acc` per "
        "task (validation split only; the step is the task) and `objective`, the trial's validation ACC.",
        "**Compare trials.** Expand a tune run (the `+` beside its name: its trials are hidden under it), then the "
        "chart view (the second icon left of the search box) → *Add chart* → *Scatter chart*; X axis: type "
        "`lambda` and pick the param; Y axis: the metric `objective`.",
    ])
