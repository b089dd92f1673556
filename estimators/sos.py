"""SOS, the running sum of squared gradients (Benzing 2022, AISTATS, "Unifying importance based regularisation
methods for continual learning"), here as a mean over the task's optimiser steps.

Ω_θ = (1/K) Σ_k g_k²,  g_k the minibatch gradient of the task loss (without the penalty) at step k of K.

Benzing finds SI ≈ √SOS: SI's path integral is dominated by a bias that comes from the noise of the minibatch
gradients, and that bias is what relates it to the squared gradients.
"""

import torch
from torch import Tensor, nn

from estimators.base import Estimator


class RunningSquaredGradients(Estimator):
    name = "sos"
    observes_steps = True

    def __init__(self):
        self.sums: list[Tensor] = []
        self.steps = 0

    def begin_task(self, model: nn.Module) -> None:
        # allocated once per task: observe_step runs after every optimiser step and must not allocate
        self.sums = [torch.zeros_like(p) for p in model.parameters()]
        self.steps = 0

    def observe_step(self, task_grads: list[Tensor], total_grads: list[Tensor], step_change: list[Tensor]) -> None:
        torch._foreach_addcmul_(self.sums, task_grads, task_grads)
        self.steps += 1

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        # no step taken: zero, the importance of a task that never moved θ
        sums = self.sums or [torch.zeros_like(p) for p in model.parameters()]
        steps = max(self.steps, 1)
        return {name: s / steps for (name, _), s in zip(model.named_parameters(), sums)}
