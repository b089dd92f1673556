"""The report's sections, each from what build.analyse found (Findings) and the figures drawn for it."""


import datetime
import platform
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark import __version__
from benchmark.environment import CELLS_FILE, REPO_ROOT, git_commit, git_dirty
from benchmark.report.cells import regenerating_commands
from benchmark.report.collect import RecordedSweep
from benchmark.report.render import Figures, Lines, Section, Table, Text
from benchmark.report.stats import (
    MEASURES,
    MIN_SEEDS,
    PAPER_ACC,
    PAPER_ACC_PROTOCOLS,
    SENSITIVITY,
    TASK_GROUPS,
    ClaimResult,
    Estimate,
    sensitivity_headline,
)
from tracking import Store

PAPER_DRIVER = "mas"  # the driver of the paper's correlation figures
TITLE = "Importance-estimator benchmark report"
AUTHOR_ACC = "author's ACC % (20 runs, mean ± sd)"


@dataclass
class Findings:
    """What the report found in a sweep, computed once (build.analyse) and read by the sections: the sweep, its
    protocols (the first is the one the others are paired against; mixed: more than one; protocol: the one, or
    "mixed"), the lead driver (the paper's, mas, when present), the measure the claims read (param, kind), and the
    tables: forgetting per protocol, claim verdicts per (protocol, driver), the lead's sensitivity table per
    protocol, the controls, and the paired differences between protocols (None with one protocol)."""

    sweep: RecordedSweep
    protocols: list[str]
    lead: str
    param: str
    kind: str
    forgetting_by_protocol: dict[str, pd.DataFrame]
    verdicts: dict[tuple[str, str], list[ClaimResult]]
    sensitivity: dict[str, pd.DataFrame]
    controls: list[pd.DataFrame]
    differences: pd.DataFrame | None

    @property
    def mixed(self) -> bool:
        return len(self.protocols) > 1

    @property
    def protocol(self) -> str:
        return self.protocols[0] if not self.mixed else "mixed"

    @property
    def seeds(self) -> list[int]:
        return sorted(set(self.sweep.cells.seed))

    @property
    def lead_claims(self) -> dict[str, list[ClaimResult]]:
        """The lead driver's verdicts, per protocol whose sweep ran it."""
        return {p: self.verdicts[(p, self.lead)] for p in self.sensitivity}


