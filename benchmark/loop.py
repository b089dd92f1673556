"""One (driver, seed) cell of the experiment: train the tasks in order, estimate importances after each.

Reads top to bottom: run_sequence → train_task → train_step. The protocol's estimators (estimators.observe)
observe every run; only the driver's importances enter the penalty.
"""

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark import plugins
from benchmark.config import Config
from benchmark.model import make_model
from benchmark.scenario import PermutedMNIST, Split, TaskSequence
from estimators import ESTIMATORS, Estimator
from estimators.controls import Control, base_estimator

Importances = dict[str, dict[str, Tensor]]  # estimator -> parameter name -> tensor


class EstimatorFailed(RuntimeError):
    """A plugin estimator raised or broke its contract: its cell fails, the sweep goes on (a built-in estimator
    that raises is a bug, and stops the sweep)."""

    def __init__(self, name: str, problem: str):
        spec = plugins.provenance()[name]["spec"]
        super().__init__(f"estimator plugin {name} ({spec}): {problem}")


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

    @property
    def active(self) -> bool:
        return self.lam != 0 and bool(self.omega)

    def add_gradient(self, params: list[Tensor], out: list[Tensor] | None = None) -> None:
        """p.grad += 2λΩ(θ − θ*) for every parameter; with out, the sum goes there and p.grad is left as it was."""
        if not self.active:
            return
        for diff, p, anchor in zip(self.diff, params, self.anchor):
            torch.sub(p.detach(), anchor, out=diff)
        if out is None:
            torch._foreach_addcmul_([p.grad for p in params], self.omega, self.diff, value=2 * self.lam)
            return
        for total, p, omega, diff in zip(out, params, self.omega, self.diff):
            torch.addcmul(p.grad, omega, diff, value=2 * self.lam, out=total)

    def value(self, params: list[Tensor]) -> float:
        return self.values(params, 1)[0]

    def values(self, params: list[Tensor], groups: int) -> list[float]:
        """The penalty of each of `groups` equal consecutive runs of params (one per seed, for stacked seeds)."""
        size = len(params) // groups
        if not self.active:
            return [0.0] * groups
        return [self.lam * sum(float((o * (p.detach() - a).square()).sum()) for p, o, a in
                               zip(params[g * size:(g + 1) * size], self.omega[g * size:(g + 1) * size],
                                   self.anchor[g * size:(g + 1) * size]))
                for g in range(groups)]


@dataclass
class TaskResult:
    task: int
    test_accuracy: list[float]  # on every task j of the sequence, after training this task
    validation_accuracy: list[float]
    increments: Importances  # this task's own importance, per estimator
    accumulated: Importances  # over tasks 0..task (see accumulate): what a penalty driven by that estimator sees
    state_dict: dict[str, Tensor]
    epoch_losses: list[float]  # mean task (cross-entropy) loss per epoch, without the penalty
    epoch_penalties: list[float]  # the penalty's value at the end of each epoch
    seconds: float


def make_estimators(config: Config, seed: int = 0, driver: str = "none") -> dict[str, Estimator]:
    """The estimators the protocol observes, and the driver's (for a control, the estimator it transforms), each
    configured from the protocol, in the registry's order; seed: the run's (fis_sampled draws labels from it)."""
    e = config.estimators
    options = {
        "fis": {"batch_size": e.batch_size},
        "mas": {"batch_size": e.batch_size},
        "si": {"xi": e.si_xi, "gradient": e.si_gradient, "clip_at_zero": e.si_clip_at_zero},
        "sig": {"batch_size": e.batch_size},
        "fis_exact": {"batch_size": e.batch_size},
        "fis_sampled": {"seed": seed, "batch_size": e.batch_size},
        "fis_batched": {"batch_size": e.fis_batched_batch_size},
        "abs_fisher": {"batch_size": e.batch_size},
        "sos": {},
    }
    needed = {driver, base_estimator(driver)}
    return {name: cls(**options.get(name, {})) for name, cls in plugins.estimators().items()
            if name in e.observe or name in needed}


def task_importances(estimators: dict[str, Estimator], control: Control | None, model: nn.Module, x: Tensor,
                     y: Tensor) -> Importances:
    """Each estimator's importance of the task just trained; a control driver's after them, from theirs."""
    increments = {name: e.importance(model, x, y) if name in ESTIMATORS else plugin_importance(e, model, x, y)
                  for name, e in estimators.items()}
    if control is not None:
        increments[control.name] = control.importance(model, increments)
    return increments


