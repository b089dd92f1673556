"""The first minute: `--help` and a bad argument answer without importing torch, and a run starts training within
seconds. Measured as whole processes, against a process that only imports torch on the same machine at the same time
(a ratio: a loaded machine slows both)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR

ROUNDS = 5
START_UP_GOAL_SECONDS = 3.0
# Guards as ratios to a bare torch import (≈ 1.4 s on a quiet machine), above what was measured (docs/performance.md,
# "The first minute": 1.90 with an existing store, 2.62 creating one, under load), so that noise cannot fail them
# while an import of torchvision or a second store creation would.
START_UP_GUARD_RATIO = {False: 3.0, True: 4.0}  # by whether the run creates its store


def seconds(args: list[str]) -> float:
    """The fastest of ROUNDS runs of a fresh Python process."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, timeout=120)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("args, what", [
    (["-m", "benchmark", "--help"], "--help"),
    (["-m", "benchmark", "run", "--seeds", "0"], "a bad argument"),
    (["-m", "benchmark", "run", "--drivers", "nonesuch"], "an unknown driver"),
    (["-m", "benchmark", "run", "--lambda", "mas=-1"], "a negative λ"),
])
def test_answers_before_torch_would_have_loaded(benchmark, args, what):
    torch_import = seconds(["-c", "import torch"])
    answer = benchmark.pedantic(seconds, args=(args,), rounds=1, iterations=1)
    ratio = answer / torch_import
    print(f"\n{what}: {answer:.3f} s; importing torch alone {torch_import:.3f} s; ratio {ratio:.2f}")
    assert ratio <= 0.5, f"{what} took {answer:.2f} s, {ratio:.2f}× a bare torch import: something imports torch"


def seconds_to_first_cell(store: Path, fresh: bool, first_seed: int) -> float:
    """From a `run` process's start to its sweep line, which it prints as the first cell begins to train: imports,
    MNIST, the store (created anew when `fresh`), the sweep's parent run. The process is stopped there."""
    if fresh:
        store.unlink(missing_ok=True)
    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--protocol", "smoke", "--drivers", "none",
                                "--seeds", "1", "--first-seed", str(first_seed)],
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stderr:
            if line.startswith("sweep "):
                return time.perf_counter() - start
        raise AssertionError(f"run exited {process.wait()} before its sweep line")
    finally:
        process.send_signal(signal.SIGINT)  # a stop the suite handles: the cell ends KILLED, the store intact
        process.wait(timeout=120)


@pytest.mark.parametrize("fresh", [False, True], ids=["existing-store", "new-store"])
def test_a_runs_fixed_start_up(benchmark, tmp_path, fresh):
    """Goal: ≤ 3 s on a quiet machine; guarded as a ratio to a bare torch import measured beside it."""
    store = tmp_path / "mlflow.db"
    if not fresh:
        seconds_to_first_cell(store, fresh=True, first_seed=0)  # the store exists before the rounds
    torch_import = seconds(["-c", "import torch"])
    start_up = benchmark.pedantic(lambda: min(seconds_to_first_cell(store, fresh, seed) for seed in range(1, 4)),
                                  rounds=1, iterations=1)
    ratio = start_up / torch_import
    benchmark.extra_info.update(start_up_seconds=start_up, torch_import_seconds=torch_import, ratio=ratio,
                                goal_met=start_up <= START_UP_GOAL_SECONDS)
    print(f"\nrun start-up ({'new' if fresh else 'existing'} store): {start_up:.2f} s; importing torch alone "
          f"{torch_import:.2f} s; ratio {ratio:.2f}")
    assert ratio <= START_UP_GUARD_RATIO[fresh], \
        f"a run took {start_up:.1f} s ({ratio:.1f}× a torch import) to start training"