def summary_section(f: Findings) -> Section:
    """The answers: ACC per driver (per protocol if the sweeps have several, and each driver's difference between
    protocols paired by seed), the controls' paired differences, the paper's claims for the paper's driver —
    first across the ways of measuring a correlation, then on the report's own measure (per protocol side by side
    if several)."""
    sweep, protocol, seeds, lead, controls = f.sweep, f.protocol, f.seeds, f.lead, f.controls
    forgetting_by_protocol, lead_claims, sensitivity = f.forgetting_by_protocol, f.lead_claims, f.sensitivity
    param, kind, differences = f.param, f.kind, f.differences
    experiments = ", ".join(sorted({p.experiment for p in sweep.parents} or {sweep.experiment}))
    blocks = [Text(f"Experiment {experiments}, protocol {protocol}: {len(sweep.drivers)} driver"
                   f"{'s' if len(sweep.drivers) != 1 else ''}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
                   f"({', '.join(map(str, seeds))}). Where these numbers come from: the sections below.")]
    mixed = len(forgetting_by_protocol) > 1
    warnings = []
    if min(table.n.min() for table in forgetting_by_protocol.values()) < MIN_SEEDS:
        warnings.append(f"Fewer than {MIN_SEEDS} seeds (n < {MIN_SEEDS}): no intervals are shown, and every "
                        "verdict is only indicative.")
    if sweep.missing or sweep.not_finished:
        warnings.append(f"Incomplete sweep: {len(sweep.missing) + len(sweep.not_finished)} cell(s) missing or not "
                        "finished (listed below).")
    if mixed:
        warnings.append(f"Sweeps of {len(forgetting_by_protocol)} protocols ({', '.join(forgetting_by_protocol)}): "
                        "every number here and below is per protocol; protocols are compared only by differences "
                        "paired by seed.")
    if warnings:
        blocks.append(Lines(warnings))
    if mixed:
        acc = {p: dict(zip(table.driver, table.ACC)) for p, table in forgetting_by_protocol.items()}
        blocks.append(Table(["driver", *[f"ACC % ({p})" for p in acc]],
                            [[driver, *[column[driver].short(100) if driver in column else "–"
                                        for column in acc.values()]] for driver in sweep.drivers]))
        if len(differences):
            blocks.append(Text("Each driver under one protocol minus under the first, ACC in points, paired by seed: "
                               "mean [95% t-interval] over the seeds both ran (section Paired differences):"))
            blocks.append(Lines([f"{row['driver']}: {row['protocol B']} − {row['protocol A']}: "
                                 f"{row['ACC'].short(100)} over {row['ACC'].n} seeds"
                                 for row in differences.to_dict("records")]))
    else:
        (forgetting,) = forgetting_by_protocol.values()
        author = protocol in PAPER_ACC_PROTOCOLS
        blocks.append(Table(["driver", "ACC % (mean [95% t-interval] over seeds)"] + ([AUTHOR_ACC] if author else []),
                            [[row.driver, row.ACC.short(100)] + ([PAPER_ACC.get(row.driver, "–")] if author else [])
                             for row in forgetting.itertuples()]))
    if controls:
        blocks.append(Text("Controls: each control's ACC minus its estimator's on the same seed, mean over seeds, in "
                           "points (details: section Controls):"))
        in_protocol = (lambda row: f" ({row['protocol']})") if mixed else (lambda row: "")
        blocks.append(Lines([f"{row['driver']} − {row['estimator']}{in_protocol(row)}: "
                             f"{control_difference(row, 'ACC').short(100)}"
                             for table in controls for row in table.to_dict("records")
                             if control_difference(row, "ACC") is not None]))
    if not lead_claims:
        return Section("Summary", "summary", blocks)
    why = "" if lead == PAPER_DRIVER else f" (the paper's driver, {PAPER_DRIVER}, is not in this report)"
    claims = [c.claim for c in next(iter(lead_claims.values()))]
    blocks.append(Text(f"The paper's claims for driver {lead}{why}, each judged per (layer, task) cell on its 95% "
                       "t-interval over seeds, task 0 (before any penalty has acted) apart. Across the "
                       f"{len(SENSITIVITY)} ways of measuring the correlations (Pearson or Spearman × accumulated "
                       "or per-task increment importances × weights alone or weights and biases; section "
                       "Sensitivity of the claims):"))
    if mixed:
        blocks.append(Table(["claim", *sensitivity], [[claim, *[sensitivity_headline(table, claim)
                                                                for table in sensitivity.values()]]
                                                      for claim in claims]))
    else:
        (table,) = sensitivity.values()
        blocks.append(Lines([f"{claim}: {sensitivity_headline(table, claim)}" for claim in claims]))
    blocks.append(Text(f"On this report's measure, Pearson correlations of {kind} importances over each layer's "
                       f"{param} entries (section The paper's claims):"))
    if mixed:
        by_claim = {p: {c.claim: c for c in results} for p, results in lead_claims.items()}
        blocks.append(Table(["claim", *lead_claims], [[claim, *[by_claim[p][claim].summary() if claim in by_claim[p]
                                                                 else "–" for p in lead_claims]]
                                                       for claim in claims]))
    else:
        (results,) = lead_claims.values()
        blocks.append(Lines([f"{c.claim}: {c.summary()}" for c in results]))
    return Section("Summary", "summary", blocks)


def controls_csv(controls: list[pd.DataFrame]) -> pd.DataFrame:
    """Every number of the controls tables, long and in full precision: per protocol, estimator, driver and
    measure the value over seeds and the paired difference from the estimator."""
    rows = []
    for table in controls:
        for row in table.to_dict("records"):
            for key in MEASURES:
                for quantity, e in (("value", row[key]), (f"minus {row['estimator']}, paired by seed",
                                                          control_difference(row, key))):
                    if e is not None:
                        rows.append({"protocol": row["protocol"], "estimator": row["estimator"],
                                     "driver": row["driver"], "measure": key, "quantity": quantity, "mean": e.mean,
                                     "ci_low": e.low, "ci_high": e.high, "n": e.n})
    return pd.DataFrame(rows)


def control_difference(row: dict, key: str) -> Estimate | None:
    """A control_table row's paired difference of one measure (None for the estimator's own row)."""
    return row[f"{key} − {row['estimator']} (paired)"]


