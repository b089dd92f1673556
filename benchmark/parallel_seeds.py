"""Several seeds of one driver trained together (`run --parallel-seeds K`).

One Python step drives K trainings. On a GPU the seeds' layers run as batched matrix products (bmm over the
stacked weights): that is what pays there, where a batch-100 step of one small MLP leaves the device idle. Per
seed it is the algorithm of benchmark.loop, step for step: the same initial weights and batches (each seed its
own shuffle and permutations), the sum of the seeds' mean losses (whose gradient with respect to a seed's
weights is that seed's own gradient), one fused Adam over all seeds' parameters (per tensor, as for one seed),
the penalty and SI over the joint parameter list, and after each task each seed's own MLP goes through the same
importance, evaluation and consolidation code.

On a CPU each seed's MLP runs on its own slice (a batched product can sum in another order than nn.Linear's for
some shapes), so the results are bit-for-bit those of sequential seeds (tests/test_parallel_seeds.py); the
batched path is tested there against the sequential one up to float rounding.
"""

import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import Config
from benchmark.loop import (
    Diverged,
    Importances,
    Penalty,
    StepBuffers,
    TaskResult,
    accumulate,
    make_estimators,
    make_optimizer,
    task_accuracies,
    task_importances,
    train_step,
)
from benchmark.model import make_mlp
from benchmark.scenario import PermutedMNIST
from estimators.controls import Control


class SeedStack(nn.Module):
    """K MLPs of one shape (parameters seeds.0.fc1.weight … seeds.{K-1}.fc3.bias): [K, batch, in] → [K, batch, C]."""

    def __init__(self, models: list[nn.Sequential], slope: float, batched: bool):
        super().__init__()
        self.seeds = nn.ModuleList(models)
        self.slope, self.batched = slope, batched
        self.layers = [name for name, m in models[0].named_children() if isinstance(m, nn.Linear)]

    def forward(self, x: Tensor) -> Tensor:
        if not self.batched:
            return torch.stack([model(xk) for model, xk in zip(self.seeds, x)])
        for i, name in enumerate(self.layers):
            weight = torch.stack([model.get_submodule(name).weight for model in self.seeds])
            bias = torch.stack([model.get_submodule(name).bias for model in self.seeds])
            x = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x, self.slope)
        return x


def seed_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Each seed's mean cross-entropy over its own batch: [K, batch, classes], [K, batch] → [K]."""
    return torch.stack([F.cross_entropy(lk, yk) for lk, yk in zip(logits, y)])


