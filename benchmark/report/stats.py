"""Means over seeds with 95% t-intervals, differences paired by seed, the forgetting table, and the paper's claims
checked cell by cell on their intervals."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.drivers import base_estimator
from benchmark.metrics import average_accuracy, backward_transfer, forgetting

# The paper author's published results (aakutalev/ewc-features logs): average accuracy after 10 tasks,
# mean ± sd over 20 runs, with the author's best λ; trained on all 60k images, one fixed set of permutations.
PAPER_ACC = {"fis": "95.05 ± 0.33", "mas": "95.53 ± 0.17", "si": "94.32 ± 0.30", "sig": "92.91 ± 0.42",
             "none": "≈ 47–48"}
PAPER_ACC_PROTOCOLS = ("paper", "paper-tuned", "author")  # the protocols the author's accuracies can be set beside
# Fewer seeds than this: the report shows no interval (a t-interval from 2 values spans most of [0, 1]) and a
# claim's verdict is "indicative". The CSV files keep every interval there is.
MIN_SEEDS = 3
MEASURES = ("ACC", "BWT", "forgetting")  # per run, from its accuracy matrix (benchmark.metrics)


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float  # 95% t-interval; NaN with one seed
    high: float
    n: int

    def __str__(self) -> str:
        """The CSV form: 3 decimals, the interval whenever there is one."""
        if self.n < 2 or np.isnan(self.low):
            return f"{self.mean:.3f} (n={self.n})"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def short(self, scale: float = 1.0) -> str:
        """The report's form: 2 decimals (of mean × scale), the interval only from MIN_SEEDS seeds on."""
        if self.n == 0 or np.isnan(self.mean):
            return "–"
        if self.n < MIN_SEEDS or np.isnan(self.low):
            return f"{self.mean * scale:.2f} (n < {MIN_SEEDS})"
        return f"{self.mean * scale:.2f} [{self.low * scale:.2f}, {self.high * scale:.2f}]"


