"""Controls for the paper's open question — MAS, FIS and SI correlate strongly, SIG barely does, yet all four stop
forgetting about equally well: does the per-weight structure of an importance matter, or only its per-tensor
scale? Each control is an importance with some structure taken away; as a driver it gets the same penalty.

uniform          Ω_task = 1 for every parameter: the penalty becomes an L2 pull towards θ*
shuffled-<est>   <est>'s Ω_task with each tensor's entries permuted by one fixed permutation per tensor, drawn
                 from the run's seed and used for every task: the same values and per-tensor scale, the
                 per-weight structure destroyed
layermean-<est>  each tensor of <est>'s Ω_task replaced by its mean: the per-tensor scale kept, all structure
                 inside a tensor gone

A control of <est> transforms <est>'s own importance of the task, which the experiment computes anyway. Both
transforms are linear and the same for every task, so accumulating the transformed increments over tasks (sum,
online or blend) equals transforming <est>'s accumulated importance; and both keep each tensor's sum, so the same λ is a
fair comparison with <est>'s.
"""

import torch
from torch import Tensor, nn

from estimators.names import base_estimator


class Control:
    """The importance of a control driver for one run: call it with the task's importances of every estimator."""

    def __init__(self, driver: str, seed: int):
        self.name, self.base = driver, base_estimator(driver)
        self.kind = "uniform" if driver == "uniform" else driver.partition("-")[0]
        self.seed = seed
        self.permutations: dict[str, Tensor] = {}  # drawn on the first task, used for every task

    @torch.no_grad()
    def importance(self, model: nn.Module, increments: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        if self.kind == "uniform":
            return {name: torch.ones_like(p) for name, p in model.named_parameters()}
        omega = increments[self.base]
        if self.kind == "layermean":
            return {name: torch.full_like(v, float(v.double().mean())) for name, v in omega.items()}
        if not self.permutations:
            generator = torch.Generator().manual_seed(self.seed)
            self.permutations = {name: torch.randperm(v.numel(), generator=generator).to(v.device)
                                 for name, v in omega.items()}
        return {name: v.flatten()[self.permutations[name]].view_as(v) for name, v in omega.items()}
