"""The penalty's wiring across tasks against a hand-written EWC loop: plain autograd on task loss + λ Σ Ω (θ − θ*)²,
Ω the driver's importances summed over the finished tasks, θ* the parameters after the latest one, one Adam over
the whole sequence. Nothing of benchmark.loop's training is reused; only the model, the data and the estimator's
importance (each checked against its own per-sample loop elsewhere)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from benchmark.config import load_config
from benchmark.loop import run_sequence
from benchmark.model import make_model
from benchmark.scenario import make_splits, make_task_sequence
from estimators import ESTIMATORS


def ewc_by_hand(config, driver: str, lam: float, seed: int, sequence) -> list[dict[str, torch.Tensor]]:
    """The parameters after every task, trained the textbook way."""
    torch.manual_seed(seed)
    model = make_model(config.model)
    shuffle = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.training.lr)
    estimator = ESTIMATORS[driver](batch_size=config.estimators.batch_size)
    omega: dict[str, torch.Tensor] = {}
    anchor: dict[str, torch.Tensor] = {}
    states = []
    for task in range(sequence.tasks):
        x, y = sequence.split("train", task)
        for _ in range(config.training.epochs):
            order = torch.randperm(len(x), generator=shuffle)
            for start in range(0, len(x), config.training.batch_size):
                batch = order[start:start + config.training.batch_size]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                if omega:
                    loss = loss + lam * sum((omega[n] * (p - anchor[n]) ** 2).sum()
                                            for n, p in model.named_parameters())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        increment = estimator.importance(model, *sequence.split("importance", task))
        model.train()
        omega = {n: omega[n] + v if omega else v.clone() for n, v in increment.items()}
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        states.append(dict(anchor))
    return states


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["fis", "mas"])
def test_training_with_a_penalty_equals_the_hand_written_loop(driver, mnist):
    config = load_config("smoke")
    config = replace(config, training=replace(config.training, epochs=2),
                     estimators=replace(config.estimators, observe=[driver]))
    lam = 100 * config.penalty.lambda_[driver]  # large enough that a wrong anchor or Ω moves the weights visibly
    sequence = make_task_sequence(config.data, {"mnist": make_splits(config.data, mnist)}, seed=3)
    suite = [r.state_dict for r in run_sequence(config, driver, lam, 3, sequence)]
    by_hand = ewc_by_hand(config, driver, lam, 3, sequence)
    unpenalised = [r.state_dict for r in run_sequence(config, "none", 0.0, 3, sequence)]
    for task, (mine, theirs, free) in enumerate(zip(suite, by_hand, unpenalised)):
        for name, value in theirs.items():
            gap = float((mine[name] - value).abs().max())
            moved = float((free[name] - value).abs().max())
            # the suite's fused Adam and analytic penalty gradient round differently from autograd: float32 noise,
            # far below what the penalty itself moves (after task 0, where no penalty has acted, both are equal)
            assert gap <= 1e-4 * max(1.0, float(value.abs().max())), (task, name, gap)
            if task > 0 and name.endswith("weight"):
                assert moved > 100 * gap, (task, name, moved, gap)
