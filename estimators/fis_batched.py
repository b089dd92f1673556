"""The squared minibatch gradient, the "Fisher" many continual-learning libraries ship (van de Ven 2025, "On
the computation of the Fisher information in continual learning", discusses it among the variants).

The samples are split into consecutive minibatches b of size batch_size (the last may be smaller);
g_b = ∇_θ mean_{n∈b} −log p(y_n|x_n) with the true labels, and Ω_θ = mean_b g_b² (unweighted over minibatches).

This is NOT the per-sample (empirical) Fisher: the square is taken after averaging over the minibatch, so the
per-sample gradients partly cancel. With uncorrelated per-sample gradients it is roughly the empirical Fisher
divided by batch_size (plus the squared mean gradient), i.e. much smaller; with batch_size=1 it is the
empirical Fisher (fis).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator


class BatchedFisher(Estimator):
    name = "fis_batched"

    def __init__(self, batch_size: int = 100):
        self.batch_size = batch_size

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        names, params = zip(*model.named_parameters())
        sums = [torch.zeros_like(p) for p in params]
        batches = 0
        for start in range(0, len(x), self.batch_size):
            loss = F.cross_entropy(model(x[start:start + self.batch_size]), y[start:start + self.batch_size])
            grads = torch.autograd.grad(loss, params)
            torch._foreach_addcmul_(sums, grads, grads)
            batches += 1
        return {name: s / batches for name, s in zip(names, sums)}
