"""The first minute: `--help` and a bad argument answer without importing torch. Measured as whole processes, against
a process that only imports torch on the same machine at the same time (a ratio: a loaded machine slows both)."""

import subprocess
import sys
import time

import pytest

ROUNDS = 5


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
