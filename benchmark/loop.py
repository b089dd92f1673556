"""The cells of the experiment — (driver, seed) each — trained: the tasks in order, importances after each.

Reads top to bottom: run_cells → train_task → train_step. Several cells, whatever their drivers, train stacked in
one step (`run --parallel K`); one cell alone is the stack of one (run_sequence), the same code. The protocol's
estimators (estimators.observe) observe every cell; only the driver's importances enter its penalty.
"""

import dataclasses
import inspect
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark import plugins
from benchmark.config import Config
from benchmark.evaluation import Scores, evaluate, task_head
from benchmark.model import make_model
from benchmark.penalty import Penalty
from benchmark.scenario import TaskSequence
from estimators import ESTIMATORS, Estimator
from estimators.controls import Control
from estimators.names import base_estimator

Importances = dict[str, dict[str, Tensor]]  # estimator -> parameter name -> tensor
AdamState = dict[str, Tensor]  # one cell's Adam state: "<parameter name>.<key>" -> tensor, key in ADAM_STATE_KEYS
ADAM_STATE_KEYS = ("step", "exp_avg", "exp_avg_sq")  # per parameter: the step count, the two moments


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


@dataclass
class TaskResult:
    task: int
    test_accuracy: list[float]  # on every task j of the sequence, after training this task
    validation_accuracy: list[float]
    test_loss: list[float]  # mean cross-entropy on every task j's test images (through its evaluation head)
    increments: Importances  # this task's own importance, per estimator
    accumulated: Importances  # over tasks 0..task (see accumulate): what a penalty driven by that estimator sees
    state_dict: dict[str, Tensor]
    epoch_losses: list[float]  # mean task (cross-entropy) loss per epoch, without the penalty
    epoch_penalties: list[float]  # the penalty's value at the end of each epoch
    seconds: float
    # after the last task with training.adam_state = "carried": the Adam state the chain's next cell starts from
    adam_state: AdamState | None = None


def make_estimators(config: Config, seed: int = 0, driver: str = "none") -> dict[str, Estimator]:
    """The estimators the protocol observes, and the driver's (for a control, the estimator it transforms), each
    configured from the protocol (estimator_options), in the registry's order; seed: the run's."""
    needed = {driver, base_estimator(driver)}
    return {name: cls(**estimator_options(name, cls, config, seed)) for name, cls in plugins.estimators().items()
            if name in config.estimators.observe or name in needed}


def estimator_options(name: str, cls: type, config: Config, seed: int) -> dict:
    """An estimator's constructor arguments, read from its signature: a parameter p takes the protocol's
    [estimators] <name>_<p> where there is one (si_xi, fis_batched_batch_size), else [estimators] p (batch_size);
    `seed` takes the run's seed (fis_sampled draws labels from it). Parameters the protocol names neither way keep
    their defaults: the estimator declares its options, and no estimator is special-cased here."""
    settings = dataclasses.asdict(config.estimators)
    options = {}
    for parameter in inspect.signature(cls).parameters:
        if parameter == "seed":
            options["seed"] = seed
        elif f"{name}_{parameter}" in settings:
            options[parameter] = settings[f"{name}_{parameter}"]
        elif parameter in settings:
            options[parameter] = settings[parameter]
    return options


def task_importances(estimators: dict[str, Estimator], control: Control | None, model: nn.Module, x: Tensor,
                     y: Tensor) -> Importances:
    """Each estimator's importance of the task just trained; a control driver's after them, from theirs."""
    increments = {name: e.importance(model, x, y) if name in ESTIMATORS else plugin_importance(e, model, x, y)
                  for name, e in estimators.items()}
    if control is not None:
        increments[control.name] = control.importance(model, increments)
    return increments


