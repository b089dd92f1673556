"""`python -m benchmark report` on real smoke runs in a real MLflow store: its numbers against the runs' own
CSVs, its figures on disk, its verdicts against its numbers."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from benchmark.cli import main
from benchmark.report.stats import mean_ci, sensitivity_headline
from tests.conftest import DATA_DIR
from tracking import Store

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's


@pytest.fixture(scope="module")
def sweep_store(initialised_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "mlflow.db"
    shutil.copy(initialised_store, path)
    uri = f"sqlite:///{path}"
    assert main(["run", "--protocol", "smoke", "--drivers", "none,mas", "--seeds", "2", "--tracking-uri", uri,
                 "--data-dir", DATA_DIR]) == 0
    return uri


@pytest.fixture(scope="module")
def report(sweep_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "report"
    assert main(["report", "--experiment", "pmnist-smoke", "--out", str(out), "--tracking-uri", sweep_store]) == 0
    return out


def cell_runs(uri):
    store = Store(uri)
    return store, store.find_runs("pmnist-smoke", kind="cell")


def run_csv(store, run, name, tmp_path):
    return pd.read_csv(store.download(run.id, name, tmp_path / run.id))


def test_forgetting_table_matches_the_runs_accuracy_matrices(sweep_store, report, tmp_path):
    store, runs = cell_runs(sweep_store)
    table = pd.read_csv(report / "forgetting.csv")
    for driver in ("none", "mas"):
        finals = []
        for run in [r for r in runs if r.tags["driver"] == driver]:
            R = run_csv(store, run, "accuracy_matrix.csv", tmp_path).drop(columns="after_task").to_numpy()
            finals.append(R[-1].mean())
        mean = np.mean(finals)
        low, high = stats.t.interval(0.95, len(finals) - 1, loc=mean, scale=stats.sem(finals))
        row = table[table.driver == driver].iloc[0]
        assert row["n"] == 2
        assert row["ACC"] == f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def test_every_referenced_file_exists(report):
    index = (report / "index.html").read_text()
    referenced = set(re.findall(r"(?:src|href)=\"([^\"]+)\"", index))
    files = {name for name in referenced if not name.startswith("#")}
    assert {"acc_curves.png", "accuracy_matrix_mas.png", "correlation_surfaces_mas.png",
            "correlation_heatmaps_none.svg", "correlations_summary.csv"} <= files
    assert all((report / name).is_file() for name in files)
    assert {f"#{anchor}" for anchor in re.findall(r"<section id=\"([^\"]+)\"", index)} == referenced - files
    readme = (report / "README.md").read_text()
    assert all((report / name).is_file() for name in re.findall(r"\]\(([^)]+)\)", readme))


def markdown_tables(text: str) -> list[pd.DataFrame]:
    """Every table of a Markdown page, cells as strings (the report escapes no | inside these)."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(pd.DataFrame(rows[2:], columns=rows[0]))
            rows = []
    return tables


def test_the_report_leads_with_its_answers(sweep_store, report, tmp_path):
    """The summary comes first, and its numbers are the tables' numbers: ACC per driver as in the forgetting table
    (and as recomputed from the runs), each claim's verdict and deciding value as in the claims table."""
    readme = (report / "README.md").read_text()
    titles = re.findall(r"^## (.+)$", readme, re.M)
    assert titles[:4] == ["Regenerate", "Summary", "Forgetting", "The paper's claims"]
    assert titles[-1] == "About this report"
    summary_text = readme.split("## Forgetting")[0]
    acc_summary, forgetting_shown, claims_shown = markdown_tables(readme)[:3]

    store, runs = cell_runs(sweep_store)
    for driver in ("none", "mas"):
        finals = [run_csv(store, r, "accuracy_matrix.csv", tmp_path).drop(columns="after_task").to_numpy()[-1].mean()
                  for r in runs if r.tags["driver"] == driver]
        expected = f"{100 * np.mean(finals):.2f} (n < 3)"  # two seeds: no interval
        assert acc_summary.set_index("driver").loc[driver].iloc[0] == expected
        assert forgetting_shown.set_index("driver").loc[driver, "ACC %"] == expected
    assert "Fewer than 3 seeds (n < 3)" in summary_text

    # the claims: first what the sensitivity table says of each, then each one's verdict on the report's measure,
    # as the claims table says it and claims.csv counts it
    claims = pd.read_csv(report / "claims.csv", dtype={"tasks": str})
    mas = claims[claims.driver == "mas"]
    sensitivity = pd.read_csv(report / "claims_sensitivity.csv", dtype={"tasks": str})
    across, measured = summary_text.split("On this report's measure")
    headlines = dict(re.findall(r"^- (.+?): (from task 1 on .+)$", across, re.M))
    assert list(headlines) == list(dict.fromkeys(mas.claim))
    for claim, headline in headlines.items():
        assert headline == sensitivity_headline(sensitivity, claim)
        assert len(sensitivity[(sensitivity.claim == claim) & (sensitivity.tasks == "1+")]) == 8
    lines = dict(re.findall(r"^- (.+?): (.+)$", measured, re.M))
    assert list(lines) == list(headlines)
    claims_shown = claims_shown.assign(claim=claims_shown.claim.replace("", np.nan).ffill()).set_index("claim")
    for claim, line in lines.items():
        shown = claims_shown[claims_shown.driver == "mas"].loc[claim]
        assert shown["in detail"] == line
        for tasks, column in (("1+", "from task 1 on"), ("0", "at task 0")):
            row = mas[(mas.claim == claim) & (mas.tasks == tasks)].iloc[0]
            assert shown[column] == f"{row.verdict} ({row.cells_holding}/{row.cells} cells; indicative)"
            if row.verdict == "holds":
                assert (f"holds from task 1 on in {row.cells}/{row.cells} cells" if tasks == "1+" else
                        f"at task 0 holds in {row.cells}/{row.cells} cells") in line
            else:
                assert f"{'from task 1 on' if tasks == '1+' else 'at task 0'} fails on " in line
        assert line.endswith("(only 2 seeds: indicative)")


