"""`python -m benchmark report`: forgetting and accuracy with confidence intervals, the paper's correlation
surfaces from your own runs, and its claims checked — as report/index.html, report/README.md, figures and CSVs,
also logged to the sweep's MLflow parent run.

The pages lead with the answers (a summary: ACC per driver beside the author's, the paper's claims for the paper's
driver), then the details, each section with its figures; they are rendered from templates (render.py).

Reads only the artifact contract of `benchmark run` (config.json, accuracy_matrix.csv, correlations.csv).
"""

import datetime
import platform
from pathlib import Path

import pandas as pd

from benchmark import __version__
from benchmark.environment import CELLS_FILE, REPO_ROOT, git_commit, git_dirty
from benchmark.errors import UsageError
from benchmark.report import figures
from benchmark.report.cells import cells_table, regenerating_commands
from benchmark.report.collect import Sweep, load_sweep
from benchmark.report.render import Figures, Lines, Section, Table, Text, render
from benchmark.report.stats import (
    MEASURES,
    MIN_SEEDS,
    PAPER_ACC,
    PAPER_ACC_PROTOCOLS,
    ClaimResult,
    Estimate,
    accuracy_curves,
    check_claims,
    control_table,
    controlled_estimators,
    correlation_summary,
    forgetting_table,
    layer_means,
    mean_accuracy_matrix,
)
from tracking import Store

PAPER_DRIVER = "mas"  # the driver of the paper's correlation figures
# the explanations the further estimators test (issue 7): Benzing's MAS ≈ AF ≈ √Fisher and SI ≈ √SOS, the paper's
# FIS ~ MAS², and how far the ways of computing a Fisher are from each other
BEYOND_PAIRS = [("mas", "abs_fisher"), ("sqrt(fis)", "mas"), ("fis", "mas^2"), ("fis_exact", "fis"),
                ("si", "sqrt(sos)"), ("fis_sampled", "fis_exact"), ("fis_batched", "fis")]
TITLE = "Importance-estimator benchmark report"
AUTHOR_ACC = "author's ACC % (20 runs, mean ± sd)"