def mean_ci(values) -> Estimate:
    """Mean and 95% t-interval over seeds (NaN values dropped)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n < 2:
        return Estimate(mean, float("nan"), float("nan"), n)
    half = float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return Estimate(mean, mean - half, mean + half, n)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Estimate:
    """a − b paired by seed: the mean of the per-seed differences over the seeds both have a value for, with its
    95% t-interval over those seeds (t with n − 1 degrees of freedom). Seeds are shared between drivers and
    protocols (the same data, permutations and initial weights), so the pairing removes what the seed alone
    decides, and no interval is ever taken over two sets of runs as if they were independent."""
    return mean_ci([a[seed] - b[seed] for seed in sorted(set(a) & set(b))])


def independent_difference(a, b) -> Estimate:
    """mean(a) − mean(b) for runs of one protocol on two disjoint sets of seeds, where no pairing exists: Welch's 95%
    t-interval (Welch–Satterthwaite degrees of freedom); n is the smaller count. NaN values dropped; no interval
    unless each side has ≥ 2 values."""
    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if len(x) == 0 or len(y) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return Estimate(mean, float("nan"), float("nan"), min(len(x), len(y)))
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if vx + vy == 0:
        return Estimate(mean, mean, mean, min(len(x), len(y)))
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = float(stats.t.ppf(0.975, dof) * np.sqrt(vx + vy))
    return Estimate(mean, mean - half, mean + half, min(len(x), len(y)))


def run_measures(R: np.ndarray) -> dict[str, float]:
    return dict(zip(MEASURES, (average_accuracy(R), backward_transfer(R), forgetting(R))))


def forgetting_table(cells: pd.DataFrame, accuracy: dict[str, np.ndarray], drivers: list[str],
                     protocol: str) -> pd.DataFrame:
    rows = []
    for driver in drivers:
        mine = cells[cells.driver == driver]
        measures = [run_measures(accuracy[run_id]) for run_id in mine.run_id]
        lambdas = sorted({(float(lam), src) for lam, src in zip(mine["lambda"], mine.lambda_source)})
        row = {"driver": driver, "n": len(mine),
               "λ": ", ".join(f"{lam:g} ({src})" for lam, src in lambdas)}
        for key in MEASURES:
            row[key] = mean_ci([m[key] for m in measures])
        if protocol in PAPER_ACC_PROTOCOLS:
            row["paper ACC % (author, 20 runs, mean ± sd)"] = PAPER_ACC.get(driver, "")
        rows.append(row)
    return pd.DataFrame(rows)


def measures_by_seed(cells: pd.DataFrame, accuracy: dict[str, np.ndarray], driver: str) -> dict[int, dict]:
    """Seed → the driver's ACC, BWT and forgetting (the mean over its runs, should combined sweeps hold a seed
    twice)."""
    runs = cells[cells.driver == driver]
    return {int(seed): {key: float(np.mean([run_measures(accuracy[r])[key] for r in group.run_id]))
                        for key in MEASURES}
            for seed, group in runs.groupby("seed")}


def measure_difference(a: dict[int, dict], b: dict[int, dict], key: str) -> Estimate:
    """One measure of two measures_by_seed tables, a − b paired by seed."""
    return paired_difference({seed: m[key] for seed, m in a.items()}, {seed: m[key] for seed, m in b.items()})


def controlled_estimators(drivers: list[str]) -> list[str]:
    """The estimators E with a control in `drivers` (shuffled-E or layermean-E), in the order of their controls."""
    return list(dict.fromkeys(base for d in drivers if (base := base_estimator(d))))


def control_table(cells: pd.DataFrame, accuracy: dict[str, np.ndarray], estimator: str) -> pd.DataFrame:
    """E, shuffled-E, layermean-E and uniform (those present) side by side: ACC, BWT and forgetting, mean and
    t-interval over seeds; and per control the paired difference, control minus E on the same seed, mean and
    t-interval over the seeds both have (None for E itself, and where E is not in the cells)."""
    present = set(cells.driver)
    drivers = [d for d in (estimator, f"shuffled-{estimator}", f"layermean-{estimator}", "uniform") if d in present]
    by_seed = {d: measures_by_seed(cells, accuracy, d) for d in drivers}
    reference = by_seed.get(estimator)
    rows = []
    for driver in drivers:
        mine = by_seed[driver]
        row = {"estimator": estimator, "driver": driver, "n": len(mine)}
        row.update({key: mean_ci([m[key] for m in mine.values()]) for key in MEASURES})
        paired = reference is not None and driver != estimator
        row.update({f"{key} − {estimator} (paired)": measure_difference(mine, reference, key) if paired else None
                    for key in MEASURES})
        rows.append(row)
    return pd.DataFrame(rows)


def accuracy_curves(cells: pd.DataFrame, accuracy: dict[str, np.ndarray], driver: str) -> list[Estimate]:
    """ACC over the tasks seen so far, after each task, with its interval over seeds."""
    runs = [accuracy[r] for r in cells[cells.driver == driver].run_id]
    tasks = len(runs[0])
    return [mean_ci([average_accuracy(R, after_task=i) for R in runs]) for i in range(tasks)]


def mean_accuracy_matrix(cells: pd.DataFrame, accuracy: dict[str, np.ndarray], driver: str) -> np.ndarray:
    return np.mean([accuracy[r] for r in cells[cells.driver == driver].run_id], axis=0)


def correlation_summary(correlations: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% interval over seeds for every (protocol, driver, kind, param, method, pair, layer, task): protocols
    apart, one value per seed (a seed's runs averaged, should combined sweeps hold it twice)."""
    keys = ["protocol", "driver", "kind", "param", "method", "estimator_a", "estimator_b", "layer", "task"]
    per_seed = correlations.groupby([*keys, "seed"], sort=True, observed=True).value.mean()
    rows = []
    for key, values in per_seed.groupby(level=keys, sort=True, observed=True):
        e = mean_ci(values)
        rows.append((*key, e.mean, e.low, e.high, e.n))
    return pd.DataFrame(rows, columns=[*keys, "mean", "ci_low", "ci_high", "n"])


def layer_means(correlations: pd.DataFrame, pairs: list[tuple[str, str]], method: str) -> pd.DataFrame:
    """Per pair and layer: each seed's mean over tasks, then the mean and 95% t-interval over seeds — the
    beyond-the-paper table (Benzing's MAS ≈ AF and SI ≈ √SOS, the Fisher variants). Pairs absent: left out."""
    rows = []
    for a, b in pairs:
        series = _series(correlations, a, b, method)
        if len(series):
            per_seed = series.groupby(["layer", "seed"], observed=True).value.mean()
            rows.append({"pair": f"{a} – {b}", **{layer: mean_ci(per_seed[layer])
                                                   for layer in layer_order(series.layer)}})
    return pd.DataFrame(rows)


