"""The quadratic penalty an importance drives: λ Σ Ω (θ − θ*)², consolidated after every task."""

import torch
from torch import Tensor


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
        if not self.active:
            return 0.0
        return self.lam * sum(float((o * (p.detach() - a).square()).sum())
                              for p, o, a in zip(params, self.omega, self.anchor))