def accumulate(accumulated: Importances, increments: Importances, config: Config) -> Importances:
    """Each estimator's importance over the tasks so far, Ω ← decay · Ω + share · Ω_task from Ω = 0: the sum (the
    paper's author); with accumulation = "online" the decayed sum γ Ω + Ω_task of online EWC (Schwarz et al. 2018);
    with "blend" α Ω + (1 − α) Ω_task, as FACIL's EWC and MAS and Avalanche's MAS merge importances (starting from
    zeros, so the first task enters as (1 − α) Ω_task) — (1 − α) times "online" with γ = α."""
    e = config.estimators
    decay, share = {"sum": (1.0, 1.0), "online": (e.online_gamma, 1.0),
                    "blend": (e.blend_alpha, 1.0 - e.blend_alpha)}[e.accumulation]
    return {est: {k: share * v if est not in accumulated else decay * accumulated[est][k] + share * v
                  for k, v in values.items()}
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


def adam_state(optimizer: torch.optim.Optimizer, names: list[str], params: list[Tensor]) -> AdamState:
    """The Adam state of one cell's parameters, copied (the optimiser goes on updating its own)."""
    return {f"{name}.{key}": optimizer.state[p][key].detach().clone()
            for name, p in zip(names, params) for key in ADAM_STATE_KEYS}


def start_adam_from(optimizer: torch.optim.Optimizer, names: list[str], params: list[Tensor],
                    state: AdamState) -> None:
    """One cell's parameters take up a previous cell's Adam state instead of starting fresh: what the author's one
    Adam does when reset() re-initialises the weights in place and leaves the optimiser as it is."""
    for name, p in zip(names, params):
        optimizer.state[p] = {key: state[f"{name}.{key}"].to(p.device, copy=True) for key in ADAM_STATE_KEYS}


@dataclass(frozen=True)
class Cell:
    """One training of the sweep: a driver with its λ, a seed and the seed's task sequence; adam_state: the Adam
    state it starts from (training.adam_state = "carried": its chain's previous cell's), None: a fresh Adam."""

    driver: str
    lam: float
    seed: int
    scenario: TaskSequence
    adam_state: AdamState | None = None


Failure = Diverged | EstimatorFailed


class CellTraining:
    """What one cell of a stack trains and keeps: its own model, estimators, penalty and batch order."""

    def __init__(self, config: Config, cell: Cell):
        self.cell = cell
        torch.manual_seed(cell.seed)  # the initial weights: the same for every driver with this seed
        self.model = make_model(config.model).to(cell.scenario.device)
        self.params = list(self.model.parameters())
        self.names = [name for name, _ in self.model.named_parameters()]
        self.shuffle = torch.Generator().manual_seed(cell.seed)
        self.estimators = make_estimators(config, cell.seed, cell.driver)
        self.observers = [e for e in self.estimators.values() if e.observes_steps]
        self.control = Control(cell.driver, cell.seed) \
            if cell.driver not in self.estimators and cell.driver != "none" else None
        self.penalty = Penalty(cell.lam if cell.driver != "none" else 0.0)
        self.accumulated: Importances = {}
        self.failure: Failure | None = None  # once set, the cell's results are this; it trains on, unread

    def task_importances(self, task: int) -> Importances | None:
        """The task's importances (in eval mode), or None when a plugin estimator failed (self.failure)."""
        self.model.eval()
        try:
            return task_importances(self.estimators, self.control, self.model,
                                    *self.cell.scenario.split("importance", task))
        except EstimatorFailed as e:
            self.failure = e
            return None


class Stack(nn.Module):
    """The cells' models side by side: one batch of inputs per cell → one batch of logits per cell.

    batched: the layers of K equal MLPs as batched matrix products (baddbmm over the stacked weights) — what pays
    on a GPU, where one batch-100 step of a small MLP leaves the device idle. Otherwise each model runs its own
    batch: on a CPU that is, cell for cell, the arithmetic of a cell trained alone (a batched product can sum in
    another order than nn.Linear for some shapes), and a cell alone pays nothing for being a stack."""

    def __init__(self, models: list[nn.Module], batched: bool):
        super().__init__()
        self.cells = nn.ModuleList(models)
        self.batched = batched

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        if not self.batched:
            return [model(x) for model, x in zip(self.cells, xs)]
        x = torch.stack(xs)
        for i, layer in enumerate(self.cells[0]):
            if isinstance(layer, nn.Linear):
                weight = torch.stack([model[i].weight for model in self.cells])
                bias = torch.stack([model[i].bias for model in self.cells])
                x = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
            else:
                x = layer(x)  # leakyReLU, elementwise
        return list(x.unbind(0))


def batchable(models: list[nn.Module], cells: list[Cell]) -> bool:
    """Equal MLPs of Linear and leakyReLU layers only, on tasks without heads: what Stack can batch."""
    first = models[0]
    return isinstance(first, nn.Sequential) and all(
        isinstance(m, nn.Sequential) and len(m) == len(first) and all(
            type(a) is type(b) and isinstance(a, (nn.Linear, nn.LeakyReLU)) and
            (not isinstance(a, nn.Linear) or a.weight.shape == b.weight.shape) for a, b in zip(m, first))
        for m in models) and all(c.scenario.classes(t) is None for c in cells for t in range(c.scenario.tasks))


def run_cells(config: Config, cells: list[Cell], use_test_split: bool = True,
              batched: bool | None = None) -> Iterator[list[TaskResult | Failure]]:
    """Train the cells' tasks 0 .. T-1 in order, all cells stacked in one training step (one optimiser over all
    their parameters: Adam works per tensor, so each cell gets its own Adam); after each task, one result per cell,
    or the failure that ended that cell (a diverged cell's NaNs touch no other cell). Training and importances of
    task t see task t's head (scenario.classes), evaluation each task's head after task t (evaluate).

    use_test_split=False (tuning) never reads the test images: test_accuracy stays empty. batched: Stack's
    batched products; default: on a GPU, where the models allow them."""
    trainings = [CellTraining(config, cell) for cell in cells]
    models = [t.model for t in trainings]
    if batched is None:
        batched = cells[0].scenario.device.type == "cuda" and batchable(models, cells)
    stack = Stack(models, batched)
    optimizer = make_optimizer(config, stack)  # one optimiser across tasks, as in the author's code
    for t in trainings:
        if t.cell.adam_state is not None:
            start_adam_from(optimizer, t.names, t.params, t.cell.adam_state)
    carried = config.training.adam_state == "carried"
    last_task = cells[0].scenario.tasks - 1

    for task in range(cells[0].scenario.tasks):
        started = time.perf_counter()
        for t in trainings:
            for estimator in t.estimators.values():
                estimator.begin_task(t.model)
        with ExitStack() as heads:
            for t in trainings:
                heads.enter_context(task_head(t.model, t.cell.scenario.classes(task)))
            epochs = train_task(stack, trainings, optimizer, task, config)
            increments = [t.task_importances(task) if t.failure is None else None for t in trainings]
        results: list[TaskResult | Failure] = []
        for t, increment, (losses, penalties) in zip(trainings, increments, epochs):
            if t.failure is not None:
                results.append(t.failure)
                continue
            t.accumulated = accumulate(t.accumulated, increment, config)
            if t.cell.driver != "none":
                t.penalty.consolidate(t.params, [t.accumulated[t.cell.driver][n] for n in t.names])
            test = evaluate(t.model, t.cell.scenario, "test", task) if use_test_split else Scores([], [])
            results.append(TaskResult(
                task=task,
                test_accuracy=test.accuracy,
                validation_accuracy=evaluate(t.model, t.cell.scenario, "validation", task).accuracy,
                test_loss=test.loss,
                increments=increment,
                accumulated=t.accumulated,
                state_dict={k: v.detach().clone() for k, v in t.model.state_dict().items()},
                epoch_losses=losses,
                epoch_penalties=penalties,
                seconds=time.perf_counter() - started,
                adam_state=adam_state(optimizer, t.names, t.params) if carried and task == last_task else None,
            ))
            t.model.train()
        yield results
        if all(t.failure is not None for t in trainings):
            return


def run_sequence(config: Config, driver: str, lam: float, seed: int, scenario: TaskSequence,
                 use_test_split: bool = True) -> Iterator[TaskResult]:
    """One cell alone (the stack of one): its results task by task; a failure is raised."""
    for (result,) in run_cells(config, [Cell(driver, lam, seed, scenario)], use_test_split):
        if isinstance(result, Exception):
            raise result
        yield result


def train_task(stack: Stack, trainings: list[CellTraining], optimizer: torch.optim.Optimizer, task: int,
               config: Config) -> list[tuple[list[float], list[float]]]:
    """Train one task; per cell, the mean task loss and the penalty after each epoch. A cell whose loss stopped
    being finite gets its Diverged (the first such step) as its failure.

    The step losses stay on the device and reach the host once per epoch: on a GPU a read per step would wait
    for every step to finish before the next is queued."""
    batch = config.training.batch_size
    data = [t.cell.scenario.split("train", task) for t in trainings]
    images = len(data[0][0])
    starts = range(0, images, batch)
    sizes = [min(batch, images - start) for start in starts]
    buffers = [StepBuffers.allocate(t.params, t.observers, t.penalty) for t in trainings]
    epochs: list[tuple[list[float], list[float]]] = [([], []) for _ in trainings]
    device = data[0][0].device
    for epoch, pass_starts in enumerate(passes(starts, config)):
        orders = [torch.randperm(images, generator=t.shuffle).to(device) for t in trainings]
        step_losses: list[list[Tensor]] = [[] for _ in trainings]  # per cell, each step's loss, on the device
        for start in pass_starts:
            idx = [order[start:start + batch] for order in orders]
            losses = train_step(stack, trainings, optimizer, [x_k[i] for (x_k, _), i in zip(data, idx)],
                                [y_k[i] for (_, y_k), i in zip(data, idx)], buffers)
            for cell_losses, loss in zip(step_losses, losses):
                cell_losses.append(loss)
        for t, (epoch_losses, epoch_penalties), cell_losses in zip(trainings, epochs, step_losses):
            total = 0.0
            for step, (loss, size) in enumerate(zip(torch.stack(cell_losses).tolist(), sizes)):
                if not math.isfinite(loss) and t.failure is None:
                    t.failure = Diverged(task, epoch * len(sizes) + step, loss)
                total += loss * size
            epoch_losses.append(total / sum(sizes[:len(pass_starts)]))
            epoch_penalties.append(t.penalty.value(t.params))
        if all(t.failure is not None for t in trainings):
            break
    return epochs


def passes(starts: range, config: Config) -> list[range]:
    """The batches' first images of each pass over a task's shuffled images: `epochs` full passes, or with
    training.iterations > 0 as many passes as that many steps take, the last cut short."""
    iterations = config.training.iterations
    if not iterations:
        return [starts] * config.training.epochs
    return [starts[:iterations - k * len(starts)] for k in range(math.ceil(iterations / len(starts)))]


@dataclass
class StepBuffers:
    """What the step observers (SI, SOS) get besides p.grad, in buffers allocated once per task: a fresh megabyte
    per step costs a CPU more than the copy into it."""

    values: list[Tensor]  # the parameters, detached (views that follow every update)
    total_grads: list[Tensor]  # task + penalty gradient, while a penalty is active: it becomes p.grad, so that
    # the task gradient autograd produced stays as it is for SI, without a copy
    step_change: list[Tensor]  # θ after the step − θ before it
    task_grads: list[Tensor]  # this step's task gradients (autograd's p.grad before the penalty's share)

    @staticmethod
    def allocate(params: list[Tensor], step_observers: list[Estimator], penalty: Penalty) -> "StepBuffers":
        observed = bool(step_observers)
        return StepBuffers(
            values=[p.detach() for p in params],
            total_grads=[torch.empty_like(p) for p in params] if observed and penalty.active else [],
            step_change=[torch.empty_like(p) for p in params] if observed else [],
            task_grads=[],
        )


def train_step(stack: Stack, trainings: list[CellTraining], optimizer: torch.optim.Optimizer, xs: list[Tensor],
               ys: list[Tensor], buffers: list[StepBuffers]) -> list[Tensor]:
    """One optimiser step of every cell on its task loss + penalty, each on its own batch; returns the cells' task
    losses, detached. The cells' mean losses are summed for one backward pass: the sum's gradient with respect to a
    cell's weights is that cell's own loss's gradient."""
    optimizer.zero_grad()  # set to None: backward hands over fresh gradient buffers, as in a bare loop
    losses = [F.cross_entropy(logits, y) for logits, y in zip(stack(xs), ys)]
    (losses[0] if len(losses) == 1 else torch.stack(losses).sum()).backward()
    for t, b in zip(trainings, buffers):
        if not t.observers:
            t.penalty.add_gradient(t.params)
            continue
        b.task_grads = [p.grad for p in t.params]
        if b.total_grads:
            t.penalty.add_gradient(t.params, out=b.total_grads)
            for p, total in zip(t.params, b.total_grads):
                p.grad = total
        torch._foreach_copy_(b.step_change, b.values)
    optimizer.step()
    for t, b in zip(trainings, buffers):
        if not t.observers:
            continue
        for change, value in zip(b.step_change, b.values):
            torch.sub(value, change, out=change)
        total_grads = [p.grad for p in t.params]
        for observer in t.observers:
            observer.observe_step(b.task_grads, total_grads, b.step_change)
    return [loss.detach() for loss in losses]