def protocol_differences(cells: pd.DataFrame, accuracy: dict[str, np.ndarray], protocols: list[str]) -> pd.DataFrame:
    """Each driver under every other protocol B minus under the first, A, paired by seed: per measure the mean
    difference and its t-interval over the seeds both protocols ran (n). The drivers both protocols ran."""
    reference, rows = protocols[0], []
    under = {p: cells[cells.protocol == p] for p in protocols}
    for other in protocols[1:]:
        for driver in [d for d in dict.fromkeys(cells.driver) if d in set(under[reference].driver)
                       and d in set(under[other].driver)]:
            a, b = (measures_by_seed(under[p], accuracy, driver) for p in (reference, other))
            rows.append({"driver": driver, "protocol A": reference, "protocol B": other,
                         **{key: measure_difference(b, a, key) for key in MEASURES}})
    return pd.DataFrame(rows, columns=["driver", "protocol A", "protocol B", *MEASURES])


# --- the paper's claims (arXiv 2211.17012), judged cell by cell on their 95% intervals over seeds ---

HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"
# Task 0 apart: the importances after the first task come from a network no penalty has shaped yet (every driver's
# run is the same there); from task 1 on, each driver's penalty has acted.
TASK_GROUPS = {"1+": "from task 1 on", "0": "at task 0"}
HOLDING = {"1+": "holds from task 1 on in {cells}/{cells} cells", "0": "at task 0 holds in {cells}/{cells} cells"}
NAMED = 4  # cells named in a summary line; claims.csv lists every one
# The ways of measuring a correlation the paper's wording leaves open: the sensitivity table judges every claim in
# each (Pearson/Spearman × importances accumulated over tasks or the task's increment × weights alone or weights
# and biases together).
SENSITIVITY = [(method, kind, param) for method in ("pearson", "spearman") for kind in ("accumulated", "increment")
               for param in ("weight", "all")]


def above(e: Estimate, threshold: float) -> str:
    """The verdict on "value > threshold" in one cell: holds when its whole 95% interval is above the threshold,
    fails when none of it is, undecided when the interval contains it. Fewer than MIN_SEEDS seeds: the mean
    decides (the claim's verdict then says "indicative"); no value at all: undecided."""
    if e.n == 0:
        return UNDECIDED
    if e.n < MIN_SEEDS or np.isnan(e.low):
        return HOLDS if e.mean > threshold else FAILS
    return HOLDS if e.low > threshold else FAILS if e.high <= threshold else UNDECIDED


def overall(verdicts) -> str:
    """Holds if every part holds, fails if any fails, else undecided."""
    verdicts = list(verdicts)
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else UNDECIDED


@dataclass(frozen=True)
class Cell:
    """One cell of a claim — a (layer, task), for the SIG trend a (pair, task) — with what its test read."""
    where: str  # the layer; for the SIG trend the pair
    task: int
    readings: tuple[tuple[str, Estimate], ...]  # (what, its estimate over seeds); a threshold's: one, unnamed
    verdict: str

    @property
    def tasks(self) -> str:
        return "0" if self.task == 0 else "1+"

    def described(self) -> str:
        """"fc2 (0.80 [0.77, 0.82], undecided)"; from task 1 on "fc2 at task 3 (…)"."""
        name = self.where if self.task == 0 else f"{self.where} at task {self.task}"
        read = ", ".join(f"{what} {e.short()}" if what else e.short() for what, e in self.readings)
        return f"{name} ({read}, {self.verdict})"


