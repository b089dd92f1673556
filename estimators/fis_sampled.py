"""True Fisher estimated with one label per sample drawn from the model (van de Ven 2025, "On the computation
of the Fisher information in continual learning": the "sampled" variant).

y_n ~ Categorical(p(·|x_n)),  Ω_θ = mean_n (∂ log p(y_n|x_n) / ∂θ)²,  p the model's softmax.

An unbiased estimate of the true Fisher (fis_exact) with one backward pass instead of one per class.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator
from estimators.fis import log_likelihood
from estimators.per_sample import per_sample_gradient_moment


class SampledFisher(Estimator):
    name = "fis_sampled"

    def __init__(self, seed: int = 0, batch_size: int = 1000):
        self.seed = seed
        self.batch_size = batch_size
        self.tasks_begun = 0

    def begin_task(self, model: nn.Module) -> None:
        self.tasks_begun += 1

    def generator(self) -> torch.Generator:
        """A fresh generator per call: rerunning a task draws the same labels, the next task draws others.
        SeedSequence mixes (seed, task) so that nearby pairs do not give overlapping streams."""
        state = np.random.SeedSequence([self.seed, self.tasks_begun]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    @torch.no_grad()
    def sample_labels(self, model: nn.Module, x: Tensor) -> Tensor:
        """One label per sample from the model's softmax; drawn on the CPU so that the draw does not depend on
        the device."""
        probs = torch.cat([F.softmax(model(x[start:start + self.batch_size]), dim=1)
                           for start in range(0, len(x), self.batch_size)])
        return torch.multinomial(probs.cpu(), 1, generator=self.generator()).squeeze(1).to(x.device)

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        drawn = self.sample_labels(model, x)
        return per_sample_gradient_moment(model, x, drawn, log_likelihood, power=2, batch_size=self.batch_size)
