"""Every published cell can be re-checked: each row of every results/*/cells.csv names the environment it ran in
(a 16-hex-digit fingerprint, CPU, ISA, threads, torch), the commit it ran at — from a clean tree, unless the
folder's README explains otherwise at its top — and its run."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"
FOLDERS = sorted(p.parent for p in RESULTS.glob("*/cells.csv"))


def test_there_are_published_folders():
    assert len(FOLDERS) >= 10


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_published_cell_carries_its_fingerprint_and_commit(folder):
    cells = pd.read_csv(folder / "cells.csv", dtype=str, keep_default_na=False)
    missing = cells[~cells.fingerprint.str.fullmatch(r"[0-9a-f]{16}")
                    | ~cells.git_commit.str.fullmatch(r"[0-9a-f]{40}")
                    | (cells.cpu == "") | (cells.isa == "") | (cells.threads == "") | (cells.torch == "")
                    | (cells.run_id == "")]
    assert missing.empty, f"{len(missing)} cells without fingerprint or commit, first run {missing.run_id.iloc[0]}"
    # the one documented exception: results/paper's runs (and the folders computed from them), tagged dirty by a
    # bug since fixed; such a folder must say so at its top
    if not (cells.git_dirty == "False").all():
        assert "`git_dirty=True`" in (folder / "README.md").read_text().split("\n\n")[0], \
            "cells made from a dirty tree, and the folder's README does not explain it at its top"


def test_readmes_accuracy_table_equals_the_published_cells():
    """README's first table (test ACC %, mean [95% t-interval] over seeds 0–4) recomputed by hand from each
    folder's per-seed values: a number in the front door that no file holds fails here."""
    from scipy import stats

    lines = (RESULTS.parent / "README.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| driver | `paper`, author's λ"))
    folders = ("paper", "paper-tuned", "author")
    checked = 0
    for line in lines[header + 2:]:
        if not line.startswith("| "):
            break
        driver, *columns = [c.strip() for c in line.strip("|").split("|")]
        for folder, text in zip(folders, columns):
            cells = pd.read_csv(RESULTS / folder / "cells.csv")
            acc = 100 * cells[cells.driver == driver].sort_values("seed").ACC.to_numpy()
            assert len(acc) == 5
            half = stats.t.ppf(0.975, 4) * acc.std(ddof=1) / 5 ** 0.5
            assert text == f"{acc.mean():.2f} [{acc.mean() - half:.2f}, {acc.mean() + half:.2f}]", (folder, driver)
            checked += 1
    assert checked == 15


def as_stated(mean: float, low: float, high: float, digits: int) -> str:
    """A difference in points as the READMEs write it: "−0.63 [−1.10, −0.16]" (a sign on the interval's ends)."""
    m, lo, hi = (f"{100 * v:+.{digits}f}".replace("-", "−") for v in (mean, low, high))
    return f"{m.lstrip('+')} [{lo}, {hi}]"


def test_the_own_optimum_comparisons_the_readmes_state_equal_the_published_table():
    """README (one decimal) and results/README.md (two) state every driver's difference from mas at each one's own
    best λ: each must be own_optimum.csv's, interval included."""
    table = pd.read_csv(RESULTS / "lambda-response" / "own_optimum.csv")
    assert len(table) == 6 and set(table.reference) == {"mas"} and (table.n == 5).all()
    for path, digits in ((RESULTS.parent / "README.md", 1), (RESULTS / "README.md", 2)):
        text = " ".join(path.read_text().split())
        for row in table.itertuples():
            stated = f"{row.driver} {as_stated(row.difference, row.low, row.high, digits)}"
            assert stated in text, (path.name, stated)


def test_the_thread_count_table_is_what_its_script_computes_and_what_the_findings_state():
    """results/thread_count.csv is the output of its script on the two folders its docstring names, and the
    pooled difference results/README.md states is its `all` row."""
    import subprocess
    import sys

    script = ["results/thread_count.py", "results/paper-tuned", "results/lambda-response"]
    table = subprocess.run([sys.executable, *script], cwd=RESULTS.parent, capture_output=True, text=True,
                           check=True).stdout
    assert table == (RESULTS / "thread_count.csv").read_text()
    pooled = pd.read_csv(RESULTS / "thread_count.csv").set_index("driver").loc["all"]
    assert pooled.n == 35 and pooled.differing == 35
    stated = ("+" if pooled.difference > 0 else "") + as_stated(pooled.difference, pooled.low, pooled.high, 2)
    assert stated in " ".join((RESULTS / "README.md").read_text().split())


def test_the_library_comparisons_the_readmes_state_equal_their_tables():
    """The libraries' shortcuts (library-lambda-response/own_optimum.csv) and options (library-options/
    own_optimum.csv, the output of the script its README names) at their own best λ: every difference the
    READMEs state is the table's, interval included."""
    options = RESULTS / "library-options"
    script = ["results/library_options.py", "results/lambda-response", "results/library-options/paper-blend",
              "results/lambda-response", "results/library-options/paper-si-clamp",
              "results/library-options/conv-quick", "results/library-options/conv-quick-bn-train"]
    table = subprocess.run([sys.executable, *script], cwd=RESULTS.parent, capture_output=True, text=True,
                           check=True).stdout
    assert table == (options / "own_optimum.csv").read_text()
    shortcuts = pd.read_csv(RESULTS / "library-lambda-response" / "own_optimum.csv")
    for rows, readmes in ((pd.read_csv(options / "own_optimum.csv"), (options / "README.md", RESULTS / "README.md")),
                          (shortcuts, (RESULTS / "README.md",))):
        assert len(rows) >= 3 and (rows.n == 5).all()
        for path in readmes:
            text = " ".join(path.read_text().split())
            for row in rows.itertuples():
                assert as_stated(row.difference, row.low, row.high, 2) in text, (path.name, row.driver)
