"""results/scenarios.py: the across-scenarios table, recomputed by hand from a published folder's files."""

import csv
import gzip
import io
import re
import subprocess
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

ROOT = Path(__file__).parents[1]


def test_the_table_equals_a_hand_computation_from_cells_and_summary():
    out = subprocess.run([sys.executable, "results/scenarios.py", "results/paper"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    with open(ROOT / "results/paper/cells.csv") as f:
        cells = list(csv.DictReader(f))
    acc = {(c["driver"], int(c["seed"])): float(c["ACC"]) for c in cells}

    fis = next(r for r in rows if r["kind"] == "acc" and r["driver"] == "fis")
    differences = np.array([acc["fis", s] - acc["none", s] for s in range(5)])
    half = stats.t.ppf(0.975, 4) * differences.std(ddof=1) / np.sqrt(5)
    assert float(fis["vs_none"]) == pytest.approx(differences.mean(), rel=1e-5)
    assert float(fis["vs_none_low"]) == pytest.approx(differences.mean() - half, rel=1e-5)
    assert float(fis["ACC"]) == pytest.approx(np.mean([acc["fis", s] for s in range(5)]), rel=1e-5)
    (fis_mas,) = [r for r in rows if r["kind"] == "pair" and r["pair"] == "fis-mas"]
    pair = np.array([acc["fis", s] - acc["mas", s] for s in range(5)])
    assert float(fis_mas["difference"]) == pytest.approx(pair.mean(), rel=1e-5)
    assert float(fis_mas["difference_high"]) == pytest.approx(
        pair.mean() + stats.t.ppf(0.975, 4) * pair.std(ddof=1) / np.sqrt(5), rel=1e-5)
    assert sorted(r["pair"] for r in rows if r["kind"] == "pair") == sorted(
        ["fis-mas", "fis-si", "fis-sig", "mas-si", "mas-sig", "si-sig"])
    none = next(r for r in rows if r["kind"] == "acc" and r["driver"] == "none")
    assert none["vs_none"] == ""

    with gzip.open(ROOT / "results/paper/correlations_summary.csv.gz", "rt") as f:
        summary = [r for r in csv.DictReader(f) if r["driver"] == "mas" and r["kind"] == "accumulated"
                   and r["param"] == "weight" and r["method"] == "pearson" and r["task"] == "9"]
    correlations = [r for r in rows if r["kind"] == "correlation"]
    assert [(r["position"], r["layer"]) for r in correlations] == [("first", "fc1"), ("middle", "fc2"),
                                                                   ("output", "fc3")]
    for row in correlations:
        for column, (a, b) in {"mas_fis": ("fis", "mas"), "mas_si": ("mas", "si"), "mas_sig": ("mas", "sig")}.items():
            (truth,) = [r for r in summary if (r["layer"], r["estimator_a"], r["estimator_b"]) == (row["layer"], a, b)]
            assert float(row[column]) == pytest.approx(float(truth["mean"]), rel=1e-5)
            assert float(row[f"{column}_high"]) == pytest.approx(float(truth["ci_high"]), rel=1e-5)


def test_each_library_shortcut_is_paired_with_the_fisher_it_stands_in_for():
    out = subprocess.run([sys.executable, "results/scenarios.py", "results/split-task"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    pairs = {r["pair"]: r for r in csv.DictReader(io.StringIO(out)) if r["kind"] == "pair"}
    assert {"fis_batched-fis", "fis_maxpred-fis", "fis_pweighted-fis"} <= set(pairs)
    with open(ROOT / "results/split-task/cells.csv") as f:
        acc = {(c["driver"], int(c["seed"])): float(c["ACC"]) for c in csv.DictReader(f)}
    differences = np.array([acc["fis_maxpred", s] - acc["fis", s] for s in range(5)])
    half = stats.t.ppf(0.975, 4) * differences.std(ddof=1) / np.sqrt(5)
    row = pairs["fis_maxpred-fis"]
    assert float(row["difference"]) == pytest.approx(differences.mean(), rel=1e-5)
    assert float(row["difference_low"]) == pytest.approx(differences.mean() - half, rel=1e-5)


def table_cells_checked(path: Path, header_start: str, reference: str = "none") -> tuple[list[str], int]:
    """Every ACC and paired difference, with its interval, in the table of `path` whose header starts with
    `header_start` must be results/scenarios.csv's value in %, rounded half up to two decimals: the difference from
    `none` (its vs_none columns), or with another reference the pair row <driver>-<reference>. Its scenario columns
    are the header cells that name one scenario in backticks; other columns (figures quoted from a paper) are not
    ours to check. Returns the scenarios and the number of cells checked."""
    with open(ROOT / "results/scenarios.csv") as f:
        rows = list(csv.DictReader(f))
    acc = {(r["scenario"], r["driver"]): r for r in rows if r["kind"] == "acc"}
    pairs = {(r["scenario"], r["pair"]): r for r in rows if r["kind"] == "pair"}
    lines = path.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    columns = [c.strip() for c in lines[header].strip("|").split("|")][1:]
    scenarios = [m.group(1) if (m := re.fullmatch(r"`([\w-]+)`", c)) else None for c in columns]
    number = r"([+−]?\d+\.\d\d)"
    checked = 0
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        driver, *cells = [c.strip() for c in line.strip("|").split("|")]
        for scenario, cell in zip(scenarios, cells, strict=True):
            if scenario is None:
                continue
            values = [v.replace("−", "-").lstrip("+") for v in re.findall(number, cell)]
            expected = [shown(acc[scenario, driver][k]) for k in ("ACC", "ACC_low", "ACC_high")]
            if reference == "none" and driver != "none":
                expected += [shown(acc[scenario, driver][k]) for k in ("vs_none", "vs_none_low", "vs_none_high")]
            elif reference != "none":
                pair = pairs[scenario, f"{driver}-{reference}"]
                expected += [shown(pair[k]) for k in ("difference", "difference_low", "difference_high")]
            assert values == expected, (path.name, scenario, driver)
            checked += 1
    return [s for s in scenarios if s], checked


def shown(value: str) -> str:
    return str((Decimal(value) * 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def test_readmes_scenario_table_equals_the_published_csv():
    scenarios, checked = table_cells_checked(ROOT / "README.md", "| driver | `paper-tuned`")
    assert checked == 5 * len(scenarios) and len(scenarios) == 6


def test_results_readmes_scenario_tables_equal_the_published_csv():
    scenarios, checked = table_cells_checked(ROOT / "results/README.md", "| driver | `paper-tuned`")
    assert checked == 5 * len(scenarios) and len(scenarios) == 6
    scenarios, checked = table_cells_checked(ROOT / "results/README.md", "| driver | `vdv-split-task`")
    assert scenarios == ["vdv-split-task", "vdv-split-domain", "vdv-split-class"] and checked == 15


def test_results_readmes_shortcut_table_equals_the_published_csv():
    scenarios, checked = table_cells_checked(ROOT / "results/README.md", "| shortcut | `conv-quick`", reference="fis")
    assert scenarios[:5] == ["conv-quick", "rotated", "split-task", "split-domain", "split-class"]
    assert checked == 3 * len(scenarios)


def test_results_readmes_van_de_ven_shortcut_table_equals_the_published_csv():
    header = "| shortcut | `vdv-split-task` | `vdv-split-domain` | `vdv-split-class`"
    scenarios, checked = table_cells_checked(ROOT / "results/README.md", header, reference="fis")
    assert scenarios == ["vdv-split-task", "vdv-split-domain", "vdv-split-class"] and checked == 9
