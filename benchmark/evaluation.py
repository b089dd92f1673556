"""What a model scores on every task of its sequence after each task: accuracy and mean cross-entropy, each task
through its evaluation head (task_head masks the logits outside it)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.scenario import PermutedMNIST, Split, TaskSequence, evaluation_head


@dataclass
class Scores:
    """Accuracy and mean cross-entropy loss on every task j of the sequence, in task order (empty: no such split)."""
    accuracy: list[float]
    loss: list[float]


@torch.no_grad()
def task_scores(model: nn.Sequential, split: Split, permutations: Tensor, chunk: int = 500) -> Scores:
    """The model's accuracy and mean cross-entropy loss on every task j of the sequence, task j's images being
    split.x[:, permutations[j]]; none for an empty split (a protocol without a validation split).

    Rather than gather ten permuted copies of the images, the first layer's weight columns are permuted —
    x[:, p] Wᵀ = x W[:, argsort(p)]ᵀ — and the first layers of all tasks run as one matrix product. Same model,
    same images; only the order of the float additions inside the first layer differs.
    """
    if not len(split.x):
        return Scores([], [])
    first, rest = model[0], model[1:]
    tasks, hidden = len(permutations), first.out_features
    inverse = permutations.argsort(dim=1).to(first.weight.device)
    weight = first.weight[:, inverse].transpose(0, 1).reshape(tasks * hidden, first.in_features)
    bias = first.bias.repeat(tasks)
    correct = torch.zeros(tasks, dtype=torch.int64, device=first.weight.device)
    loss = torch.zeros(tasks, dtype=torch.float64, device=first.weight.device)
    for start in range(0, len(split.x), chunk):
        x, y = split.x[start:start + chunk], split.y[start:start + chunk]
        h = torch.addmm(bias, x, weight.T).view(len(x), tasks, hidden).transpose(0, 1)
        logits = rest(h.reshape(tasks * len(x), hidden)).view(tasks, len(x), -1)
        correct += (logits.argmax(2) == y).sum(1)
        loss += F.cross_entropy(logits.transpose(1, 2), y.expand(tasks, -1), reduction="none").double().sum(1)
    return Scores((correct.double() / len(split.x)).tolist(), (loss / len(split.x)).tolist())


def evaluate(model: nn.Module, scenario: TaskSequence, split: str, trained: int) -> Scores:
    """The model's accuracy and mean cross-entropy loss on every task of the sequence on one split after training
    task `trained`, each task through its evaluation head (scenario.evaluation_head); none for an empty split. The
    paper's MLP on permuted tasks takes task_scores' shortcut."""
    if isinstance(scenario, PermutedMNIST) and isinstance(model, nn.Sequential) and isinstance(model[0], nn.Linear):
        return task_scores(model, getattr(scenario, split), torch.from_numpy(scenario.permutations))
    scores = Scores([], [])
    for task in range(scenario.tasks):
        x, y = scenario.split(split, task)
        if not len(x):
            return Scores([], [])
        with task_head(model, evaluation_head(scenario, task, trained)):
            accuracy, loss = score(model, x, y)
        scores.accuracy.append(accuracy)
        scores.loss.append(loss)
    return scores


@torch.no_grad()
def score(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 500) -> tuple[float, float]:
    """Accuracy and mean cross-entropy loss of the model on (x, y)."""
    correct, loss = 0, 0.0
    for start in range(0, len(x), chunk):
        logits, labels = model(x[start:start + chunk]), y[start:start + chunk]
        correct += int((logits.argmax(1) == labels).sum())
        loss += float(F.cross_entropy(logits, labels, reduction="sum").double())
    return correct / len(x), loss / len(x)


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
