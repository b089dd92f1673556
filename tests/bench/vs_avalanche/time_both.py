"""This suite's CLI against Avalanche's EWC on the same 3-task protocol (pmnist3.toml), whole processes, interleaved.

    python tests/bench/vs_avalanche/time_both.py --avalanche-python /path/to/avalanche-venv/bin/python --rounds 3

Each round runs both once, this suite first, each from process start to exit (imports, data, training, evaluation,
and for the suite its MLflow store, created new each round so nothing resumes). Prints every round's seconds and final
accuracy, then the medians and their ratio. Leave the machine otherwise idle: a second torch process on the same
cores slows both several-fold. Results and commands: docs/performance.md.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(command: list[str], acc_pattern: str) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{command[0]} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    found = re.search(acc_pattern, done.stdout + done.stderr)
    if not found:
        sys.exit(f"no accuracy in the output of {' '.join(command)}")
    return seconds, float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avalanche-python", required=True, help="a Python with avalanche-lib installed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("BENCHMARK_DATA_DIR", "data"),
                        help="folder holding MNIST/raw (default $BENCHMARK_DATA_DIR)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"suite": [], "avalanche": []}
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory() as store:
            suite = [sys.executable, "-m", "benchmark", "run", "--config", str(HERE / "pmnist3.toml"), "--seeds", "1",
                     "--drivers", "fis_batched", "--lambda-source", "protocol", "--no-download",
                     "--data-dir", args.data_dir, "--tracking-uri", f"sqlite:///{store}/mlflow.db",
                     "--storage", f"{store}/optuna.journal"]
            results = {"suite": timed(suite, r"finished: fis_batched seed 0, ACC ([0-9.]+)")}
        avalanche = [args.avalanche_python, str(HERE / "avalanche_ewc.py"), "--data-dir", args.data_dir]
        results["avalanche"] = timed(avalanche, r"ACC ([0-9.]+)")
        for name, (seconds, acc) in results.items():
            times[name].append(seconds)
            print(f"round {round_ + 1} {name}: {seconds:.1f} s, ACC {acc:.4f}", flush=True)
    suite, avalanche = statistics.median(times["suite"]), statistics.median(times["avalanche"])
    print(f"median: suite {suite:.1f} s, avalanche {avalanche:.1f} s; avalanche / suite = {avalanche / suite:.2f}")


if __name__ == "__main__":
    main()