def test_no_interval_or_band_from_fewer_than_three_seeds(report, tmp_path):
    """Two seeds: every shown value says n < 3 and has no interval; the ACC curves have no band and a tick per task.
    Three seeds: the band is there."""
    from benchmark.report.figures import FigureFolder, accuracy_curves
    from benchmark.report.stats import mean_ci

    forgetting_shown, claims_shown = markdown_tables((report / "README.md").read_text())[1:3]
    for cell in forgetting_shown["ACC %"]:
        assert cell.endswith("(n < 3)") and "[" not in cell
    values = re.findall(r"-?\d\.\d\d(?: \[[^]]*\]| \(n < 3\))?", " ".join(claims_shown["in detail"]))
    assert values and all(v.endswith("(n < 3)") for v in values)
    svg = (report / "acc_curves.svg").read_text()
    ticks = re.findall(r"<!-- (\d+(?:\.\d+)?) -->", svg.split("after training task")[0])
    assert ticks == ["0", "1", "2"]
    assert "PolyCollection" not in svg

    three = {"mas": [mean_ci([0.9, 0.92, 0.95]), mean_ci([0.8, 0.85, 0.83])]}
    assert "PolyCollection" in (tmp_path / f"{accuracy_curves(three, FigureFolder(tmp_path))}.svg").read_text()


def browser_problems(index: Path) -> list[str]:
    """What a reader would hit in index.html, found by headless Chromium: requests that failed while the page
    loaded, images that did not load or decode, links whose target does not open (a CSV opens as a download,
    which Chromium reports as net::ERR_ABORTED), in-page links to no element."""
    from tests.browser import Browser, BrowserError, find_chromium

    problems = []
    with Browser(find_chromium()) as browser:
        page = browser.open(index.as_uri())
        problems += [f"failed request {failure}" for failure in browser.failed_requests(page)]
        images = browser.evaluate(page, "[...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])")
        problems += [f"image not shown: {src}" for src, shown in images if not shown]
        links = browser.evaluate(page, "[...document.querySelectorAll('a[href]')].map(a => [a.getAttribute('href'), "
                                       "a.href])")
        for href, url in links:
            if href.startswith("#"):
                if not browser.evaluate(page, f"document.getElementById({json.dumps(href[1:])}) !== null"):
                    problems.append(f"no element for {href}")
                continue
            try:
                browser.open(url)
            except BrowserError as e:
                if not (url.endswith(".csv") and "net::ERR_ABORTED" in str(e)):
                    problems.append(f"broken link {href}: {e}")
    return problems + [f"{len(images)} images"]


@pytest.mark.skipif(not shutil.which("chromium") and not shutil.which("chromium-browser"),
                    reason="no Chromium (Debian: apt-get install chromium)")
