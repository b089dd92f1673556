"""One (driver, seed) cell of the experiment: train the tasks in order, estimate importances after each.

Reads top to bottom: run_sequence → train_task → train_step. Every estimator observes every run; only the
driver's importances enter the penalty.
"""

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.config import Config
from benchmark.model import make_mlp
from benchmark.scenario import PermutedMNIST
from estimators import ESTIMATORS, Estimator

Importances = dict[str, dict[str, Tensor]]  # estimator -> parameter name -> tensor


class Diverged(RuntimeError):
    """The training loss stopped being finite (λ or the learning rate too large)."""

    def __init__(self, task: int, step: int, loss: float):
        super().__init__(f"loss became {loss} at task {task}, step {step}")
        self.task, self.step = task, step


class Penalty:
    """λ Σ_i Ω_i (θ_i − θ*_i)², with Ω the driver's importances summed over finished tasks and θ* the
    parameters after the latest finished task (no ½, as in the paper author's code).

    Applied through its exact gradient 2λΩ(θ − θ*), added to the task loss's gradient: SI needs the task
    gradient on its own, and this way one backward pass gives both.
    """

    def __init__(self, lam: float):
        self.lam = lam
        self.omega: list[Tensor] = []
        self.anchor: list[Tensor] = []

    def consolidate(self, params: list[Tensor], omega: list[Tensor]) -> None:
        self.omega = [o.detach().clone() for o in omega]
        self.anchor = [p.detach().clone() for p in params]
        self.diff = [torch.empty_like(a) for a in self.anchor]  # reused every step: no allocation per step

    def add_gradient(self, params: list[Tensor]) -> None:
        """p.grad += 2λΩ(θ − θ*) for every parameter."""
        if self.lam == 0 or not self.omega:
            return
        torch._foreach_copy_(self.diff, [p.detach() for p in params])
        torch._foreach_sub_(self.diff, self.anchor)
        torch._foreach_addcmul_([p.grad for p in params], self.omega, self.diff, value=2 * self.lam)

    def value(self, params: list[Tensor]) -> float:
        if self.lam == 0 or not self.omega:
            return 0.0
        return self.lam * sum(float((o * (p.detach() - a).square()).sum())
                              for p, o, a in zip(params, self.omega, self.anchor))


@dataclass
class TaskResult:
    task: int
    test_accuracy: list[float]  # on every task j of the sequence, after training this task
    validation_accuracy: list[float]
    increments: Importances  # this task's own importance, per estimator
    accumulated: Importances  # summed over tasks 0..task: what a penalty driven by that estimator sees
    state_dict: dict[str, Tensor]
    epoch_losses: list[float]  # mean task (cross-entropy) loss per epoch, without the penalty
    epoch_penalties: list[float]  # the penalty's value at the end of each epoch
    seconds: float


def make_estimators(config: Config) -> dict[str, Estimator]:
    e = config.estimators
    options = {
        "fis": {"batch_size": e.batch_size},
        "mas": {"batch_size": e.batch_size},
        "si": {"xi": e.si_xi, "gradient": e.si_gradient, "clip_at_zero": e.si_clip_at_zero},
        "sig": {"batch_size": e.batch_size},
    }
    return {name: cls(**options[name]) for name, cls in ESTIMATORS.items()}


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = config.training
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr)
    return torch.optim.SGD(model.parameters(), lr=t.lr)


def run_sequence(config: Config, driver: str, lam: float, seed: int, scenario: PermutedMNIST,
                 use_test_split: bool = True) -> Iterator[TaskResult]:
    """Train tasks 0 .. T-1 in order with the driver's penalty; yield each task's results as it ends.

    use_test_split=False (tuning) never reads the test images: test_accuracy stays empty."""
    device = scenario.train.x.device
    torch.manual_seed(seed)  # the initial weights: the same for every driver with this seed
    model = make_mlp(config.model).to(device)
    optimizer = make_optimizer(config, model)  # one optimiser across tasks, as in the author's code
    shuffle = torch.Generator().manual_seed(seed)
    estimators = make_estimators(config)
    penalty = Penalty(lam if driver != "none" else 0.0)
    names = [name for name, _ in model.named_parameters()]
    accumulated: Importances = {}

    for task in range(scenario.tasks):
        started = time.perf_counter()
        for estimator in estimators.values():
            estimator.begin_task(model)
        losses, penalties = train_task(model, optimizer, scenario.inputs(scenario.train, task), scenario.train.y,
                            config, shuffle, penalty, [e for e in estimators.values() if e.observes_steps], task)

        model.eval()
        x_imp, y_imp = scenario.inputs(scenario.importance, task), scenario.importance.y
        increments = {name: e.importance(model, x_imp, y_imp) for name, e in estimators.items()}
        for est, values in increments.items():
            previous = accumulated.get(est)
            accumulated[est] = {k: v if previous is None else previous[k] + v for k, v in values.items()}
        if driver != "none":
            params = list(model.parameters())
            penalty.consolidate(params, [accumulated[driver][n] for n in names])

        yield TaskResult(
            task=task,
            test_accuracy=[accuracy(model, scenario.inputs(scenario.test, j), scenario.test.y)
                           for j in range(scenario.tasks)] if use_test_split else [],
            validation_accuracy=[accuracy(model, scenario.inputs(scenario.validation, j), scenario.validation.y)
                                 for j in range(scenario.tasks)],
            increments=increments,
            accumulated=accumulated,
            state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
            epoch_losses=losses,
            epoch_penalties=penalties,
            seconds=time.perf_counter() - started,
        )
        model.train()


def train_task(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, config: Config,
               shuffle: torch.Generator, penalty: Penalty, step_observers: list[Estimator],
               task: int) -> tuple[list[float], list[float]]:
    """Train one task; return the mean task loss and the penalty after each epoch."""
    batch = config.training.batch_size
    params = list(model.parameters())
    # copies of the task gradient and of θ before each step, for the step observers (SI); allocated once,
    # since a fresh megabyte per step costs more on a CPU than the copy itself
    task_grads = [torch.empty_like(p) for p in params] if step_observers else []
    before = [torch.empty_like(p) for p in params] if step_observers else []
    epoch_losses, epoch_penalties = [], []
    step = 0
    for _ in range(config.training.epochs):
        order = torch.randperm(len(x), generator=shuffle).to(x.device)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = train_step(model, params, optimizer, x[idx], y[idx], penalty, step_observers, task_grads, before)
            if not math.isfinite(loss):
                raise Diverged(task, step, loss)
            total += loss * len(idx)
            step += 1
        epoch_losses.append(total / len(x))
        epoch_penalties.append(penalty.value(params))
    return epoch_losses, epoch_penalties


def train_step(model: nn.Module, params: list[Tensor], optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               penalty: Penalty, step_observers: list[Estimator], task_grads: list[Tensor],
               before: list[Tensor]) -> float:
    """One optimiser step on task loss + penalty; returns the task loss."""
    optimizer.zero_grad(set_to_none=False)
    task_loss = F.cross_entropy(model(x), y)
    task_loss.backward()
    if step_observers:
        torch._foreach_copy_(task_grads, [p.grad for p in params])
        penalty.add_gradient(params)
        torch._foreach_copy_(before, [p.detach() for p in params])
        optimizer.step()
        for observer in step_observers:
            observer.observe_step(task_grads, [p.grad for p in params], before, params)
    else:
        penalty.add_gradient(params)
        optimizer.step()
    return task_loss.item()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 5000) -> float:
    correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)
