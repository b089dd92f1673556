"""Sparsification curves — does an importance name the weights a task needs? (the paper author's
section-4 test, aakutalev/ewc-features section4/weight-sparse*.py, generalised.)

A trained model's weights are zeroed in the order of an importance, and the test accuracy and mean cross-entropy
are read at every fraction k / STEPS zeroed, k = 0 … STEPS (steps of 0.5 %). The model: the protocol's first task
trained with driver none, through the experiment's own loop (benchmark.loop.run_cells), its importances those of
every estimator the protocol observes, computed on its importance samples (held out in the sparsify protocol);
or (`--from-run`) a logged run's state after task t, each task j ≤ t read with task j's own logged importance.

What is zeroed: the weights — every parameter with two or more dimensions (the Linear layers' matrices). Biases
are kept, as in the author's code, which zeroes weights only.
Orders: `increasing` zeroes the least important weight first (a right importance keeps the accuracy longest),
`decreasing` the most important first (a right importance collapses it fastest).
Ties: by position — the tensor's place in the model, then the flat (row-major) index, lower first — in both
orders: a stable sort of the importance (decreasing: of its negation) over the weights laid end to end.
Scopes: `layer` zeroes the same fraction of each weight tensor in its own order: round(k n / STEPS) of its n
weights, halves rounded up; `global` one order over all N weights of the network: the first round(k N / STEPS).
The global order restricted to one tensor is that tensor's own order, so both scopes give a weight the same rank in
its tensor and differ only in how many of each tensor are zero at step k (Schedule).
Baselines: `magnitude`, |w| of the trained weights; `random`, a uniformly random order of all the weights drawn
from the seed (the same seed, the same order).

Summary of one curve: the area under accuracy against fraction (trapezoid) and the first fraction at which the
accuracy is below 90 % and below 50 % (NaN where it never is); over seeds the mean with its 95 % t-interval, and
each estimator minus `magnitude` paired by seed.
"""

import io
import json
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from benchmark import __version__
from benchmark.config import SECTIONS, Config, parse_config
from benchmark.environment import CELLS_FILE, FINGERPRINT_KEYS, fingerprint
from benchmark.errors import UsageError
from benchmark.loop import Cell, make_estimators, run_cells
from benchmark.model import make_model
from benchmark.progress import Progress, duration
from benchmark.report.stats import MIN_SEEDS, Estimate, mean_ci, paired_difference
from benchmark.scenario import Splits, TaskSequence, evaluation_head, make_task_sequence
from benchmark.sweep import config_hash, importances_by_estimator
from tracking import Run, Store, StoreError

STEPS = 200  # fractions 0, 1/200, …, 1 zeroed
FRACTIONS = np.arange(STEPS + 1) / STEPS
ORDERS = ("increasing", "decreasing")
SCOPES = ("layer", "global")
BASELINES = ("magnitude", "random")
REFERENCE = "magnitude"  # what every estimator is paired against
THRESHOLDS = {"below_90": 0.9, "below_50": 0.5}
METRICS = ("auc", *THRESHOLDS)
KEYS = ["estimator", "order", "scope", "task"]  # one curve of one seed
DEFAULT_SEEDS = 5
EXPERIMENT = "sparsify"
CURVES_FILE, SUMMARY_FILE = "curves.csv", "summary.csv"
FIGURE_FILE = "sparsification.png"
# the curve points evaluated at once: 67 steps (STEPS + 1 = 3 × 67) on 200 images, 16 MB of first-layer outputs
SAMPLE_CHUNK, FRACTION_CHUNK = 200, 67

Importances = dict[str, dict[str, Tensor]]  # estimator -> weight name -> importance shaped like the weight


# --- the zeroing orders ---

def prunable_weights(model: nn.Module) -> dict[str, Tensor]:
    """The weights the curves zero, in the model's order: every parameter with two or more dimensions."""
    return {name: p for name, p in model.named_parameters() if p.dim() >= 2}


def magnitude_importance(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: w.detach().abs() for name, w in weights.items()}