def controls_section(controls: list[pd.DataFrame], mixed: bool) -> Section:
    blocks = [Text("Does the per-weight structure of an importance matter, or only its per-tensor scale (README, "
                   "\"Controls\")? Each estimator beside its controls: ACC, BWT and forgetting in percent (points), "
                   "mean [95% t-interval] over seeds; then per control the paired difference, control minus the "
                   "estimator on the same seed, mean [95% t-interval] over the seeds both have (an interval from "
                   f"{MIN_SEEDS} seeds on). All digits: controls.csv.")]
    for table in controls:
        estimator = table.estimator.iloc[0]
        protocol = f" (protocol {table.protocol.iloc[0]})" if mixed else ""
        blocks.append(Text(f"{estimator}{protocol}:"))
        blocks.append(Table(["driver", "n", "ACC %", "BWT (points)", "forgetting (points)",
                             *[f"{key} − {estimator} (paired)" for key in MEASURES]],
                            [[row["driver"], str(row["n"]), *[row[key].short(100) for key in MEASURES],
                              *[control_difference(row, key).short(100) if control_difference(row, key) is not None
                                else "–" for key in MEASURES]]
                             for row in table.to_dict("records")]))
    return Section("Controls", "controls", blocks)


def differences_csv(differences: pd.DataFrame) -> pd.DataFrame:
    """The paired differences between protocols, long and in full precision: per driver, pair of protocols and
    measure, B − A paired by seed."""
    return pd.DataFrame([{"driver": row["driver"], "protocol A": row["protocol A"], "protocol B": row["protocol B"],
                          "measure": key, "mean": row[key].mean, "ci_low": row[key].low, "ci_high": row[key].high,
                          "n": row[key].n} for row in differences.to_dict("records") for key in MEASURES])


def differences_section(differences: pd.DataFrame) -> Section:
    return Section("Paired differences", "paired-differences", [
        Text("The same driver under two protocols: protocol B minus protocol A (the first given) on the same seed — "
             "the same data, permutations and initial weights — mean over the seeds both ran and its 95% t-interval "
             f"over them (t with n − 1 degrees of freedom; an interval from {MIN_SEEDS} seeds on), ACC in points. "
             "BWT and forgetting too, all digits: paired_differences.csv."),
        Table(["driver", "protocol A", "protocol B", "n seeds", "ACC B − A (points) [95% t-interval]"],
              [[row["driver"], row["protocol A"], row["protocol B"], str(row["ACC"].n), row["ACC"].short(100)]
               for row in differences.to_dict("records")]),
    ])


def forgetting_section(forgetting: pd.DataFrame, mixed: bool, acc_figure: Figures, matrix_figures: Figures) -> Section:
    author = AUTHOR_ACC if any(c.startswith("paper ACC") for c in forgetting.columns) else None
    rows = []
    for row in forgetting.to_dict("records"):
        author_acc = [f"{v} %" if (v := row[c]) else "–" for c in forgetting.columns if c.startswith("paper ACC")]
        rows.append([*([row["protocol"]] if mixed else []), row["driver"], str(row["n"]), row["λ"],
                     row["ACC"].short(100), row["BWT"].short(100), row["forgetting"].short(100), *author_acc])
    return Section("Forgetting", "forgetting", [
        Text("Per driver, over seeds: mean and 95% t-interval (from 3 seeds on; n seeds) of ACC (mean accuracy over "
             "all tasks after the last), BWT and forgetting, in percent (points), from each run's "
             "accuracy_matrix.csv. λ and its source (default: shipped protocol, config: your file, user: --lambda, "
             "tuned: Optuna). Three decimals of the fractions, intervals from 2 seeds on: forgetting.csv."),
        Table([*(["protocol"] if mixed else []), "driver", "n", "λ", "ACC %", "BWT (points)", "forgetting (points)"]
              + ([author] if author else []), rows),
        Text("ACC after each task: the mean test accuracy over the tasks seen so far, with 95% t-interval bands "
             f"where a driver has {MIN_SEEDS} seeds or more."),
        acc_figure,
        Text("Accuracy matrices R[i, j]: test accuracy on task j after training task i, mean over seeds."),
        matrix_figures,
    ])


def group_verdict(result: ClaimResult, tasks: str) -> str:
    """"holds (27/27 cells)", "–" where the claim has no cell of that task group."""
    if not result.group(tasks):
        return "–"
    indicative = "; indicative" if result.indicative else ""
    return f"{result.verdict(tasks)} ({result.holding(tasks)}/{len(result.group(tasks))} cells{indicative})"