def build_report(store: Store, out: Path, sweep_ids: list[str] | None = None, run_ids: list[str] | None = None,
                 param: str = "weight", kind: str = "accumulated", command: str = "", compact: bool = False,
                 for_results: bool = False, allow_dirty: bool = False) -> Path:
    """The report on the given sweeps (parent runs) or cell runs, written to `out`; returns its index.html.
    compact: PNG figures alone at a lower resolution and correlations_summary.csv gzipped, its numbers to 6
    significant digits (results/: a folder within 5 MB). for_results: `out` is in the repository's results/, which
    publishes runs of committed code only — runs recorded with a dirty tree are refused unless allow_dirty (said at
    the top of the report)."""
    sweep = load_sweep(store, sweep_ids, run_ids)
    dirty = int((sweep.cells.git_dirty == "True").sum())
    if for_results and dirty and not allow_dirty:
        raise UsageError(f"{dirty} of the {len(sweep.cells)} runs were made from a working tree with uncommitted "
                         "changes (tag git_dirty): results/ publishes runs of committed code; rerun them on a clean "
                         "tree, or pass --allow-dirty")
    out.mkdir(parents=True, exist_ok=True)
    protocols = sorted(set(sweep.cells.protocol))
    protocol = protocols[0] if len(protocols) == 1 else "mixed"

    forgetting = forgetting_table(sweep.cells, sweep.accuracy, sweep.drivers, protocol)
    chosen = sweep.correlations[(sweep.correlations.kind == kind) & (sweep.correlations.param == param)]
    summary = correlation_summary(sweep.correlations)
    pairs = list(dict.fromkeys(zip(chosen.estimator_a, chosen.estimator_b)))
    drivers = sorted(sweep.drivers, key=lambda d: (d != PAPER_DRIVER, sweep.drivers.index(d)))

    verdicts = {driver: check_claims(chosen[chosen.driver == driver]) for driver in drivers}
    claims = pd.DataFrame([{"driver": driver, "claim": c.claim, "test": c.test, "measured (per layer)": c.measured,
                            "verdict": c.verdict, "holds": c.holds}
                           for driver, results in verdicts.items() for c in results])
    # sweeps of several protocols: the answers per protocol, side by side (the detailed tables pool them)
    mixed = len(protocols) > 1
    # (a protocol whose sweep lacks the lead driver has no column: its claims are not measured)
    lead_by_protocol = {p: check_claims(chosen[(chosen.driver == drivers[0]) & (chosen.protocol == p)])
                        for p in protocols if drivers[0] in set(sweep.cells[sweep.cells.protocol == p].driver)} \
        if mixed else {}
    forgetting_by_protocol = {p: forgetting_table(sweep.cells[sweep.cells.protocol == p], sweep.accuracy,
                                                  sweep.drivers, p) for p in protocols} if mixed else {}
    controls = []  # issue 13: each estimator beside its controls, per protocol
    for p in protocols:
        cells = sweep.cells[sweep.cells.protocol == p]
        for estimator in controlled_estimators([d for d in sweep.drivers if d in set(cells.driver)]):
            controls.append(control_table(cells, sweep.accuracy, estimator).assign(protocol=p))
    lead = chosen[chosen.driver == drivers[0]]
    overlap = sorted(m for m in set(chosen.method) if m.startswith("jaccard_top"))
    beyond = {method: layer_means(lead, BEYOND_PAIRS, method) for method in ["pearson", *overlap]}

    curves = {d: accuracy_curves(sweep.cells, sweep.accuracy, d) for d in sweep.drivers}
    folder = figures.FigureFolder(out, **(figures.COMPACT if compact else {}))
    acc_figure = figures.accuracy_curves(curves, folder)
    matrix_figures = [figures.accuracy_matrix(mean_accuracy_matrix(sweep.cells, sweep.accuracy, driver), driver,
                                              int((sweep.cells.driver == driver).sum()), folder)
                      for driver in sweep.drivers]
    mine = summary[(summary.kind == kind) & (summary.param == param)]
    surface_figures, heatmap_figures = [], []
    for driver in drivers:
        title = (f"driver {driver}: Pearson correlation of {kind} importances over each layer's {param} entries, "
                 f"mean over {int((sweep.cells.driver == driver).sum())} seed(s)")
        surface_figures.append(figures.correlation_surfaces(mine[mine.driver == driver], pairs, driver, title, folder))
        heatmap_figures.append(figures.correlation_heatmaps(mine[mine.driver == driver], pairs, driver, title, folder))

    summary_file = "correlations_summary.csv" + (".gz" if compact else "")  # pandas reads either
    data_files = ["forgetting.csv", "claims.csv", summary_file]
    summary.to_csv(out / summary_file, index=False, float_format="%.6g" if compact else None)
    cells_table(sweep).to_csv(out / CELLS_FILE, index=False)
    data_files.append(CELLS_FILE)
    forgetting.astype(str).to_csv(out / "forgetting.csv", index=False)
    claims.to_csv(out / "claims.csv", index=False)
    for method, table in beyond.items():
        if len(table):
            table.astype(str).to_csv(out / f"beyond_{method}.csv", index=False)
            data_files.append(f"beyond_{method}.csv")
    if controls:
        controls_csv(controls).to_csv(out / "controls.csv", index=False)
        data_files.append("controls.csv")

    seeds = sorted(set(sweep.cells.seed))
    sections = [summary_section(sweep, forgetting, verdicts, drivers[0], protocol, seeds, param, kind,
                                forgetting_by_protocol, lead_by_protocol, controls)]
    gaps = [f"missing: {m}" for m in sweep.missing] + [f"not finished: {m}" for m in sweep.not_finished]
    if gaps:
        sections.append(Section("Incomplete sweep", "incomplete", [Text("These cells are not in the report:"),
                                                                   Lines(gaps)]))
    sections.append(forgetting_section(forgetting, Figures([acc_figure], folder.link),
                                       Figures(matrix_figures, folder.link)))
    if controls:
        sections.append(controls_section(controls, mixed))
    sections.append(claims_section(verdicts, param, kind, Figures(surface_figures, folder.link),
                                   Figures(heatmap_figures, folder.link)))
    for method, table in beyond.items():
        if len(table):
            sections.append(Section(f"Beyond the paper: {method}", f"beyond-{method}", [
                Text(f"Driver {drivers[0]}; {method} of {kind} importances over each layer's {param} entries: per "
                     f"seed the mean over tasks, then the mean [95% t-interval] over seeds (an interval from "
                     f"{MIN_SEEDS} seeds on). All digits: beyond_{method}.csv."),
                Table(list(table.columns), [[cell if isinstance(cell, str) else cell.short() for cell in row]
                                            for row in table.itertuples(index=False)])]))
    sections.append(Section("About this report", "about", [Table(["", ""], about(sweep, store, protocol, command))]))

    report_options = (" --compact" if compact else "") + (f" --param {param}" if param != "weight" else "") + \
        (f" --kind {kind}" if kind != "accumulated" else "")
    sections = [regenerate_section(sweep, out, report_options, allow_dirty), *sections]
    (out / "README.md").write_text(render("report.md.jinja", TITLE, sections, data_files))
    (out / "index.html").write_text(render("report.html.jinja", TITLE, sections, data_files))
    for parent in sweep.parents[:1]:
        store.open_run(parent.id).log_dir(out, "report")
    return out / "index.html"


