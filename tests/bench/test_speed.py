"""Speed, as ratios against slow or bare references measured in the same process (absolute times on a shared
machine are noise; ratios are stable). Run with `pytest tests/bench` (tox -e bench); save a baseline with
`--benchmark-autosave` and compare later runs with `--benchmark-compare`."""

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from benchmark.config import ModelConfig, load_config
from benchmark.loop import Penalty, make_estimators, train_task
from benchmark.model import make_mlp
from tests.reference import fisher_loop, mas_loop

SAMPLES = 500  # the batch-1 loop takes ~4 ms a sample for fis and mas together


def best_of(fn, rounds=3) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def test_importances_vectorised_vs_batch1_loop(benchmark):
    torch.manual_seed(0)
    model = make_mlp(ModelConfig())
    x, y = torch.rand(SAMPLES, 784), torch.randint(0, 10, (SAMPLES,))
    estimators = make_estimators(load_config("paper"))

    def vectorised():
        return {name: estimators[name].importance(model, x, y) for name in ("fis", "mas")}

    loop = best_of(lambda: (fisher_loop(model, x, y), mas_loop(model, x, y)), rounds=1)
    benchmark.pedantic(vectorised, rounds=5, iterations=1)
    ratio = loop / benchmark.stats.stats.min
    benchmark.extra_info["speedup_vs_batch1_loop"] = ratio
    # measured 39–46× on the 2-core CI machine (the loop here is a lean autograd.grad loop, ~1 ms a sample);
    # this guards against a regression to per-sample work, the performance issue's target is ≥ 100×
    assert ratio >= 20, f"vectorised fis+mas only {ratio:.0f}× faster than the batch-1 loop"


def test_training_epoch_with_observers_vs_bare_loop(benchmark):
    """One epoch on 10 000 images: the experiment's step (penalty + SI bookkeeping) against a bare Adam loop
    over the same batches. The target (≤ 1.15× for a whole paper run) is checked by the performance issue's
    suite; here the ratio is recorded."""
    quick = load_config("quick")
    config = replace(quick, training=replace(quick.training, epochs=1))
    x, y = torch.rand(10000, 784), torch.randint(0, 10, (10000,))

    def bare():
        torch.manual_seed(0)
        model = make_mlp(config.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        for start in range(0, len(x), 100):
            idx = order[start:start + 100]
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()

    def observed():
        torch.manual_seed(0)
        model = make_mlp(config.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        si = make_estimators(config)["si"]
        si.begin_task(model)
        penalty = Penalty(1.0)
        penalty.consolidate(list(model.parameters()), [torch.rand_like(p) for p in model.parameters()])
        train_task(model, optimizer, x, y, config, torch.Generator().manual_seed(0), penalty, [si], task=0)

    bare_time = best_of(bare)
    benchmark.pedantic(observed, rounds=3, iterations=1)
    ratio = benchmark.stats.stats.min / bare_time
    benchmark.extra_info["ratio_vs_bare"] = ratio
    assert ratio < 2.0, f"a training epoch with penalty and SI costs {ratio:.2f}× the bare loop"
