"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017): the path integral of the loss along training.

During a task, after every optimiser step with gradient g and actual parameter change Δθ_step:
    ω −= g · Δθ_step
At the end of the task, with Δ the total change of θ over the task:
    Ω_task = ω / (Δ² + ξ)

g is the gradient of the task loss without the penalty (Zenke's definition; gradient="total" uses the
gradient of the penalised loss instead). Δθ_step is the change the optimiser actually made (Adam's, not
−lr·g): θ after the step minus a copy of θ taken before it. Zenke et al. clip Ω at 0 for permuted MNIST; here that
is the clip_at_zero option, off by default so the raw path integral is what gets correlated.

clamp_max bounds Ω from above, as Avalanche does (ContinualAI/avalanche, avalanche/training/plugins/
synaptic_intelligence.py, commit cc2205f): after each experience, update_ewc_data adds this task's
−Σ_steps g·Δθ_step / (Δ² + eps) to a running sum over tasks and sets the importance to min(sum, clip_to), with
clip_to = 0.001 (passed by after_training_exp) and no bound from below. Avalanche bounds the sum over tasks (kept
unbounded, bounded afresh after every task); here the bound applies to each task's own Ω, the estimator's
importance (accumulating it is the experiment's): the same after the first task, in general not after later ones
(min(Σ_t Ω_t, c) against Σ_t min(Ω_t, c)). Avalanche's other choices are options here: its g is p.grad after
backward() of the loss with the SI penalty added (gradient="total"), its damping eps = 1e-7 (xi); it leaves
BatchNorm parameters out of SI altogether, which this estimator does not. None: no bound (the default).
"""

import torch
from torch import Tensor, nn

from estimators.base import Estimator


class SynapticIntelligence(Estimator):
    name = "si"
    observes_steps = True

    def __init__(self, xi: float = 0.1, gradient: str = "task", clip_at_zero: bool = False,
                 clamp_max: float | None = None):
        if gradient not in ("task", "total"):
            raise ValueError(f"SI gradient must be 'task' or 'total', not {gradient!r}")
        self.xi = xi
        self.gradient = gradient
        self.clip_at_zero = clip_at_zero
        self.clamp_max = clamp_max or None  # 0, as a protocol writes it: no bound
        self.start: dict[str, Tensor] = {}
        self.omega: list[Tensor] = []

    def begin_task(self, model: nn.Module) -> None:
        # .clone(): a detached view of the live parameter would follow every update and make Δ zero.
        self.start = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.omega = [torch.zeros_like(p) for p in self.start.values()]

    def observe_step(self, task_grads: list[Tensor], total_grads: list[Tensor], step_change: list[Tensor]) -> None:
        grads = task_grads if self.gradient == "task" else total_grads
        torch._foreach_addcmul_(self.omega, grads, step_change, value=-1.0)

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        result = {}
        for (name, p), omega in zip(model.named_parameters(), self.omega):
            total_change = p.detach() - self.start[name]
            value = omega / (total_change.square() + self.xi)
            if self.clip_at_zero:
                value = value.clamp(min=0)
            if self.clamp_max is not None:
                value = value.clamp(max=self.clamp_max)
            result[name] = value
        return result