def test_the_report_in_a_real_browser(report, tmp_path):
    figures = len(list(report.glob("*.png")))
    assert browser_problems(report / "index.html") == [f"{figures} images"]

    broken = tmp_path / "broken"  # the check finds what it is there for
    shutil.copytree(report, broken)
    (broken / "acc_curves.png").unlink()
    (broken / "claims.csv").unlink()
    (broken / "correlation_heatmaps_mas.svg").unlink()
    problems = browser_problems(broken / "index.html")
    assert any(p.startswith("image not shown: ") and p.endswith("/acc_curves.png") for p in problems)
    assert any(p.startswith("broken link claims.csv: ") and "ERR_FILE_NOT_FOUND" in p for p in problems)
    assert any(p.startswith("broken link correlation_heatmaps_mas.svg: ") for p in problems)


def test_estimate_short_form():
    assert mean_ci([0.9, 0.92, 0.95, 0.91]).short() == "0.92 [0.89, 0.95]"
    assert mean_ci([0.9, 0.92]).short() == "0.91 (n < 3)"
    assert mean_ci([0.9, 0.92, 0.95, 0.91]).short(100) == "92.00 [88.56, 95.44]"
    assert mean_ci([]).short() == "–"


def mas_driven_correlations(uri, tmp_path) -> pd.DataFrame:
    """correlations.csv of every mas-driven run, read straight from the store, with a seed column."""
    store, runs = cell_runs(uri)
    return pd.concat([run_csv(store, run, "correlations.csv", tmp_path).assign(seed=int(run.tags["seed"]))
                      for run in runs if run.tags["driver"] == "mas"])


def test_correlation_summary_matches_the_runs(sweep_store, report, tmp_path):
    summary = pd.read_csv(report / "correlations_summary.csv")
    c = mas_driven_correlations(sweep_store, tmp_path)
    values = c[(c.task == 2) & (c.layer == "fc1") & (c.param == "weight") & (c.kind == "accumulated")
               & (c.estimator_a == "fis") & (c.estimator_b == "mas") & (c.method == "pearson")].value
    row = summary[(summary.driver == "mas") & (summary.task == 2) & (summary.layer == "fc1")
                  & (summary.param == "weight") & (summary.kind == "accumulated") & (summary.estimator_a == "fis")
                  & (summary.estimator_b == "mas") & (summary.method == "pearson")].iloc[0]
    assert len(values) == 2 and row["mean"] == pytest.approx(np.mean(values)) and row["n"] == 2


def test_claim_verdicts_follow_from_the_numbers(sweep_store, report, tmp_path):
    """Two seeds: each (layer, task) cell's mean decides; claims.csv counts the cells where it is above the
    threshold, task 0 apart, and its verdict is holds only if every cell holds (else fails: no interval, no
    undecided), marked indicative."""
    claims = pd.read_csv(report / "claims.csv", dtype={"tasks": str})
    c = mas_driven_correlations(sweep_store, tmp_path)
    c = c[(c.kind == "accumulated") & (c.param == "weight") & (c.method == "pearson")]

    mas_claims = claims[claims.driver == "mas"].set_index(["claim", "tasks"])
    for claim, (a, b, threshold) in {"MAS–FIS > 0.8 on all layers and tasks": ("fis", "mas", 0.8),
                                     "MAS–SI > 0.8": ("mas", "si", 0.8), "FIS–SI > 0.75": ("fis", "si", 0.75)}.items():
        means = c[(c.estimator_a == a) & (c.estimator_b == b)].groupby(["layer", "task"]).value.mean()
        for tasks, cells in (("0", means[means.index.get_level_values("task") == 0]),
                             ("1+", means[means.index.get_level_values("task") > 0])):
            row = mas_claims.loc[(claim, tasks)]
            assert (row.cells_holding, row.cells) == ((cells > threshold).sum(), len(cells)), (claim, tasks)
            assert row.verdict == ("holds" if (cells > threshold).all() else "fails")
            assert row.indicative and row.seeds == 2


def test_mean_ci_is_the_t_interval():
    values = [0.9, 0.92, 0.95, 0.91]
    e = mean_ci(values)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert (e.low, e.high, e.n) == (pytest.approx(low), pytest.approx(high), 4)
    assert np.isnan(mean_ci([0.9]).low)


def test_report_is_logged_to_the_sweep(sweep_store, report):
    client = MlflowClient(sweep_store)
    (sweep,) = Store(sweep_store).find_runs("pmnist-smoke", kind="sweep")
    files = {f.path for f in client.list_artifacts(sweep.id, "report")}
    assert {"report/index.html", "report/README.md", "report/claims.csv"} <= files


