"""What each MLflow experiment is, for the MLflow UI: the description (Markdown) shown above its runs, written when
`run` or `tune` creates the experiment. It says what the protocol is, how the runs are organised, and how to
compare drivers in the UI (checked against MLflow 3.17; README, "Look at the runs")."""

from benchmark.config import Config

# MLflow 3 opens an experiment in its GenAI view (traces, "Detect Issues"); the runs are in "Model training". The
# note's first line is what the UI shows before the note is expanded, so it says that.
RUNS_VIEW = ("**To see the runs:** MLflow 3 opens experiments in its GenAI view; switch the toggle at the top left to "
             "**Model training** (or add `?workflowType=machine_learning` to the page's address).")


def protocol_summary(config: Config) -> str:
    d, m, t = config.data, config.model, config.training
    dataset = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}.get(d.dataset, d.dataset)
    layers = "-".join(map(str, (784, *m.hidden, 10)))
    validation = f"{d.validation_images} validation images" if d.validation_images else "no validation split"
    return (f"**Protocol `{config.protocol}`**: permuted {dataset}, {d.tasks} tasks (task 0 the plain images, the "
            f"others fixed pixel permutations drawn from the seed); MLP {layers} (leakyReLU {m.leaky_relu_slope}); "
            f"{t.optimizer} lr {t.lr:g}, batch {t.batch_size}, {t.epochs} epoch{'s' if t.epochs != 1 else ''} a "
            f"task on {d.train_images} training images; importances from {d.importance_samples} samples "
            f"({d.importance_from} split); {validation}; accuracies on {d.test_images} test images.")


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
        "**Compare drivers.** *Group by* → Tags → `driver`; then the chart view (the second icon left of the search "
        "box) → *Add chart* → *Bar chart*, metric `ACC`: a bar per driver, the mean over its seeds. A group's row "
        "in the table opens onto its cells; the sweep itself has no driver and is under *Additional runs*.",
    ])


def tuning_experiment_description(config: Config) -> str:
    return "\n\n".join([
        RUNS_VIEW,
        protocol_summary(config),
        "**Runs.** λ tuning with Optuna. One parent run per `python -m benchmark tune` (tag `kind` = `tune`, named "
        "`tune-<driver>`; tags `study`, `best_lambda`, trial counts), one child run per trial (`kind` = `trial`, "
        "named `<driver>-trial<n>`; param `lambda`, tags `trial_state`, `prune_reason`). Metrics: `val_acc` per "
        "task (validation split only; the step is the task) and `objective`, the trial's validation ACC.",
        "**Compare trials.** The chart view (the second icon left of the search box) → *Add chart* → *Scatter "
        "chart*, X axis the param `lambda`, Y axis the metric `objective`.",
    ])
