"""The paper author's convolutional runs as his logs record them, one row per λ (no store, no training):

    python results/author_conv_logs.py > results/author-conv-logs/by_lambda.csv

reads results/author-conv-logs/runs.csv — every complete run of aakutalev/ewc-features'
section2/convolutional-ewc-{fisher,mas,si}.log (the accuracy after his 4th and last task, averaged over the 4, as
printed; where each file was read and how, in that folder's README) — and writes per (estimator, λ): the number of
runs, and the mean, sample standard deviation, minimum and maximum of that accuracy, in λ order. `--markdown` prints
the same as the table of the folder's README instead.
"""

import csv
import statistics
import sys
from pathlib import Path

RUNS = Path(__file__).parent / "author-conv-logs" / "runs.csv"
ESTIMATORS = ["fis", "mas", "si"]
COLUMNS = ["estimator", "lambda", "runs", "mean", "sd", "min", "max"]


def by_lambda(path: Path = RUNS) -> list[dict]:
    accuracies: dict[tuple[str, str], list[float]] = {}
    with open(path) as f:
        for run in csv.DictReader(f):
            accuracies.setdefault((run["estimator"], run["lambda"]), []).append(float(run["acc_after_task4"]))
    rows = []
    for (estimator, lam), values in sorted(accuracies.items(),
                                           key=lambda item: (ESTIMATORS.index(item[0][0]), float(item[0][1]))):
        rows.append({"estimator": estimator, "lambda": lam, "runs": len(values),
                     "mean": f"{statistics.mean(values):.6f}",
                     "sd": f"{statistics.stdev(values):.6f}" if len(values) > 1 else "",
                     "min": f"{min(values):.6f}", "max": f"{max(values):.6f}"})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| estimator | λ | runs | ACC % mean ± sd | min – max |", "|---|---|---|---|---|"]
    for r in rows:
        spread = f" ± {100 * float(r['sd']):.2f}" if r["sd"] else ""
        lines.append(f"| {r['estimator']} | {r['lambda']} | {r['runs']} | {100 * float(r['mean']):.2f}{spread} | "
                     f"{100 * float(r['min']):.2f} – {100 * float(r['max']):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    rows = by_lambda()
    if sys.argv[1:] == ["--markdown"]:
        print(markdown(rows))
    else:
        writer = csv.DictWriter(sys.stdout, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