def claim_headline(result: ClaimResult) -> str:
    """What decides a claim, in a few words: the lowest minimum over tasks, or (for SIG) first → last layer."""
    if result.measurements[0].at_task is not None:
        layer, m = min(((layer, m) for m in result.measurements for layer in m.values),
                       key=lambda item: item[1].values[item[0]].mean)
        return f"lowest: {m.pair}, {layer} {m.values[layer].short()} at task {m.at_task[layer]}"
    return "; ".join(f"{m.pair} " + " → ".join(f"{layer} {e.mean:.2f}" for layer, e in m.values.items())
                     for m in result.measurements)


def summary_section(sweep: Sweep, forgetting: pd.DataFrame, verdicts: dict[str, list[ClaimResult]], lead: str,
                    protocol: str, seeds: list[int], param: str, kind: str,
                    forgetting_by_protocol: dict[str, pd.DataFrame], lead_by_protocol: dict[str, list[ClaimResult]],
                    controls: list[pd.DataFrame]) -> Section:
    """The answers: ACC per driver (per protocol if the sweeps have several), the controls' paired differences,
    the paper's claims for the paper's driver (per protocol side by side if several)."""
    experiments = ", ".join(sorted({p.experiment for p in sweep.parents} or {sweep.experiment}))
    blocks = [Text(f"Experiment {experiments}, protocol {protocol}: {len(sweep.drivers)} driver"
                   f"{'s' if len(sweep.drivers) != 1 else ''}, {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
                   f"({', '.join(map(str, seeds))}). Where these numbers come from: the sections below.")]
    warnings = []
    if forgetting.n.min() < MIN_SEEDS:
        warnings.append(f"Fewer than {MIN_SEEDS} seeds (n < {MIN_SEEDS}): no intervals are shown, and every "
                        "verdict is only indicative.")
    if sweep.missing or sweep.not_finished:
        warnings.append(f"Incomplete sweep: {len(sweep.missing) + len(sweep.not_finished)} cell(s) missing or not "
                        "finished (listed below).")
    if forgetting_by_protocol:
        warnings.append(f"Sweeps of {len(forgetting_by_protocol)} protocols ({', '.join(forgetting_by_protocol)}): "
                        "the ACC and the claims here are per protocol; the detailed tables below pool each driver's "
                        "cells across protocols.")
    if warnings:
        blocks.append(Lines(warnings))
    if forgetting_by_protocol:
        acc = {p: table.set_index("driver").ACC for p, table in forgetting_by_protocol.items()}
        blocks.append(Table(["driver", *[f"ACC % ({p})" for p in acc]],
                            [[driver, *[column[driver].short(100) for column in acc.values()]]
                             for driver in forgetting.driver]))
    else:
        author = protocol in PAPER_ACC_PROTOCOLS
        blocks.append(Table(["driver", "ACC % (mean [95% t-interval] over seeds)"] + ([AUTHOR_ACC] if author else []),
                            [[row.driver, row.ACC.short(100)] + ([PAPER_ACC.get(row.driver, "–")] if author else [])
                             for row in forgetting.itertuples()]))
    if controls:
        blocks.append(Text("Controls: each control's ACC minus its estimator's on the same seed, mean over seeds, in "
                           "points (details: section Controls):"))
        in_protocol = (lambda row: f" ({row['protocol']})") if forgetting_by_protocol else (lambda row: "")
        blocks.append(Lines([f"{row['driver']} − {row['estimator']}{in_protocol(row)}: "
                             f"{paired_difference(row, 'ACC').short(100)}"
                             for table in controls for row in table.to_dict("records")
                             if paired_difference(row, "ACC") is not None]))
    why = "" if lead == PAPER_DRIVER else f" (the paper's driver, {PAPER_DRIVER}, is not in this report)"
    blocks.append(Text(f"The paper's claims for driver {lead}{why}, on Pearson correlations of {kind} importances "
                       f"over each layer's {param} entries:"))
    if lead_by_protocol:
        claims = [c.claim for c in next(iter(lead_by_protocol.values()))]
        by_claim = {p: {c.claim: c for c in results} for p, results in lead_by_protocol.items()}
        blocks.append(Table(["claim", *lead_by_protocol],
                            [[claim, *[f"{by_claim[p][claim].verdict} — {claim_headline(by_claim[p][claim])}"
                                       for p in lead_by_protocol]] for claim in claims]))
    else:
        blocks.append(Lines([f"{c.claim}: {c.verdict} — {claim_headline(c)}" for c in verdicts[lead]]))
    return Section("Summary", "summary", blocks)


