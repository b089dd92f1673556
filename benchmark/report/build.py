"""build_report: a sweep read from the store, analysed once (analyse → Findings), its files written and its
sections assembled (sections.py), rendered to README.md and index.html (render.py)."""

from pathlib import Path

import pandas as pd

from benchmark.drivers import REPORTED_PAIRS
from benchmark.environment import CELLS_FILE
from benchmark.errors import UsageError
from benchmark.report import figures
from benchmark.report.cells import cells_table
from benchmark.report.collect import RecordedSweep, load_sweep
from benchmark.report.render import Figures, Lines, Section, Table, Text, render
from benchmark.report.sections import (
    PAPER_DRIVER,
    TITLE,
    Findings,
    about,
    claims_section,
    controls_csv,
    controls_section,
    differences_csv,
    differences_section,
    forgetting_section,
    regenerate_section,
    sensitivity_section,
    summary_section,
)
from benchmark.report.stats import (
    MIN_SEEDS,
    accuracy_curves,
    check_claims,
    claims_sensitivity,
    control_table,
    controlled_estimators,
    correlation_summary,
    forgetting_table,
    layer_means,
    mean_accuracy_matrix,
    protocol_differences,
)
from tracking import Store


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
    f = analyse(sweep, param, kind)
    protocols, mixed, protocol, lead = f.protocols, f.mixed, f.protocol, f.lead
    verdicts, sensitivity, controls, differences = f.verdicts, f.sensitivity, f.controls, f.differences
    cells = {p: sweep.cells[sweep.cells.protocol == p] for p in protocols}
    ran = {p: [d for d in sweep.drivers if d in set(cells[p].driver)] for p in protocols}
    drivers = driver_order(sweep)
    led = list(sensitivity)
    forgetting = stacked(f.forgetting_by_protocol).fillna("")  # the author's ACC: only beside the protocols it fits
    chosen = sweep.correlations[(sweep.correlations.kind == kind) & (sweep.correlations.param == param)]
    summary = correlation_summary(sweep.correlations)
    pairs = list(dict.fromkeys(zip(chosen.estimator_a, chosen.estimator_b)))
    claims = pd.DataFrame([{"protocol": p, "driver": d, **row} for (p, d), results in verdicts.items()
                           for c in results for row in c.rows()])
    overlap = sorted(m for m in set(chosen.method) if m.startswith("jaccard_top"))
    beyond = {method: stacked({p: layer_means(of(chosen, p, lead), REPORTED_PAIRS, method) for p in led})
              for method in ["pearson", *overlap]}

    folder = figures.FigureFolder(out, **(figures.COMPACT if compact else {}))
    named = {(p, d): (d if not mixed else f"{d} ({p})", p if mixed else None) for p in protocols for d in ran[p]}
    acc_figure = figures.accuracy_curves({label: accuracy_curves(cells[p], sweep.accuracy, d)
                                          for (p, d), (label, _) in named.items()}, folder)
    matrix_figures = [figures.accuracy_matrix(mean_accuracy_matrix(cells[p], sweep.accuracy, d), d,
                                              int((cells[p].driver == d).sum()), folder, in_stem)
                      for (p, d), (_, in_stem) in named.items()]
    mine = summary[(summary.kind == kind) & (summary.param == param)]
    surface_figures, heatmap_figures = [], []
    for p in protocols:
        for driver in [d for d in drivers if d in ran[p]]:
            title = (f"driver {driver}{f', protocol {p}' if mixed else ''}: Pearson correlation of {kind} "
                     f"importances over each layer's {param} entries, mean over "
                     f"{int((cells[p].driver == driver).sum())} seed(s)")
            in_stem = named[(p, driver)][1]
            surface_figures.append(figures.correlation_surfaces(of(mine, p, driver), pairs, driver, title, folder,
                                                                in_stem))
            heatmap_figures.append(figures.correlation_heatmaps(of(mine, p, driver), pairs, driver, title, folder,
                                                                in_stem))

    summary_file = "correlations_summary.csv" + (".gz" if compact else "")  # pandas reads either
    data_files = ["forgetting.csv", "claims.csv", "claims_sensitivity.csv", summary_file]
    summary.to_csv(out / summary_file, index=False, float_format="%.6g" if compact else None)
    cells_table(sweep).to_csv(out / CELLS_FILE, index=False)
    data_files.append(CELLS_FILE)
    forgetting.astype(str).to_csv(out / "forgetting.csv", index=False)
    claims.to_csv(out / "claims.csv", index=False)
    stacked({p: table.assign(driver=lead)[["driver", *table.columns]] for p, table in sensitivity.items()}).to_csv(
        out / "claims_sensitivity.csv", index=False)
    for method, table in beyond.items():
        if len(table):
            table.astype(str).to_csv(out / f"beyond_{method}.csv", index=False)
            data_files.append(f"beyond_{method}.csv")
    if controls:
        controls_csv(controls).to_csv(out / "controls.csv", index=False)
        data_files.append("controls.csv")
    if differences is not None and len(differences):
        differences_csv(differences).to_csv(out / "paired_differences.csv", index=False)
        data_files.append("paired_differences.csv")

    sections = [summary_section(f)]
    gaps = [f"missing: {m}" for m in sweep.missing] + [f"not finished: {m}" for m in sweep.not_finished]
    if gaps:
        sections.append(Section("Incomplete sweep", "incomplete", [Text("These cells are not in the report:"),
                                                                   Lines(gaps)]))
    sections.append(forgetting_section(forgetting, mixed, Figures([acc_figure], folder.link),
                                       Figures(matrix_figures, folder.link)))
    if differences is not None and len(differences):
        sections.append(differences_section(differences))
    if controls:
        sections.append(controls_section(controls, mixed))
    sections.append(claims_section(verdicts, mixed, param, kind, Figures(surface_figures, folder.link),
                                   Figures(heatmap_figures, folder.link)))
    if sensitivity:
        sections.append(sensitivity_section(sensitivity, lead, mixed))
    for method, table in beyond.items():
        if len(table):
            shown = table if mixed else table.drop(columns="protocol")
            sections.append(Section(f"Beyond the paper: {method}", f"beyond-{method}", [
                Text(f"Driver {lead}; {method} of {kind} importances over each layer's {param} entries: per "
                     f"seed the mean over tasks, then the mean [95% t-interval] over seeds (an interval from "
                     f"{MIN_SEEDS} seeds on). All digits: beyond_{method}.csv."),
                Table(list(shown.columns), [[cell if isinstance(cell, str) else cell.short() for cell in row]
                                            for row in shown.itertuples(index=False)])]))
    sections.append(Section("About this report", "about", [Table(["", ""], about(sweep, store, protocol, command))]))

    report_options = (" --compact" if compact else "") + (f" --param {param}" if param != "weight" else "") + \
        (f" --kind {kind}" if kind != "accumulated" else "")
    sections = [regenerate_section(sweep, out, report_options, allow_dirty), *sections]
    (out / "README.md").write_text(render("report.md.jinja", TITLE, sections, data_files))
    (out / "index.html").write_text(render("report.html.jinja", TITLE, sections, data_files))
    for parent in sweep.parents[:1]:
        store.open_run(parent.id).log_dir(out, "report")
    return out / "index.html"


