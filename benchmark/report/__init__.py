"""`python -m benchmark report`: forgetting and accuracy with confidence intervals, the paper's correlation
surfaces from your own runs, and its claims checked — as report/index.html, report/README.md, figures and CSVs,
also logged to the sweep's MLflow parent run.

The pages lead with the answers (a summary: ACC per driver beside the author's, the paper's claims for the paper's
driver), then the details, each section with its figures; they are rendered from templates (render.py). Sweeps of
several protocols are reported per protocol, and compared only by differences paired by seed.

Reads only the artifact contract of `benchmark run` (config.json, accuracy_matrix.csv, correlations.csv).
"""

from benchmark.report.build import build_report

__all__ = ["build_report"]
