"""`python -m benchmark report`: forgetting and accuracy with confidence intervals, the paper's correlation
surfaces from your own runs, and its claims checked — as report/index.html, report/README.md, figures and CSVs,
also logged to the sweep's MLflow parent run.

Reads only the artifact contract of `benchmark run` (config.json, accuracy_matrix.csv, correlations.csv).
"""

import datetime
import html
import platform
from pathlib import Path

import pandas as pd

from benchmark import __version__
from benchmark.report import figures
from benchmark.report.collect import Sweep, load_sweep
from benchmark.report.stats import (
    accuracy_curves,
    check_claims,
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


def build_report(store: Store, out: Path, sweep_ids: list[str] | None = None, run_ids: list[str] | None = None,
                 param: str = "weight", kind: str = "accumulated", command: str = "") -> Path:
    """The report on the given sweeps (parent runs) or cell runs, written to `out`; returns its index.html."""
    sweep = load_sweep(store, sweep_ids, run_ids)
    out.mkdir(parents=True, exist_ok=True)
    protocols = sorted(set(sweep.cells.protocol))
    protocol = protocols[0] if len(protocols) == 1 else "mixed"

    forgetting = forgetting_table(sweep.cells, sweep.accuracy, sweep.drivers, protocol)
    chosen = sweep.correlations[(sweep.correlations.kind == kind) & (sweep.correlations.param == param)]
    summary = correlation_summary(sweep.correlations)
    pairs = list(dict.fromkeys(zip(chosen.estimator_a, chosen.estimator_b)))
    drivers = sorted(sweep.drivers, key=lambda d: (d != PAPER_DRIVER, sweep.drivers.index(d)))

    claims = []
    for driver in drivers:
        for c in check_claims(chosen[chosen.driver == driver]):
            claims.append({"driver": driver, "claim": c.claim, "test": c.test, "measured (per layer)": c.measured,
                           "verdict": c.verdict, "holds": c.holds})
    claims = pd.DataFrame(claims)
    lead = chosen[chosen.driver == drivers[0]]
    overlap = sorted(m for m in set(chosen.method) if m.startswith("jaccard_top"))
    beyond = {method: layer_means(lead, BEYOND_PAIRS, method) for method in ["pearson", *overlap]}

    curves = {d: accuracy_curves(sweep.cells, sweep.accuracy, d) for d in sweep.drivers}
    figure_stems = {"acc": figures.accuracy_curves(curves, out), "matrices": [], "surfaces": [], "heatmaps": []}
    for driver in sweep.drivers:
        n = int((sweep.cells.driver == driver).sum())
        figure_stems["matrices"].append(figures.accuracy_matrix(
            mean_accuracy_matrix(sweep.cells, sweep.accuracy, driver), driver, n, out))
    mine = summary[(summary.kind == kind) & (summary.param == param)]
    for driver in drivers:
        title = (f"driver {driver}: Pearson correlation of {kind} importances over each layer's {param} entries, "
                 f"mean over {int((sweep.cells.driver == driver).sum())} seed(s)")
        figure_stems["surfaces"].append(figures.correlation_surfaces(mine[mine.driver == driver], pairs, driver,
                                                                     title, out))
        figure_stems["heatmaps"].append(figures.correlation_heatmaps(mine[mine.driver == driver], pairs, driver,
                                                                     title, out))

    summary.to_csv(out / "correlations_summary.csv", index=False)
    forgetting.astype(str).to_csv(out / "forgetting.csv", index=False)
    claims.to_csv(out / "claims.csv", index=False)

    header = _header(sweep, store, protocol, command)
    sections = _sections(sweep, forgetting, claims, figure_stems, param, kind)
    for i, (method, table) in enumerate(beyond.items()):
        if len(table):
            sections.insert(2 + i, (f"Beyond the paper: {method}", f"Driver {drivers[0]}; {method} of {kind} "
                                f"importances over each layer's {param} entries: per seed the mean over tasks, "
                                "then mean [95% t-interval] over seeds.", table.astype(str)))
            table.astype(str).to_csv(out / f"beyond_{method}.csv", index=False)
    (out / "README.md").write_text(_markdown(header, sections))
    (out / "index.html").write_text(_html(header, sections))
    for parent in sweep.parents[:1]:
        store.open_run(parent.id).log_dir(out, "report")
    return out / "index.html"


def _header(sweep: Sweep, store: Store, protocol: str, command: str) -> list[tuple[str, str]]:
    parent_tags = [p.tags for p in sweep.parents]
    seeds = sorted(set(sweep.cells.seed))

    def from_parents(key: str) -> str:
        return ", ".join(sorted({t.get(key, "?") for t in parent_tags})) or "?"

    started = [datetime.datetime.fromtimestamp(p.start_time / 1000, tz=datetime.timezone.utc) for p in sweep.parents]
    return [
        ("experiment", sweep.experiment),
        ("protocol", protocol),
        ("drivers", ", ".join(sweep.drivers)),
        ("seeds", f"{len(seeds)}: {', '.join(map(str, seeds))}"),
        ("sweeps (MLflow parent runs)", ", ".join(p.id for p in sweep.parents) or "none"),
        ("sweep started", ", ".join(s.strftime("%Y-%m-%d %H:%M UTC") for s in started) or "?"),
        ("package version (runs)", from_parents("package_version")),
        ("git commit (runs)", from_parents("git_commit")),
        ("machine (runs)", from_parents("machine")),
        ("torch (runs)", from_parents("torch_version")),
        ("report made", f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} on "
                        f"{platform.node()}, package {__version__}"),
        ("store", store.uri),
        ("command", command),
    ]