def of(table: pd.DataFrame, protocol: str, driver: str) -> pd.DataFrame:
    return table[(table.protocol == protocol) & (table.driver == driver)]


def driver_order(sweep: RecordedSweep) -> list[str]:
    """The sweep's drivers, the paper's driver first (it leads the claims), then in the paper's order."""
    return sorted(sweep.drivers, key=lambda d: (d != PAPER_DRIVER, sweep.drivers.index(d)))


def analyse(sweep: RecordedSweep, param: str, kind: str) -> Findings:
    """Every table the report's sections read, computed once from the sweep. Sweeps of several protocols: every
    table, interval and figure is per protocol (a seed's runs under two protocols are not independent draws of one
    thing); protocols meet only in differences paired by seed."""
    protocols = protocol_order(sweep)
    cells = {p: sweep.cells[sweep.cells.protocol == p] for p in protocols}
    ran = {p: [d for d in sweep.drivers if d in set(cells[p].driver)] for p in protocols}
    drivers = driver_order(sweep)
    lead = drivers[0]
    # (a protocol whose sweep lacks the lead driver has no claims: they are not measured there)
    led = [p for p in protocols if lead in ran[p]]
    chosen = sweep.correlations[(sweep.correlations.kind == kind) & (sweep.correlations.param == param)]
    controls = []  # each estimator beside its controls, per protocol
    for p in protocols:
        for estimator in controlled_estimators(ran[p]):
            controls.append(control_table(cells[p], sweep.accuracy, estimator).assign(protocol=p))
    return Findings(
        sweep=sweep, protocols=protocols, lead=lead, param=param, kind=kind,
        forgetting_by_protocol={p: forgetting_table(cells[p], sweep.accuracy, ran[p], p) for p in protocols},
        verdicts={(p, d): check_claims(of(chosen, p, d)) for p in protocols for d in drivers if d in ran[p]},
        sensitivity={p: claims_sensitivity(of(sweep.correlations, p, lead)) for p in led},
        controls=controls,
        differences=protocol_differences(sweep.cells, sweep.accuracy, protocols) if len(protocols) > 1 else None,
    )


def protocol_order(sweep: RecordedSweep) -> list[str]:
    """The protocols of the sweep in the order its sweeps were given (the first is the one the others are paired
    against), then any others (cells chosen by --runs) by name."""
    present = set(sweep.cells.protocol)
    given = [p.tags.get("protocol") for p in sweep.parents]
    return [p for p in dict.fromkeys([*given, *sorted(present)]) if p in present]


def stacked(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-protocol tables as one, a protocol column first."""
    return pd.concat([table.assign(protocol=p)[["protocol", *table.columns]] for p, table in tables.items()],
                     ignore_index=True) if tables else pd.DataFrame(columns=["protocol"])