def accumulate(accumulated: Importances, increments: Importances, config: Config) -> Importances:
    """Each estimator's importance over the tasks so far: the sum (the paper's author), or with
    accumulation = "online" the decayed sum γ Ω + Ω_task of online EWC (Schwarz et al. 2018)."""
    gamma = config.estimators.online_gamma if config.estimators.accumulation == "online" else 1.0
    return {est: values if est not in accumulated else {k: gamma * accumulated[est][k] + v for k, v in values.items()}
            for est, values in increments.items()}


def plugin_importance(estimator: Estimator, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """A plugin's importance, checked against the contract: a tensor shaped like each parameter."""
    try:
        importance = estimator.importance(model, x, y)
    except Exception as e:
        raise EstimatorFailed(estimator.name, f"importance() raised {type(e).__name__}: {e}") from e
    shapes = {name: p.shape for name, p in model.named_parameters()}
    if not isinstance(importance, dict) or set(importance) != set(shapes) or any(
            not isinstance(v, Tensor) or v.shape != shapes[k] for k, v in importance.items()):
        raise EstimatorFailed(estimator.name, "importance() must return {parameter name: tensor shaped like it} "
                                              "for every parameter")
    return {name: importance[name].detach() for name in shapes}


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = config.training
    if t.optimizer == "adam":
        # fused: all of Adam's arithmetic in one kernel per step (CPU and CUDA). The same algorithm as PyTorch's
        # default implementation, with its float operations in another order; a quarter less training time on a
        # 2-core CPU (README, "Performance").
        return torch.optim.Adam(model.parameters(), lr=t.lr, fused=True)
    return torch.optim.SGD(model.parameters(), lr=t.lr)


def run_sequence(config: Config, driver: str, lam: float, seed: int, scenario: TaskSequence,
                 use_test_split: bool = True) -> Iterator[TaskResult]:
    """Train tasks 0 .. T-1 in order with the driver's penalty; yield each task's results as it ends. Training
    and importances of task t see task t's head (scenario.classes), evaluation each task's own.

    use_test_split=False (tuning) never reads the test images: test_accuracy stays empty."""
    device = scenario.device
    torch.manual_seed(seed)  # the initial weights: the same for every driver with this seed
    model = make_model(config.model).to(device)
    optimizer = make_optimizer(config, model)  # one optimiser across tasks, as in the author's code
    shuffle = torch.Generator().manual_seed(seed)
    estimators = make_estimators(config, seed, driver)
    control = Control(driver, seed) if driver not in estimators and driver != "none" else None
    penalty = Penalty(lam if driver != "none" else 0.0)
    names = [name for name, _ in model.named_parameters()]
    accumulated: Importances = {}

    for task in range(scenario.tasks):
        started = time.perf_counter()
        for estimator in estimators.values():
            estimator.begin_task(model)
        with task_head(model, scenario.classes(task)):
            losses, penalties = train_task(model, optimizer, *scenario.split("train", task), config, shuffle,
                                           penalty, [e for e in estimators.values() if e.observes_steps], task)
            model.eval()
            increments = task_importances(estimators, control, model, *scenario.split("importance", task))
        accumulated = accumulate(accumulated, increments, config)
        if driver != "none":
            params = list(model.parameters())
            penalty.consolidate(params, [accumulated[driver][n] for n in names])

        yield TaskResult(
            task=task,
            test_accuracy=evaluate(model, scenario, "test") if use_test_split else [],
            validation_accuracy=evaluate(model, scenario, "validation"),
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
    buffers = StepBuffers.allocate(params, step_observers, penalty)
    epoch_losses, epoch_penalties = [], []
    step = 0
    for _ in range(config.training.epochs):
        order = torch.randperm(len(x), generator=shuffle).to(x.device)
        total = 0.0
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            loss = train_step(model, params, optimizer, x[idx], y[idx], penalty, step_observers, buffers).item()
            if not math.isfinite(loss):
                raise Diverged(task, step, loss)
            total += loss * len(idx)
            step += 1
        epoch_losses.append(total / len(x))
        epoch_penalties.append(penalty.value(params))
    return epoch_losses, epoch_penalties


@dataclass
class StepBuffers:
    """What the step observers (SI, SOS) get besides p.grad, in buffers allocated once per task: a fresh megabyte
    per step costs a CPU more than the copy into it."""

    values: list[Tensor]  # the parameters, detached (views that follow every update)
    total_grads: list[Tensor]  # task + penalty gradient, while a penalty is active: it becomes p.grad, so that
    # the task gradient autograd produced stays as it is for SI, without a copy
    step_change: list[Tensor]  # θ after the step − θ before it

    @staticmethod
    def allocate(params: list[Tensor], step_observers: list[Estimator], penalty: Penalty) -> "StepBuffers":
        observed = bool(step_observers)
        return StepBuffers(
            values=[p.detach() for p in params],
            total_grads=[torch.empty_like(p) for p in params] if observed and penalty.active else [],
            step_change=[torch.empty_like(p) for p in params] if observed else [],
        )


def train_step(model: nn.Module, params: list[Tensor], optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               penalty: Penalty, step_observers: list[Estimator], buffers: StepBuffers,
               loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy) -> Tensor:
    """One optimiser step on task loss + penalty; returns the task loss, detached (one per seed for stacked
    seeds, whose losses are summed: each seed's weights get their own loss's gradient)."""
    optimizer.zero_grad()  # set to None: backward hands over fresh gradient buffers, as in a bare loop
    task_loss = loss(model(x), y)
    task_loss.sum().backward()
    if not step_observers:
        penalty.add_gradient(params)
        optimizer.step()
        return task_loss.detach()
    task_grads = [p.grad for p in params]
    if buffers.total_grads:
        penalty.add_gradient(params, out=buffers.total_grads)
        for p, total in zip(params, buffers.total_grads):
            p.grad = total
    torch._foreach_copy_(buffers.step_change, buffers.values)
    optimizer.step()
    for change, value in zip(buffers.step_change, buffers.values):
        torch.sub(value, change, out=change)
    total_grads = [p.grad for p in params]
    for observer in step_observers:
        observer.observe_step(task_grads, total_grads, buffers.step_change)
    return task_loss.detach()


@torch.no_grad()
def task_accuracies(model: nn.Sequential, split: Split, permutations: Tensor, chunk: int = 500) -> list[float]:
    """The model's accuracy on every task j of the sequence, task j's images being split.x[:, permutations[j]];
    none for an empty split (a protocol without a validation split).

    Rather than gather ten permuted copies of the images, the first layer's weight columns are permuted —
    x[:, p] Wᵀ = x W[:, argsort(p)]ᵀ — and the first layers of all tasks run as one matrix product. Same model,
    same images; only the order of the float additions inside the first layer differs.
    """
    if not len(split.x):
        return []
    first, rest = model[0], model[1:]
    tasks, hidden = len(permutations), first.out_features
    inverse = permutations.argsort(dim=1).to(first.weight.device)
    weight = first.weight[:, inverse].transpose(0, 1).reshape(tasks * hidden, first.in_features)
    bias = first.bias.repeat(tasks)
    correct = torch.zeros(tasks, dtype=torch.int64, device=first.weight.device)
    for start in range(0, len(split.x), chunk):
        x, y = split.x[start:start + chunk], split.y[start:start + chunk]
        h = torch.addmm(bias, x, weight.T).view(len(x), tasks, hidden).transpose(0, 1)
        logits = rest(h.reshape(tasks * len(x), hidden)).view(tasks, len(x), -1)
        correct += (logits.argmax(2) == y).sum(1)
    return (correct.double() / len(split.x)).tolist()


def evaluate(model: nn.Module, scenario: TaskSequence, split: str) -> list[float]:
    """The model's accuracy on every task of the sequence on one split, each task through its own head; none for
    an empty split. The paper's MLP on permuted tasks takes task_accuracies' shortcut."""
    if isinstance(scenario, PermutedMNIST) and isinstance(model, nn.Sequential) and isinstance(model[0], nn.Linear):
        return task_accuracies(model, getattr(scenario, split), torch.from_numpy(scenario.permutations))
    accuracies = []
    for task in range(scenario.tasks):
        x, y = scenario.split(split, task)
        if not len(x):
            return []
        with task_head(model, scenario.classes(task)):
            accuracies.append(accuracy(model, x, y))
    return accuracies


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 500) -> float:
    correct = sum(int((model(x[start:start + chunk]).argmax(1) == y[start:start + chunk]).sum())
                  for start in range(0, len(x), chunk))
    return correct / len(x)


@contextmanager
def task_head(model: nn.Module, classes: Tensor | None) -> Iterator[None]:
    """Within it the model's logits outside `classes` are −inf, so that softmax, the loss, the prediction and
    every importance see only the task's classes: one head per task (the output layer's rows of its classes,
    task-incremental), while the model stays one module with one output, whatever the model. None: all classes."""
    if classes is None:
        yield
        return

    def mask(_module, _args, out: Tensor) -> Tensor:
        keep = torch.zeros(out.shape[-1], dtype=torch.bool, device=out.device)
        keep[classes] = True
        return out.masked_fill(~keep, float("-inf"))

    handle = model.register_forward_hook(mask)
    try:
        yield
    finally:
        handle.remove()