def _sections(sweep: Sweep, forgetting, claims, stems, param: str, kind: str) -> list[tuple[str, str, object]]:
    """(title, explanation, content) with content a DataFrame, a list of figure stems or a list of lines."""
    gaps = [f"missing: {m}" for m in sweep.missing] + [f"not finished: {m}" for m in sweep.not_finished]
    sections = []
    if gaps:
        sections.append(("Incomplete sweep", "These cells are not in the report:", gaps))
    sections += [
        ("Forgetting", "Per driver, over seeds: mean and 95% t-interval (n seeds) of ACC (mean accuracy over all "
         "tasks after the last), BWT and forgetting, from each run's accuracy_matrix.csv. λ and its source "
         "(default: shipped protocol, config: your file, user: --lambda, tuned: Optuna).", forgetting),
        ("The paper's claims", f"Judged on the Pearson correlations of {kind} importances over each layer's {param} "
         f"entries; the paper's own runs are driven by {PAPER_DRIVER}. 'measured' gives the mean over seeds "
         "[95% t-interval] where the test is decided.", claims.drop(columns="holds") if len(claims) else claims),
        ("Accuracy after each task", "Mean test accuracy over the tasks seen so far, with 95% t-interval bands.",
         [stems["acc"]]),
        ("Accuracy matrices", "R[i, j]: test accuracy on task j after training task i, mean over seeds.",
         stems["matrices"]),
        ("Correlation surfaces", "For every pair of estimators (and fis–mas², √fis–mas), Pearson correlation "
         "over (layer, task), mean over seeds — one figure per driver, the paper's driver first.",
         stems["surfaces"]),
        ("Correlation heatmaps", "Pearson and Spearman per pair, mean ± half-width of the 95% t-interval. All "
         "values, for every kind and param: correlations_summary.csv.", stems["heatmaps"]),
    ]
    return sections


def _markdown(header, sections) -> str:
    lines = ["# Importance-estimator benchmark report", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in header] + [""]
    for title, text, content in sections:
        lines += [f"## {title}", "", text, ""]
        if isinstance(content, pd.DataFrame):
            cols = list(content.columns)
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |"
                      for row in content.itertuples(index=False)]
        elif content and title != "Incomplete sweep":
            lines += [f"![{stem}]({stem}.png)" for stem in content]
        else:
            lines += [f"- {line}" for line in content]
        lines.append("")
    lines += ["Data: [forgetting.csv](forgetting.csv), [claims.csv](claims.csv), "
              "[correlations_summary.csv](correlations_summary.csv). Figures also as SVG.", ""]
    return "\n".join(lines)


def _html(header, sections) -> str:
    e = html.escape
    body = ["<h1>Importance-estimator benchmark report</h1>", "<table class='header'>"]
    body += [f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in header] + ["</table>"]
    for title, text, content in sections:
        body += [f"<h2>{e(title)}</h2>", f"<p>{e(text)}</p>"]
        if isinstance(content, pd.DataFrame):
            body.append(content.astype(str).to_html(index=False, escape=True, border=0))
        elif content and title != "Incomplete sweep":
            body += [f"<p><a href='{e(s)}.svg'><img src='{e(s)}.png' alt='{e(s)}'></a></p>" for s in content]
        else:
            body += ["<ul>"] + [f"<li>{e(line)}</li>" for line in content] + ["</ul>"]
    body.append("<p>Data: <a href='forgetting.csv'>forgetting.csv</a>, <a href='claims.csv'>claims.csv</a>, "
                "<a href='correlations_summary.csv'>correlations_summary.csv</a>.</p>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:left;vertical-align:top}img{max-width:100%}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>benchmark report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