def random_importance(weights: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Each weight's place in one random permutation of all the weights (drawn from `seed`): a uniformly random
    order, without ties, in either scope."""
    sizes = [w.numel() for w in weights.values()]
    places = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed)).double()
    return {name: part.view(w.shape).to(w.device) for (name, w), part in zip(weights.items(), places.split(sizes))}


def rounded_share(n: int) -> Tensor:
    """round(k n / STEPS) for k = 0 … STEPS, halves rounded up, in integers: how many of n are zero at step k."""
    return (torch.arange(STEPS + 1) * n + STEPS // 2) // STEPS


@dataclass(frozen=True)
class Schedule:
    """Which weights one curve has zeroed at each step: the weight at flat index e of tensor `name` is zero at step
    k when ranks[name][e] (its place in the tensor's zeroing order) < counts[name][k]."""

    ranks: dict[str, Tensor]  # int64, shaped like the weight
    counts: dict[str, Tensor]  # int64 [STEPS + 1]: 0 at k = 0, the tensor's size at k = STEPS

    def kept(self, name: str) -> Tensor:
        """[STEPS + 1, *shape] bool: whether each weight is still there at each step."""
        rank = self.ranks[name]
        return rank[None] >= self.counts[name].to(rank.device).view(-1, *[1] * rank.dim())


def schedules(importance: dict[str, Tensor], order: str) -> dict[str, Schedule]:
    """Both scopes' schedules of zeroing the weights in `order` of `importance` (weight name -> tensor, in the
    model's order)."""
    names = list(importance)
    sizes = [importance[name].numel() for name in names]
    values = torch.cat([importance[name].detach().flatten().double().cpu() for name in names])
    if not torch.isfinite(values).all():
        raise ValueError("an importance that is not finite has no order")
    sequence = torch.sort(values if order == "increasing" else -values, stable=True).indices
    owner = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))[sequence]
    zeroed_globally = rounded_share(len(values))
    ranks, layer_counts, global_counts = {}, {}, {}
    for t, (name, offset) in enumerate(zip(names, np.cumsum([0, *sizes[:-1]]))):
        mine = owner == t
        rank = torch.empty(sizes[t], dtype=torch.int64)
        rank[sequence[mine] - int(offset)] = torch.arange(sizes[t])
        ranks[name] = rank.view(importance[name].shape).to(importance[name].device)
        layer_counts[name] = rounded_share(sizes[t])
        # this tensor's weights among the first c of the global order, for every c
        among_first = torch.cat([torch.zeros(1, dtype=torch.int64), mine.cumsum(0)])
        global_counts[name] = among_first[zeroed_globally]
    return {"layer": Schedule(ranks, layer_counts), "global": Schedule(ranks, global_counts)}


# --- the curve points, batched ---

def check_model(model: nn.Module) -> None:
    """What curve_points can evaluate: a sequence of modules whose first is a Linear layer (the MLP)."""
    if not (isinstance(model, nn.Sequential) and isinstance(model[0], nn.Linear)):
        first = model[0] if isinstance(model, nn.Sequential) else model
        raise UsageError("sparsify evaluates models whose first module is a Linear layer (model.kind = 'mlp'), not "
                         f"one that starts with {type(first).__name__} (a conv net's curves would take days on a CPU)")