@dataclass(frozen=True)
class ClaimResult:
    claim: str
    test: str
    cells: list[Cell]
    seeds: int
    trend: bool = False  # a trend judged per (pair, task): the summary says at which tasks it holds

    def group(self, tasks: str) -> list[Cell]:
        return [c for c in self.cells if c.tasks == tasks]

    def groups(self) -> list[str]:
        """The task groups the claim has cells in, from task 1 on first."""
        return [tasks for tasks in TASK_GROUPS if self.group(tasks)]

    def verdict(self, tasks: str) -> str:
        return overall(c.verdict for c in self.group(tasks))

    def holding(self, tasks: str) -> int:
        return sum(c.verdict == HOLDS for c in self.group(tasks))

    def not_holding(self, tasks: str) -> list[Cell]:
        """The cells where the claim does not hold, those where it fails first."""
        return sorted((c for c in self.group(tasks) if c.verdict != HOLDS), key=lambda c: c.verdict != FAILS)

    @property
    def indicative(self) -> str:
        """"" from MIN_SEEDS seeds on, else why every verdict is only indicative."""
        return "" if self.seeds >= MIN_SEEDS else f"only {self.seeds} seed{'s' if self.seeds != 1 else ''}: indicative"

    def named(self, tasks: str) -> str:
        """The first NAMED cells that do not hold, described; how many more."""
        short = self.not_holding(tasks)
        more = f" and {len(short) - NAMED} more" if len(short) > NAMED else ""
        return ", ".join(c.described() for c in short[:NAMED]) + more

    def summary(self) -> str:
        """"holds from task 1 on in 27/27 cells; at task 0 fails on fc2 (0.80 [0.77, 0.82], undecided)"."""
        parts = []
        for tasks in self.groups():
            cells = len(self.group(tasks))
            held = self.holding(tasks)
            parts.append(HOLDING[tasks].format(cells=cells) if held == cells else
                         f"{TASK_GROUPS[tasks]} fails on {self.named(tasks)}"
                         + (f" ({held}/{cells} cells hold)" if cells - held > NAMED else ""))
        if self.trend:
            tasks = sorted({c.task for c in self.cells})
            holding = [t for t in tasks if all(c.verdict == HOLDS for c in self.cells if c.task == t)]
            parts.append(f"the trend holds at {task_list(holding)} of {len(tasks)}")
        return "; ".join(parts) + (f" ({self.indicative})" if self.indicative else "")

    def rows(self) -> list[dict]:
        """claims.csv's rows of this claim: one per task group."""
        return [{"claim": self.claim, "tasks": tasks, "verdict": self.verdict(tasks),
                 "cells_holding": self.holding(tasks), "cells": len(self.group(tasks)),
                 "fraction_holding": self.holding(tasks) / len(self.group(tasks)), "seeds": self.seeds,
                 "indicative": bool(self.indicative),
                 "not_holding": "; ".join(c.described() for c in self.not_holding(tasks)), "test": self.test}
                for tasks in self.groups()]