def claims_section(verdicts: dict[tuple[str, str], list[ClaimResult]], mixed: bool, param: str, kind: str,
                   surface_figures: Figures, heatmap_figures: Figures) -> Section:
    results = {(c.claim, p, driver): c for (p, driver), claims in verdicts.items() for c in claims}
    claims = list(dict.fromkeys(claim for claim, _, _ in results))
    rows = []
    for claim in claims:
        for i, (p, driver) in enumerate(key for key in verdicts if (claim, *key) in results):
            result = results[(claim, p, driver)]
            rows.append([claim if i == 0 else "", *([p] if mixed else []), driver,
                         group_verdict(result, "1+"), group_verdict(result, "0"), result.summary()])
    tests = list(dict.fromkeys(f"{c.claim}: {c.test}." for c in results.values()))
    return Section("The paper's claims", "claims", [
        Text(f"Judged on the Pearson correlations of {kind} importances over each layer's {param} entries; the "
             f"paper's own runs are driven by {PAPER_DRIVER}. Each (layer, task) cell — for the SIG trend each "
             "(pair, task) — gets a verdict from its mean over seeds and 95% t-interval: holds when the whole interval "
             "satisfies the claim, fails when none of it does, undecided when it contains the threshold (with fewer "
             f"than {MIN_SEEDS} seeds the mean decides, and the verdict is only indicative). A claim holds in a group "
             "of tasks when every cell does, fails when any cell fails, else is undecided; task 0, before any "
             "penalty has acted, is judged apart from tasks 1 on. Every cell that does not hold, with its value: "
             "claims.csv."),
        Table(["claim", *(["protocol"] if mixed else []), "driver", "from task 1 on", "at task 0", "in detail"], rows,
              notes=[len(rows[0]) - 1] if rows else []),
        Text("The tests:"),
        Lines(tests),
        Text("Correlation surfaces: for every pair of estimators (and fis–mas², √fis–mas), the Pearson correlation "
             "over (layer, task), mean over seeds, like the paper's Fig. 1–7 — one figure per driver, the paper's "
             "driver first."),
        surface_figures,
        Text(f"Correlation heatmaps: Pearson and Spearman per pair, mean ± half-width of the 95% t-interval (from "
             f"{MIN_SEEDS} seeds on). All values, for every kind and param: correlations_summary.csv."),
        heatmap_figures,
    ])


SENSITIVITY_WORDS = {"pearson": "Pearson", "spearman": "Spearman", "accumulated": "accumulated",
                     "increment": "per-task increment", "weight": "weights", "all": "weights and biases"}


def sensitivity_section(sensitivity: dict[str, pd.DataFrame], lead: str, mixed: bool) -> Section:
    blocks = [Text(f"Driver {lead}: every claim judged as in section The paper's claims, in each of the "
                   f"{len(SENSITIVITY)} ways of measuring the correlations the paper's wording leaves open — Pearson "
                   "or Spearman, importances accumulated over the tasks so far or the task's own increment, over a "
                   "layer's weights alone or its weights and biases together. Per way and task group: the verdict "
                   "(cells where the claim holds / cells). Squaring keeps the ranks, so under Spearman corr(FIS, "
                   "MAS²) equals corr(FIS, MAS) exactly and that claim cannot hold there. All rows: "
                   "claims_sensitivity.csv.")]
    for p, table in sensitivity.items():
        if mixed:
            blocks.append(Text(f"Protocol {p}:"))
        rows = []
        for claim in dict.fromkeys(table.claim):
            named = False  # the claim is named on its first row
            for method, kind, param in SENSITIVITY:
                mine = table[(table.claim == claim) & (table.method == method) & (table.kind == kind)
                             & (table.param == param)].set_index("tasks")
                if not len(mine):
                    continue
                rows.append(["" if named else claim, SENSITIVITY_WORDS[method], SENSITIVITY_WORDS[kind],
                             SENSITIVITY_WORDS[param],
                             *[f"{mine.verdict[t]} ({mine.cells_holding[t]}/{mine.cells[t]})" if t in mine.index
                               else "–" for t in TASK_GROUPS]])
                named = True
        blocks.append(Table(["claim", "correlation", "importances", "entries", *TASK_GROUPS.values()], rows))
        blocks.append(Lines([f"{claim}: {sensitivity_headline(table, claim)}" for claim in dict.fromkeys(table.claim)]))
    return Section("Sensitivity of the claims", "sensitivity", blocks)