def run_sequences(config: Config, driver: str, lam: float, seeds: list[int], scenarios: list[PermutedMNIST],
                  use_test_split: bool = True, batched: bool | None = None) -> Iterator[list[TaskResult | Diverged]]:
    """run_sequence for several seeds at once: after each task, one result per seed, or the Diverged that ended
    that seed (its parameters go on computing NaNs, which touch no other seed). batched: the GPU path (batched
    matrix products); default: on a GPU."""
    device = scenarios[0].train.x.device
    models = []
    for seed in seeds:
        torch.manual_seed(seed)  # each seed's initial weights, as run_sequence draws them
        models.append(make_mlp(config.model).to(device))
    stack = SeedStack(models, config.model.leaky_relu_slope, device.type == "cuda" if batched is None else batched)
    optimizer = make_optimizer(config, stack)
    shuffles = [torch.Generator().manual_seed(seed) for seed in seeds]
    # step observers see the joint parameter list; the other estimators, one set per seed, that seed's MLP
    shared = make_estimators(config, driver=driver)
    observers = [e for e in shared.values() if e.observes_steps]
    own = [{name: e for name, e in make_estimators(config, seed, driver).items() if not e.observes_steps}
           for seed in seeds]
    controls = [Control(driver, seed) if driver not in shared and driver != "none" else None for seed in seeds]
    penalty = Penalty(lam if driver != "none" else 0.0)
    names = [name for name, _ in models[0].named_parameters()]
    accumulated: list[Importances] = [{} for _ in seeds]
    diverged: dict[int, Diverged] = {}

    for task in range(scenarios[0].tasks):
        started = time.perf_counter()
        for observer in observers:
            observer.begin_task(stack)
        for model, estimators in zip(models, own):
            for estimator in estimators.values():
                estimator.begin_task(model)
        losses, penalties = train_task_stacked(stack, optimizer, scenarios, task, config, shuffles, penalty,
                                               observers, diverged)
        observed = {e.name: e.importance(stack, None, None) for e in observers}  # keys "seeds.k.fc1.weight", …
        results: list[TaskResult | Diverged] = []
        for k, (model, scenario) in enumerate(zip(models, scenarios)):
            if k in diverged:
                results.append(diverged[k])
                continue
            model.eval()
            x_imp, y_imp = scenario.inputs(scenario.importance, task), scenario.importance.y
            increments = task_importances(own[k], None, model, x_imp, y_imp)
            increments.update({name: {n: values[f"seeds.{k}.{n}"] for n in names} for name, values in observed.items()})
            increments = {name: increments[name] for name in shared}  # the registry's order, as run_sequence
            if controls[k] is not None:
                increments[driver] = controls[k].importance(model, increments)
            accumulated[k] = accumulate(accumulated[k], increments, config)
            permutations = torch.from_numpy(scenario.permutations)
            results.append(TaskResult(
                task=task,
                test_accuracy=task_accuracies(model, scenario.test, permutations) if use_test_split else [],
                validation_accuracy=task_accuracies(model, scenario.validation, permutations),
                increments=increments,
                accumulated=accumulated[k],
                state_dict={n: v.detach().clone() for n, v in model.state_dict().items()},
                epoch_losses=[epoch[k] for epoch in losses],
                epoch_penalties=[epoch[k] for epoch in penalties],
                seconds=time.perf_counter() - started,
            ))
            model.train()
        if driver != "none":
            penalty.consolidate(list(stack.parameters()), [
                accumulated[k][driver][n] if k not in diverged else torch.zeros_like(p)
                for k, model in enumerate(models) for n, p in model.named_parameters()])
        yield results


def train_task_stacked(stack: SeedStack, optimizer: torch.optim.Optimizer, scenarios: list[PermutedMNIST],
                       task: int, config: Config, shuffles: list[torch.Generator], penalty: Penalty,
                       observers: list, diverged: dict[int, Diverged]) -> tuple[list[list[float]], list[list[float]]]:
    """train_task for the stacked seeds; per epoch, each seed's mean task loss and penalty."""
    batch, seeds, images = config.training.batch_size, len(scenarios), len(scenarios[0].train.x)
    trains = [s.train for s in scenarios]
    permutations = [torch.from_numpy(s.permutations[task]).to(s.train.x.device) for s in scenarios]
    params = list(stack.parameters())
    buffers = StepBuffers.allocate(params, observers, penalty)
    epoch_losses, epoch_penalties = [], []
    step = 0
    for _ in range(config.training.epochs):
        # each seed draws its order from its own generator, as run_sequence does
        orders = [torch.randperm(images, generator=g).to(t.x.device) for g, t in zip(shuffles, trains)]
        totals = [0.0] * seeds
        for start in range(0, images, batch):
            idx = [order[start:start + batch] for order in orders]
            # the images of run_sequence's scenario.inputs(train, task)[idx]: the batch permuted, not the set
            x = torch.stack([t.x[i][:, p] for t, i, p in zip(trains, idx, permutations)])
            y = torch.stack([t.y[i] for t, i in zip(trains, idx)])
            losses = train_step(stack, params, optimizer, x, y, penalty, observers, buffers, loss=seed_losses)
            for k, value in enumerate(losses.tolist()):
                if k not in diverged and not math.isfinite(value):
                    diverged[k] = Diverged(task, step, value)
                totals[k] += value * len(idx[k])
            step += 1
        epoch_losses.append([total / images for total in totals])
        epoch_penalties.append(penalty.values(params, seeds))
    return epoch_losses, epoch_penalties