def controls_csv(controls: list[pd.DataFrame]) -> pd.DataFrame:
    """Every number of the controls tables, long and in full precision: per protocol, estimator, driver and
    measure the value over seeds and the paired difference from the estimator."""
    rows = []
    for table in controls:
        for row in table.to_dict("records"):
            for key in MEASURES:
                for quantity, e in (("value", row[key]), (f"minus {row['estimator']}, paired by seed",
                                                          paired_difference(row, key))):
                    if e is not None:
                        rows.append({"protocol": row["protocol"], "estimator": row["estimator"],
                                     "driver": row["driver"], "measure": key, "quantity": quantity, "mean": e.mean,
                                     "ci_low": e.low, "ci_high": e.high, "n": e.n})
    return pd.DataFrame(rows)


def paired_difference(row: dict, key: str) -> Estimate | None:
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
                              *[paired_difference(row, key).short(100) if paired_difference(row, key) is not None
                                else "–" for key in MEASURES]]
                             for row in table.to_dict("records")]))
    return Section("Controls", "controls", blocks)


def forgetting_section(forgetting: pd.DataFrame, acc_figure: Figures, matrix_figures: Figures) -> Section:
    author = AUTHOR_ACC if any(c.startswith("paper ACC") for c in forgetting.columns) else None
    rows = []
    for row in forgetting.to_dict("records"):
        author_acc = [f"{v} %" if (v := row[c]) else "–" for c in forgetting.columns if c.startswith("paper ACC")]
        rows.append([row["driver"], str(row["n"]), row["λ"], row["ACC"].short(100), row["BWT"].short(100),
                     row["forgetting"].short(100), *author_acc])
    return Section("Forgetting", "forgetting", [
        Text("Per driver, over seeds: mean and 95% t-interval (from 3 seeds on; n seeds) of ACC (mean accuracy over "
             "all tasks after the last), BWT and forgetting, in percent (points), from each run's "
             "accuracy_matrix.csv. λ and its source (default: shipped protocol, config: your file, user: --lambda, "
             "tuned: Optuna). Three decimals of the fractions, intervals from 2 seeds on: forgetting.csv."),
        Table(["driver", "n", "λ", "ACC %", "BWT (points)", "forgetting (points)"] + ([author] if author else []),
              rows),
        Text("ACC after each task: the mean test accuracy over the tasks seen so far, with 95% t-interval bands "
             f"where a driver has {MIN_SEEDS} seeds or more."),
        acc_figure,
        Text("Accuracy matrices R[i, j]: test accuracy on task j after training task i, mean over seeds."),
        matrix_figures,
    ])


def claims_section(verdicts: dict[str, list[ClaimResult]], param: str, kind: str, surface_figures: Figures,
                   heatmap_figures: Figures) -> Section:
    drivers = list(verdicts)
    results = {(c.claim, driver): c for driver in drivers for c in verdicts[driver]}
    claims = list(dict.fromkeys(c.claim for c in verdicts[drivers[0]]))
    layers = list(dict.fromkeys(layer for c in results.values() for m in c.measurements for layer in m.values))
    rows = []
    for claim in claims:
        for driver in drivers:
            result = results[(claim, driver)]
            for i, m in enumerate(result.measurements):
                tasks = ("mean over tasks" if m.at_task is None else
                         " · ".join(f"{layer} {m.at_task[layer]}" for layer in layers if layer in m.at_task))
                first_of_claim = i == 0 and driver == drivers[0]
                rows.append([claim if first_of_claim else "", driver if i == 0 else "", m.pair,
                             *[m.values[layer].short() if layer in m.values else "–" for layer in layers],
                             tasks, result.verdict if i == 0 else ""])
    tests = list(dict.fromkeys(f"{c.claim}: {c.test}." for c in verdicts[drivers[0]]))
    return Section("The paper's claims", "claims", [
        Text(f"Judged on the Pearson correlations of {kind} importances over each layer's {param} entries; the "
             f"paper's own runs are driven by {PAPER_DRIVER}. One row per claim and driver (the SIG claim: one per "
             "pair), the claim named on its first row; per layer the value the test reads, mean over seeds [95% "
             f"t-interval] (an interval from {MIN_SEEDS} seeds on); the last column but one: the task where the "
             "minimum over tasks is, per layer. Three decimals: claims.csv."),
        Table(["claim", "driver", "pair", *layers, "task of the minimum", "verdict"], rows,
              notes=[3 + len(layers)]),
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


def shown_path(path: Path) -> Path:
    """A folder as a command should name it: relative to the repository root if inside it."""
    resolved = path.resolve()
    return resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else path


def regenerate_section(sweep: Sweep, out: Path, report_options: str, allow_dirty: bool) -> Section:
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


def about(sweep: Sweep, store: Store, protocol: str, command: str) -> list[list[str]]:
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