def first_layer_steps(weight: Tensor, rank: Tensor, counts: Tensor) -> dict[int, Tensor]:
    """For each step k that zeroes any of the first layer's weights, those it zeroes (zero at k, not at k − 1) as a
    sparse CSR matrix shaped like the weight (in its dtype)."""
    rows, columns = weight.shape
    step = torch.searchsorted(counts.to(rank.device), rank.flatten(), right=True)  # the first k whose count passes
    grouped = torch.argsort(step, stable=True)  # by step, then by flat index: row by row within a step
    sizes = torch.bincount(step, minlength=STEPS + 1).tolist()
    matrices = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        for k, entries in enumerate(grouped.split(sizes)):
            if len(entries):
                row_starts = torch.bincount(entries // columns, minlength=rows).cumsum(0)
                matrices[k] = torch.sparse_csr_tensor(torch.cat([row_starts.new_zeros(1), row_starts]),
                                                      entries % columns, weight.flatten()[entries], weight.shape,
                                                      check_invariants=False)
    return matrices


@torch.no_grad()
def curve_points(model: nn.Sequential, schedule: Schedule, x: Tensor, y: Tensor,
                 classes: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and mean cross-entropy on (x, y) at every step of the schedule, the model in eval mode; classes:
    the task's head (its output units, the others masked), None for all.

    No model is evaluated one fraction at a time. The first layer (84 % of the paper MLP's weights and of its
    arithmetic) is not recomputed at all: its pre-activation at step k is the full one minus what the weights
    zeroed at steps 1 … k contribute, one sparse product of the images with each step's newly zeroed weights, summed
    in float64 so that STEPS running subtractions round nothing into the curve. The layers after it run for
    FRACTION_CHUNK steps at once as a batch of models (torch.func.vmap over their masked parameters)."""
    check_model(model)
    (first_name, first), rest = next(iter(model.named_children())), model[1:]
    weight = first.weight.detach().double()
    steps = first_layer_steps(weight, schedule.ranks[f"{first_name}.weight"], schedule.counts[f"{first_name}.weight"])
    masked = {name: p.detach() * schedule.kept(name) if name in schedule.ranks
              else p.detach().expand(STEPS + 1, *p.shape) for name, p in rest.named_parameters()}
    batched_rest = torch.func.vmap(lambda params, h: torch.func.functional_call(rest, params, (h,)))
    correct = torch.zeros(STEPS + 1, dtype=torch.float64, device=x.device)
    loss = torch.zeros(STEPS + 1, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), SAMPLE_CHUNK):
        images, labels = x[start:start + SAMPLE_CHUNK], y[start:start + SAMPLE_CHUNK]
        images_t = images.double().T.contiguous()
        pre = torch.addmm(first.bias.detach().double()[:, None], weight, images_t)  # [out, images], nothing zeroed
        for low in range(0, STEPS + 1, FRACTION_CHUNK):
            chunk = range(low, min(low + FRACTION_CHUNK, STEPS + 1))
            hidden = torch.empty(len(chunk), first.out_features, len(images), dtype=first.weight.dtype,
                                 device=x.device)
            for i, k in enumerate(chunk):
                if k in steps:
                    pre.addmm_(steps[k], images_t, alpha=-1)
                hidden[i].copy_(pre)
            logits = batched_rest({name: m[low:low + len(chunk)] for name, m in masked.items()}, hidden.transpose(1, 2))
            if classes is not None:  # the task's head: the other output units neither win nor share the softmax
                headed = torch.full_like(logits, float("-inf"))
                headed[..., classes] = logits[..., classes]
                logits = headed
            log_p = torch.log_softmax(logits, dim=-1)
            loss[low:low + len(chunk)] -= log_p.gather(-1, labels.expand(len(chunk), -1)[..., None]).sum((1, 2))
            correct[low:low + len(chunk)] += (logits.argmax(-1) == labels).sum(1)
    return (correct / len(x)).cpu().numpy(), (loss / len(x)).cpu().numpy()


# --- one model's curves ---

@dataclass(frozen=True)
class Evaluation:
    """One task on which a model's curves are read: its test images and the importances that order the weights."""

    task: int
    x: Tensor
    y: Tensor
    classes: Tensor | None  # the task's evaluation head (scenario.evaluation_head)
    importances: Importances


def with_baselines(importances: Importances, model: nn.Module, seed: int) -> Importances:
    """The estimators' importances of the weights the curves zero, then magnitude's and random's."""
    weights = prunable_weights(model)
    return {**{estimator: {name: values[name] for name in weights} for estimator, values in importances.items()},
            "magnitude": magnitude_importance(weights), "random": random_importance(weights, seed)}


def model_curves(model: nn.Sequential, evaluations: list[Evaluation], progress: Progress) -> pd.DataFrame:
    """Every curve of one model: one row per (estimator, order, scope, task, fraction) with accuracy and loss."""
    frames = []
    for evaluation in evaluations:
        for estimator, importance in evaluation.importances.items():
            for order in ORDERS:
                try:
                    by_scope = schedules(importance, order)
                except ValueError as e:
                    raise ValueError(f"{estimator}'s importance of task {evaluation.task}: {e}") from None
                for scope, schedule in by_scope.items():
                    progress.describe(f"task {evaluation.task}: {estimator}, {order}, {scope}")
                    accuracy, loss = curve_points(model, schedule, evaluation.x, evaluation.y, evaluation.classes)
                    frames.append(pd.DataFrame({"estimator": estimator, "order": order, "scope": scope,
                                                "task": evaluation.task, "fraction": FRACTIONS, "accuracy": accuracy,
                                                "loss": loss}))
                    progress.step()
    return pd.concat(frames, ignore_index=True)


def trained_first_task(config: Config, seed: int, splits: dict[str, Splits]) -> tuple[nn.Sequential, Importances,
                                                                                     TaskSequence]:
    """The protocol's first task trained with driver none, as every run trains it (benchmark.loop.run_cells), in
    eval mode, and the importance every observed estimator gives it."""
    scenario = make_task_sequence(config.data, splits, seed)
    (result,) = next(run_cells(config, [Cell("none", 0.0, seed, scenario)]))
    if isinstance(result, Exception):  # a plugin estimator that failed
        raise result
    model = make_model(config.model).to(scenario.device)
    model.load_state_dict(result.state_dict)
    return model.eval(), result.increments, scenario


# --- summaries ---

def first_below(fractions: np.ndarray, accuracy: np.ndarray, threshold: float) -> float:
    below = np.flatnonzero(accuracy < threshold)
    return float(fractions[below[0]]) if len(below) else math.nan


def curve_metrics(curves: pd.DataFrame) -> pd.DataFrame:
    """Per curve (KEYS): the area under accuracy against fraction (trapezoid) and the first fraction whose accuracy
    is below each of THRESHOLDS."""
    rows = []
    for key, curve in curves.groupby(KEYS, sort=False):
        fractions, accuracy = curve.fraction.to_numpy(), curve.accuracy.to_numpy()
        rows.append({**dict(zip(KEYS, key)), "auc": float(np.trapezoid(accuracy, fractions)),
                     **{name: first_below(fractions, accuracy, threshold) for name, threshold in THRESHOLDS.items()}})
    return pd.DataFrame(rows)


def summarise(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per curve over seeds (per_seed: curve_metrics of every seed, with a seed column): each metric's mean and 95 %
    t-interval, and the estimator's value minus magnitude's on the same curve, paired by seed."""
    rows = []
    for key, group in per_seed.groupby(KEYS, sort=False):
        where = dict(zip(KEYS, key))
        reference = per_seed[(per_seed.estimator == REFERENCE) & (per_seed.order == where["order"])
                             & (per_seed.scope == where["scope"]) & (per_seed.task == where["task"])]
        row = {**where, "n": len(group)}
        for metric in METRICS:
            estimate = mean_ci(group[metric])
            paired = paired_difference(dict(zip(group.seed, group[metric])),
                                       dict(zip(reference.seed, reference[metric])))
            difference = f"{metric}_minus_{REFERENCE}"
            row.update({metric: estimate.mean, f"{metric}_low": estimate.low, f"{metric}_high": estimate.high,
                        difference: paired.mean, f"{difference}_low": paired.low, f"{difference}_high": paired.high})
        rows.append(row)
    return pd.DataFrame(rows)


def plot(curves: pd.DataFrame, path: Path) -> None:
    """The author's figure: test accuracy against the fraction of weights zeroed in increasing order, a panel per
    scope (a row per task), per estimator the mean over seeds and, from two seeds on, its 95 % t-interval band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    increasing = curves[curves.order == "increasing"]
    tasks = sorted(increasing.task.unique())
    fig, axes = plt.subplots(len(tasks), len(SCOPES), figsize=(13, 5 * len(tasks)), squeeze=False, sharey=True)
    palette = plt.get_cmap("tab20").colors
    baseline_styles = {"magnitude": ("black", "--"), "random": ("grey", ":")}
    titles = {"layer": "per layer (the same fraction of every layer)", "global": "global (one order over the network)"}
    for row, task in enumerate(tasks):
        for ax, scope in zip(axes[row], SCOPES):
            panel = increasing[(increasing.task == task) & (increasing.scope == scope)]
            for i, (estimator, curve) in enumerate(panel.groupby("estimator", sort=False)):
                colour, style = baseline_styles.get(estimator, (palette[i % len(palette)], "-"))
                by_fraction = list(curve.groupby("fraction").accuracy)
                fractions = 100 * np.array([fraction for fraction, _ in by_fraction])
                estimates = [mean_ci(seeds) for _, seeds in by_fraction]
                ax.plot(fractions, [100 * e.mean for e in estimates], color=colour, linestyle=style, lw=1.2,
                        label=estimator)
                if estimates[0].n >= 2:
                    ax.fill_between(fractions, [100 * e.low for e in estimates], [100 * e.high for e in estimates],
                                    color=colour, alpha=0.2, lw=0)
            ax.set_title(titles[scope] + (f", task {task}" if len(tasks) > 1 else ""))
            ax.set_xlabel("weights zeroed, least important first (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=8, ncol=2, loc="lower left")
    seeds = curves.seed.nunique()
    fig.suptitle(f"Sparsification curves, mean over {seeds} seed{'s' if seeds > 1 else ''}"
                 + (" with 95 % t-interval bands" if seeds > 1 else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- recording: MLflow runs and a results folder ---

@dataclass(frozen=True)
class Job:
    """One child run of a `sparsify` invocation: the curves of one seed of the protocol, or of a logged run."""

    name: str
    seed: int
    resolved: dict  # what determines its curves: its config.json, and the key a rerun finds it by (config_hash)
    compute: Callable[[Progress], pd.DataFrame]  # its curves: model_curves' rows


def trained_job(config: Config, seed: int, splits: dict[str, Splits]) -> Job:
    def compute(progress: Progress) -> pd.DataFrame:
        model, importances, scenario = trained_first_task(config, seed, splits)
        x, y = scenario.split("test", 0)
        return model_curves(model, [Evaluation(0, x, y, scenario.classes(0),
                                               with_baselines(importances, model, seed))], progress)

    return Job(f"{config.protocol}-seed{seed}", seed, {**config.to_dict(), "seed": seed}, compute)


def finished_curves(store: Store, resolved: dict) -> tuple[pd.DataFrame, dict[str, str]] | None:
    """The curves of a finished child run with the same configuration, if there is one (the newest), and where they
    were computed (run_id and fingerprint; a run recorded before children carried one: its parent's)."""
    runs = store.find_runs(EXPERIMENT, kind="sparsify", config_hash=config_hash(resolved), status="FINISHED")
    if not runs:
        return None
    tags = runs[0].tags if "fingerprint" in runs[0].tags else store.find_runs(
        run_ids=[runs[0].tags["mlflow.parentRunId"]])[0].tags
    with tempfile.TemporaryDirectory() as tmp:
        curves = pd.read_csv(store.download(runs[0].id, CURVES_FILE, tmp))
    return curves, {**{key: tags.get(key, "") for key in FINGERPRINT_KEYS}, "run_id": runs[0].id}


def record_job(store: Store, parent: Run, job: Job, progress: Progress,
               environment: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """One child run: its config.json, curves.csv and summary.csv (curve_metrics), and each curve's area as a
    metric. Returns the curves as logged (6 significant digits), so that a reused run and a fresh one enter the
    summary alike, and the run's id and fingerprint."""
    run = store.start_run(EXPERIMENT, job.name, parent=parent, tags={
        "kind": "sparsify", "seed": job.seed, "config_hash": config_hash(job.resolved), **environment,
        **{key: job.resolved[key] for key in ("from_run", "task") if key in job.resolved}})
    try:
        run.log_json(job.resolved, "config.json")
        text = job.compute(progress).to_csv(index=False, float_format="%.6g")
        curves = pd.read_csv(io.StringIO(text))
        metrics = curve_metrics(curves)
        run.log_text(text, CURVES_FILE)
        run.log_text(metrics.to_csv(index=False, float_format="%.6g"), SUMMARY_FILE)
        run.log_metrics({f"auc.{m.estimator}.{m.order}.{m.scope}.task{m.task}": m.auc for m in metrics.itertuples()})
        run.finish("FINISHED")
        return curves, {**{key: environment.get(key, "") for key in FINGERPRINT_KEYS}, "run_id": run.id}
    except BaseException as e:
        run.set_tags({"failure_reason": f"{type(e).__name__}: {e}"[:5000]})
        run.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def record(store: Store, jobs: list[Job], curves_per_job: int, tags: dict, command: str, out: Path,
           device: torch.device) -> pd.DataFrame:
    """Every job as a child run of one parent run in experiment `sparsify` (a job whose configuration already has a
    finished run is read from it, not computed again); then the summary over them, the per-seed values, all curves,
    the figure and a README, as the parent's artifacts (results/) and in `out`. Returns the summary."""
    environment = fingerprint(device)
    parent = store.start_run(EXPERIMENT, f"sparsify-{jobs[0].name}" if len(jobs) == 1 else "sparsify", tags={
        "kind": "sparsify-sweep", "command": command, "package_version": __version__, **tags, **environment})
    progress = Progress("seed", total=len(jobs), steps_per_item=curves_per_job)
    progress.say(f"sparsify {parent.id} in experiment {EXPERIMENT} of {store.uri}: {len(jobs)} × {curves_per_job} "
                 "curves; a line per finished seed follows")
    try:
        frames, origins = [], []
        for job in jobs:
            started = time.monotonic()
            found = finished_curves(store, job.resolved)
            reused = found is not None
            curves, origin = found if reused else record_job(store, parent, job, progress, environment)
            frames.append(curves.assign(seed=job.seed))
            origins.append(origin)
            progress.item_done(f"{'reused' if reused else 'sparsified'}: {job.name}, "
                               f"{duration(time.monotonic() - started)}", steps_skipped=curves_per_job if reused else 0)
        curves = pd.concat(frames, ignore_index=True)
        per_seed = pd.concat([curve_metrics(frame).assign(seed=frame.seed.iloc[0], **origin)
                              for frame, origin in zip(frames, origins)], ignore_index=True)
        summary = summarise(per_seed)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_results(folder, curves, per_seed, summary, command, f"{parent.id} in {store.uri}", environment)
            parent.log_dir(folder, "results")
            out.mkdir(parents=True, exist_ok=True)
            for file in folder.iterdir():
                shutil.copy(file, out / file.name)
    except BaseException as e:
        parent.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        progress.close()
    parent.finish("FINISHED")
    return summary


def sparsify_trained(store: Store, config: Config, seeds: list[int], splits: dict[str, Splits], command: str,
                     out: Path) -> pd.DataFrame:
    """`sparsify`: the protocol's first task trained once per seed, every estimator's curves on its test set."""
    estimators = len(make_estimators(config)) + len(BASELINES)
    return record(store, [trained_job(config, seed, splits) for seed in seeds], estimators * len(ORDERS) * len(SCOPES),
                  {"protocol": config.protocol, "seeds": ",".join(map(str, seeds))}, command, out,
                  next(iter(splits.values())).train.x.device)


def write_results(folder: Path, curves: pd.DataFrame, per_seed: pd.DataFrame, summary: pd.DataFrame, command: str,
                  runs: str, environment: dict[str, str]) -> None:
    curves.to_csv(folder / f"{CURVES_FILE}.gz", index=False, float_format="%.6g")
    per_seed.to_csv(folder / CELLS_FILE, index=False, float_format="%.6g")
    summary.to_csv(folder / SUMMARY_FILE, index=False, float_format="%.6g")
    plot(curves, folder / FIGURE_FILE)
    (folder / "README.md").write_text(readme(summary, per_seed, command, runs, environment))


def readme(summary: pd.DataFrame, per_seed: pd.DataFrame, command: str, runs: str,
           environment: dict[str, str]) -> str:
    def cell(row: pd.Series, metric: str) -> str:
        return Estimate(row[metric], row[f"{metric}_low"], row[f"{metric}_high"], int(row["n"])).short(100)

    tasks, seeds = sorted(summary.task.unique()), sorted(per_seed.seed.unique())
    e = environment
    lines = [
        "# Sparsification curves",
        "",
        "Which weights does an importance say a task needs, and does the task need them? The trained model's weights "
        "(its biases kept) are zeroed in the order of each importance, per layer (the same fraction of every layer) "
        "or globally (one order over the whole network), and the test accuracy and loss are read at every 0.5 % "
        "zeroed; benchmark/sparsify.py says exactly how, ties included. Increasing order, least important first: a "
        "right importance keeps the accuracy longest (a large area under the curve). Decreasing order, most important "
        "first: a right importance collapses it fastest (a small area). `magnitude` (|w|) and `random` are the "
        "baselines.",
        "",
        f"Regenerate: `{command}`",
        "",
        f"Machine: {e['cpu']} ({e['isa']}), torch threads {e['threads']}, {e['device_name']}; torch {e['torch']}, MKL "
        f"{e['mkl']}, oneDNN {e['onednn']}; code at {e['git_commit']}"
        f"{' with uncommitted changes' if e['git_dirty'] == 'True' else ''}. Runs: {runs}, experiment `{EXPERIMENT}`.",
        "",
        f"Seeds {', '.join(map(str, seeds))}. Each cell: the mean over seeds [95 % t-interval] (the interval from "
        f"{MIN_SEEDS} seeds on), in % (areas: of the unit square). `− magnitude`: the estimator's area minus "
        "magnitude's, paired by seed. First below: the smallest fraction zeroed with the accuracy below 90 % / 50 %.",
    ]
    for order in ORDERS:
        for scope in SCOPES:
            for task in tasks:
                rows = summary[(summary.order == order) & (summary.scope == scope) & (summary.task == task)]
                lines += ["", f"## {order.capitalize()} order, {'per layer' if scope == 'layer' else 'global'}"
                          + (f", task {task}" if len(tasks) > 1 else ""), "",
                          "| estimator | area under accuracy | − magnitude | first below 90 % | first below 50 % |",
                          "|---|---|---|---|---|"]
                lines += [f"| {row['estimator']} | {cell(row, 'auc')} | {cell(row, f'auc_minus_{REFERENCE}')} | "
                          f"{cell(row, 'below_90')} | {cell(row, 'below_50')} |" for _, row in rows.iterrows()]
    lines += ["", "## Per seed: area under the accuracy curve (%)", "",
              "| estimator | order | scope | task | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|---|---|---|" + "---|" * len(seeds)]
    for (estimator, order, scope, task), group in per_seed.groupby(KEYS, sort=False):
        area = dict(zip(group.seed, group.auc))
        lines.append(f"| {estimator} | {order} | {scope} | {task} | "
                     + " | ".join(f"{100 * area[s]:.2f}" if s in area else "–" for s in seeds) + " |")
    lines += ["", f"Files: `{FIGURE_FILE}` (increasing order), `{SUMMARY_FILE}` (every metric with its interval and "
              f"its paired difference from {REFERENCE}), `{CELLS_FILE}` (every metric per seed, with the run and "
              "fingerprint it came from), "
              f"`{CURVES_FILE}.gz` (every curve point: estimator, order, scope, task, fraction, accuracy, loss, "
              "seed).", ""]
    return "\n".join(lines)


# --- a logged run's curves (--from-run) ---

@dataclass(frozen=True)
class LoggedRun:
    """A cell run of `run` read from its artifacts: its protocol, its state after `task`, and the importance each
    of its tasks 0 … task was given (the increment logged after it; `run --log-importances all` logs them all)."""

    run_id: str
    config: Config
    seed: int
    task: int
    state_dict: dict[str, Tensor]
    importances: dict[int, Importances]


def fetch(store: Store, run_id: str, path: str, folder: str) -> Path:
    try:
        return store.download(run_id, path, folder)
    except Exception:  # MLflow reports a missing artifact its own way for every kind of store
        hint = " (`run --log-importances all` logs every task's importances)" if "importances" in path else ""
        raise UsageError(f"--from-run {run_id}: the run has no artifact {path}{hint}") from None


def read_logged_run(store: Store, run_id: str, task: int | None, importances: bool = True) -> LoggedRun:
    """What a cell run logged, checked: a UsageError names what is missing. importances=False: the state alone
    (LoggedRun.importances empty)."""
    try:
        (run,) = store.find_runs(run_ids=[run_id])
    except StoreError as e:
        raise UsageError(f"--from-run: {e}") from None
    if run.tags.get("kind") != "cell":
        raise UsageError(f"--from-run {run_id}: a {run.tags.get('kind', 'untagged')} run, not a cell run of "
                         "`run` (one driver, one seed)")
    with tempfile.TemporaryDirectory() as tmp:
        resolved = json.loads(fetch(store, run_id, "config.json", tmp).read_text())
        config = parse_config({k: v for k, v in resolved.items() if k in SECTIONS}, run.tags["protocol"],
                              source=f"run {run_id}'s config.json")
        last = config.data.tasks - 1
        task = last if task is None else task
        if task > last:
            raise UsageError(f"--task {task}: run {run_id} has tasks 0 … {last}")
        state = load_file(fetch(store, run_id, f"tasks/task_{task:02d}/state_dict.safetensors", tmp))
        logged_importances = {}
        for j in range(task + 1 if importances else 0):
            logged_importances[j] = importances_by_estimator(
                load_file(fetch(store, run_id, f"tasks/task_{j:02d}/importances.safetensors", tmp)))
    return LoggedRun(run_id, config, int(resolved["seed"]), task, state, logged_importances)


def check_sequence(store: Store, logged: LoggedRun, sequence: TaskSequence) -> None:
    """The task sequence rebuilt from the run's protocol and seed must be the one the run recorded."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in sequence.record().items():
            path = fetch(store, logged.run_id, name, tmp)
            same = np.array_equal(np.load(path, allow_pickle=False), content) if isinstance(content, np.ndarray) \
                else json.loads(path.read_text()) == json.loads(json.dumps(content))
            if not same:
                raise UsageError(f"--from-run {logged.run_id}: its {name} is not the task sequence this code builds "
                                 "from its protocol and seed")


def sparsify_logged(store: Store, logged: LoggedRun, splits: dict[str, Splits], command: str,
                    out: Path) -> pd.DataFrame:
    """`sparsify --from-run`: the run's state after its task t, each task j ≤ t read on its test set with the
    importance task j was given (magnitude and random: of the weights after task t)."""
    sequence = make_task_sequence(logged.config.data, splits, logged.seed)
    check_sequence(store, logged, sequence)

    def compute(progress: Progress) -> pd.DataFrame:
        model = make_model(logged.config.model).to(sequence.device)
        model.load_state_dict({k: v.to(sequence.device) for k, v in logged.state_dict.items()})
        model.eval()
        return model_curves(model, [Evaluation(j, *sequence.split("test", j), evaluation_head(sequence, j, logged.task),
                                               with_baselines(logged.importances[j], model, logged.seed))
                                    for j in range(logged.task + 1)], progress)

    estimators = len(logged.importances[0]) + len(BASELINES)
    job = Job(f"{logged.run_id}-task{logged.task}", logged.seed,
              {"from_run": logged.run_id, "task": logged.task, "seed": logged.seed}, compute)
    return record(store, [job], (logged.task + 1) * estimators * len(ORDERS) * len(SCOPES),
                  {"protocol": logged.config.protocol, "from_run": logged.run_id, "task": logged.task}, command, out,
                  sequence.device)
