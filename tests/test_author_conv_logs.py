"""results/author_conv_logs.py: the author's convolutional runs per λ, recomputed by hand from runs.csv."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
FOLDER = ROOT / "results/author-conv-logs"


def runs() -> list[dict]:
    with open(FOLDER / "runs.csv") as f:
        return list(csv.DictReader(f))


def test_by_lambda_equals_a_hand_computation_from_the_runs():
    with open(FOLDER / "by_lambda.csv") as f:
        published = list(csv.DictReader(f))
    everything = runs()
    assert sum(int(r["runs"]) for r in published) == len(everything) == 877 + 1203 + 1230
    for row in published:
        values = np.array([float(r["acc_after_task4"]) for r in everything
                           if (r["estimator"], r["lambda"]) == (row["estimator"], row["lambda"])])
        assert int(row["runs"]) == len(values) and float(row["mean"]) == pytest.approx(values.mean(), abs=1e-6)
        assert float(row["min"]) == pytest.approx(values.min(), abs=1e-6)
        if len(values) > 1:
            assert float(row["sd"]) == pytest.approx(values.std(ddof=1), abs=1e-6)
    for estimator in ("fis", "mas", "si"):
        lambdas = [float(r["lambda"]) for r in published if r["estimator"] == estimator]
        assert lambdas == sorted(lambdas) and lambdas[0] == 0.0
    assert all(0 < float(r["acc_after_task4"]) < 1 for r in everything)


def test_the_published_files_are_what_the_script_writes():
    csv_out = subprocess.run([sys.executable, "results/author_conv_logs.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    assert csv_out == (FOLDER / "by_lambda.csv").read_text()
    table = subprocess.run([sys.executable, "results/author_conv_logs.py", "--markdown"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert table.strip() in (FOLDER / "README.md").read_text()