def test_partial_selection_lists_the_missing_cells(sweep_store, tmp_path):
    _, runs = cell_runs(sweep_store)
    keep = [r for r in runs if not (r.tags["driver"] == "mas" and r.tags["seed"] == "1")]
    out = tmp_path / "partial"
    assert main(["report", "--runs", ",".join(r.id for r in keep), "--out", str(out),
                 "--tracking-uri", sweep_store]) == 0
    assert "missing: mas/seed 1" in (out / "README.md").read_text()
    assert pd.read_csv(out / "forgetting.csv").set_index("driver").loc["mas", "n"] == 1


def test_report_without_arguments_takes_the_latest_sweep_in_the_store(sweep_store, tmp_path):
    """The new user's `run --protocol smoke` then `report`: no --experiment, no --tracking-uri, no --out. A newer
    sweep in another experiment is the one chosen, and stderr says which; --experiment still picks its own."""
    home = tmp_path / "clone"
    (home / "mlruns").mkdir(parents=True)
    shutil.copy(sweep_store.removeprefix("sqlite:///"), home / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"
    tiny = tmp_path / "tiny.toml"  # its own experiment, pmnist-tiny
    tiny.write_text((Path(__file__).parents[1] / "benchmark/protocols/smoke.toml").read_text())
    assert main(["run", "--config", str(tiny), "--drivers", "none", "--tracking-uri", uri, "--data-dir", DATA_DIR]) == 0
    store = Store(uri)
    (newest,) = store.find_runs("pmnist-tiny", kind="sweep")
    (older,) = store.find_runs("pmnist-smoke", kind="sweep")

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-m", "benchmark", "report"], cwd=home, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"report: the latest sweep in the store: {newest.id} (experiment pmnist-tiny, " in done.stderr
    assert "report written to report/index.html" in done.stderr
    assert pd.read_csv(home / "report" / "forgetting.csv").driver.tolist() == ["none"]
    assert newest.id in (home / "report" / "README.md").read_text()

    out = tmp_path / "smoke-report"
    assert main(["report", "--experiment", "pmnist-smoke", "--out", str(out), "--tracking-uri", uri]) == 0
    assert pd.read_csv(out / "forgetting.csv").driver.tolist() == ["none", "mas"]
    assert older.id in (out / "README.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--experiment", "pmnist-nothing"], "no sweep in experiment 'pmnist-nothing'"),
    (["--sweep", "0123456789abcdef"], "no run '0123456789abcdef'"),
])
def test_report_bad_input(sweep_store, tmp_path, capsys, args, message):
    assert main(["report", *args, "--out", str(tmp_path / "r"), "--tracking-uri", sweep_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "r").exists()


def test_report_on_a_store_without_a_sweep(store_uri, tmp_path, capsys):
    assert main(["report", "--tracking-uri", store_uri, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no sweep in {store_uri} (experiments: Default)" in err
    assert not (tmp_path / "r").exists()


def test_report_on_a_missing_store_creates_nothing(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert main(["report", "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    assert "no tracking store at" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_compact_report_is_png_only_with_its_links_and_the_same_numbers(report, sweep_store, tmp_path):
    """--compact (what results/ publishes): PNG figures linked to themselves, the summary gzipped, the same numbers
    to 6 significant digits."""
    compact = tmp_path / "compact"
    assert main(["report", "--experiment", "pmnist-smoke", "--tracking-uri", sweep_store, "--out", str(compact),
                 "--compact"]) == 0
    assert not list(compact.glob("*.svg")) and list(compact.glob("*.png"))
    html = (compact / "index.html").read_text()
    assert ".svg" not in html and 'href="acc_curves.png"' in html
    full = pd.read_csv(report / "correlations_summary.csv")
    pd.testing.assert_frame_equal(pd.read_csv(compact / "correlations_summary.csv.gz"), full, rtol=5e-6)
    assert (compact / "forgetting.csv").read_text() == (report / "forgetting.csv").read_text()
    from PIL import Image

    for png in compact.glob("*.png"):  # a 256-colour palette (a third of the RGBA file's bytes)
        with Image.open(png) as image:
            assert image.mode == "P", png.name
    with Image.open(report / "acc_curves.png") as image:
        assert image.mode == "RGBA"  # the full report keeps every colour


def test_the_report_shows_only_pairs_every_run_correlates():
    from benchmark.drivers import EXTRA_PAIRS, REPORTED_PAIRS

    assert set(REPORTED_PAIRS) == set(EXTRA_PAIRS) and len(REPORTED_PAIRS) == len(EXTRA_PAIRS)