def task_list(tasks: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → "tasks 0–2, 5, 7–8"; [4] → "task 4"; [] → "no task"."""
    if not tasks:
        return "no task"
    runs = [[tasks[0], tasks[0]]]
    for task in tasks[1:]:
        if task == runs[-1][1] + 1:
            runs[-1][1] = task
        else:
            runs.append([task, task])
    ranges = ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in runs)
    return f"task{'s' if len(tasks) > 1 else ''} {ranges}"


def _series(correlations: pd.DataFrame, a: str, b: str, method: str = "pearson") -> pd.DataFrame:
    """Values of pair (a, b) by one method, one row per (seed, layer, task)."""
    rows = correlations[(correlations.estimator_a == a) & (correlations.estimator_b == b)
                        & (correlations.method == method)]
    return rows[["seed", "layer", "task", "value"]]


def layer_order(layers: pd.Series) -> list[str]:
    """The layers present, input to output: the model's order (collect's categorical column), or the order they
    first appear in (a table built from one in that order)."""
    present = set(layers)
    order = layers.cat.categories if isinstance(layers.dtype, pd.CategoricalDtype) else dict.fromkeys(layers)
    return [str(layer) for layer in order if layer in present]


def _by_cell(correlations: pd.DataFrame, a: str, b: str, method: str) -> dict[tuple[str, int], dict[int, float]]:
    """Pair (a, b) by one method: (layer, task) → {seed: value}, task by task, each input to output. A seed's runs
    are averaged, should combined sweeps hold it twice: one value per seed."""
    series = _series(correlations, a, b, method)
    values = series.groupby(["layer", "task", "seed"], observed=True).value.mean()
    cells: dict[tuple[str, int], dict[int, float]] = {}
    for (layer, task, seed), value in values.items():
        cells.setdefault((str(layer), int(task)), {})[int(seed)] = float(value)
    depth = {layer: i for i, layer in enumerate(layer_order(series.layer))}
    return dict(sorted(cells.items(), key=lambda item: (item[0][1], depth[item[0][0]])))


def check_claims(correlations: pd.DataFrame, method: str = "pearson") -> list[ClaimResult]:
    """The paper's claims on the correlations by `method` in `correlations`: the rows of one driver, one protocol,
    one kind and one param (several seeds). A claim whose pairs are absent is left out."""
    seeds = correlations.seed.nunique()
    results = []

    def threshold_claim(claim: str, a: str, b: str, threshold: float) -> None:
        cells = [Cell(layer, task, (("", e := mean_ci(list(values.values()))),), above(e, threshold))
                 for (layer, task), values in _by_cell(correlations, a, b, method).items()]
        results.append(ClaimResult(claim, f"per (layer, task) cell, the mean over seeds of corr({a}, {b}) with its "
                                          f"95% t-interval: above {threshold}", cells, seeds))

    threshold_claim("MAS–FIS > 0.8 on all layers and tasks", "fis", "mas", 0.8)

    plain, squared = _by_cell(correlations, "fis", "mas", method), _by_cell(correlations, "fis", "mas^2", method)
    cells = [Cell(layer, task, (("", e := paired_difference(squared[(layer, task)], plain[(layer, task)])),),
                  above(e, 0)) for layer, task in plain if (layer, task) in squared]
    results.append(ClaimResult("corr(FIS, MAS²) > corr(FIS, MAS)",
                               "per (layer, task) cell, corr(fis, mas^2) − corr(fis, mas) paired by seed, mean and "
                               "95% t-interval: above 0", cells, seeds))

    threshold_claim("MAS–SI > 0.8", "mas", "si", 0.8)
    threshold_claim("FIS–SI > 0.75", "fis", "si", 0.75)

    # SIG: the paper reads ≈ 0.6 on the first layer and ≈ 0 or negative on the output layer, a fall with depth;
    # tested as stated, per pair and task: first layer above the output layer (paired by seed), output layer not
    # above 0
    cells = []
    for other, pair in (("fis", "SIG–FIS"), ("mas", "SIG–MAS"), ("si", "SIG–SI")):
        by_cell = _by_cell(correlations, other, "sig", method)
        layers = list(dict.fromkeys(layer for layer, _ in by_cell))
        if len(layers) < 2:
            continue
        first, output = layers[0], layers[-1]
        for task in sorted({task for _, task in by_cell}):
            fall = paired_difference(by_cell[(first, task)], by_cell[(output, task)])
            last = mean_ci(list(by_cell[(output, task)].values()))
            verdict = overall([above(fall, 0), FAILS if above(last, 0) == HOLDS else HOLDS])
            cells.append(Cell(pair, task, ((f"{first} − {output}", fall), (output, last)), verdict))
    results.append(ClaimResult(
        "SIG vs MAS/FIS/SI ≈ 0.6 on the first layer, falling to ≈ 0 or negative on the output layer",
        "per pair (SIG–FIS, SIG–MAS, SIG–SI) and task: first layer minus output layer, paired by seed, above 0, and "
        "the output layer's 95% t-interval not above 0", cells, seeds, trend=True))
    return [r for r in results if r.cells]


def claims_sensitivity(correlations: pd.DataFrame) -> pd.DataFrame:
    """Every claim judged in each way of measuring in SENSITIVITY (those the correlations hold): one row per
    (claim, method, kind, param, task group). correlations: one driver and one protocol, every kind and param."""
    rows = []
    for method, kind, param in SENSITIVITY:
        chosen = correlations[(correlations.kind == kind) & (correlations.param == param)
                              & (correlations.method == method)]
        if len(chosen):
            rows += [{"method": method, "kind": kind, "param": param, **row}
                     for result in check_claims(chosen, method) for row in result.rows()]
    return pd.DataFrame(rows)


def sensitivity_headline(sensitivity: pd.DataFrame, claim: str) -> str:
    """What the sensitivity table says of one claim: "from task 1 on holds in 6 of 8 combinations (undecided in
    2); at task 0 holds in 2 of 8 (fails in 6)"."""
    mine = sensitivity[sensitivity.claim == claim]
    parts = []
    for tasks, where in TASK_GROUPS.items():
        counts = mine[mine.tasks == tasks].verdict.value_counts()
        if counts.sum():
            others = ", ".join(f"{v} in {counts[v]}" for v in (FAILS, UNDECIDED) if counts.get(v, 0))
            parts.append(f"{where} holds in {counts.get(HOLDS, 0)} of {counts.sum()} combinations"
                         + (f" ({others})" if others else ""))
    return "; ".join(parts)