def shown_path(path: Path) -> Path:
    """A folder as a command should name it: relative to the repository root if inside it."""
    resolved = path.resolve()
    return resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else path


def regenerate_section(sweep: RecordedSweep, out: Path, report_options: str, allow_dirty: bool) -> Section:
    """The report's first lines: the commit its runs were made at, the commands that remake it with every λ
    pinned, how to rerun a few of its cells here (verify), and whether the code was dirty."""
    cells = sweep.cells
    commits = sorted(set(cells.git_commit) - {"", "unknown"})
    at = (f"Runs made at commit {commits[0]}. At that commit (git checkout {commits[0][:12]})" if len(commits) == 1
          else f"Runs made at commits {', '.join(commits)}. At one of them" if commits else
          "Runs made at a commit they did not record. At that commit")
    folder = shown_path(out)
    experiments = {p.tags.get("protocol"): p.experiment for p in sweep.parents}
    commands, notes = regenerating_commands(cells, sweep.drivers, experiments, folder, report_options)
    dirty = int((cells.git_dirty == "True").sum())
    warnings = ([f"{dirty} of the {len(cells)} runs were made from a working tree with uncommitted changes (the "
                 "commit alone does not hold their code)"] if dirty else []) + \
        (["written with --allow-dirty"] if allow_dirty else [])
    return Section("Regenerate", "regenerate", [
        Text(f"{at}, with MNIST under $BENCHMARK_DATA_DIR, these commands remake this folder, every λ pinned:"),
        Lines(commands + [f"(note) {note}" for note in notes]),
        Text(f"Rerun two of its cells here and judge them against {CELLS_FILE} (bit-identical where the environment "
             f"fingerprint is the same, else inside the published seeds' prediction interval): python -m benchmark "
             f"verify {folder}"),
        *([Lines(warnings)] if warnings else []),
    ])


def environments(cells: pd.DataFrame) -> str:
    """Each environment the cells ran in (CPU, ISA, threads, library versions, device; cells.csv has them per
    cell), with how many cells."""
    described = cells.apply(lambda c: (f"{c.cpu}, {c.isa}, {c.threads} threads, torch {c.torch}, MKL {c.mkl}, oneDNN "
                                       f"{c.onednn}, {c.device_name} (fingerprint {c.fingerprint})")
                            if c.fingerprint else "not recorded", axis=1)
    return "; ".join(f"{what}: {n} cell{'s' if n != 1 else ''}" for what, n in described.value_counts().items())


def about(sweep: RecordedSweep, store: Store, protocol: str, command: str) -> list[list[str]]:
    parent_tags = [p.tags for p in sweep.parents]
    seeds = sorted(set(sweep.cells.seed))

    def from_parents(key: str) -> str:
        return ", ".join(sorted({t.get(key, "?") for t in parent_tags})) or "?"

    started = [datetime.datetime.fromtimestamp(p.start_time / 1000, tz=datetime.timezone.utc) for p in sweep.parents]
    return [
        ["experiment", ", ".join(sorted({p.experiment for p in sweep.parents} or {sweep.experiment}))],
        ["protocol", protocol],
        ["drivers", ", ".join(sweep.drivers)],
        ["seeds", f"{len(seeds)}: {', '.join(map(str, seeds))}"],
        ["sweeps (MLflow parent runs)", ", ".join(p.id for p in sweep.parents) or "none"],
        ["sweep started", ", ".join(s.strftime("%Y-%m-%d %H:%M UTC") for s in started) or "?"],
        ["package version (runs)", from_parents("package_version")],
        ["git commit (runs)", ", ".join(f"{commit or 'not recorded'}{' (dirty tree)' if dirty == 'True' else ''}"
                                        for commit, dirty in sorted(set(zip(sweep.cells.git_commit,
                                                                            sweep.cells.git_dirty))))],
        ["machine (runs)", from_parents("machine")],
        ["environment (runs)", environments(sweep.cells)],
        ["report made", f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on "
                        f"{platform.node()}, package {__version__}, commit {git_commit()}"
                        f"{' (dirty tree)' if git_dirty() == 'True' else ''}"],
        ["store", store.uri],
        ["command", command],
    ]
