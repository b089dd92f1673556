"""Empirical Fisher with each sample weighted by the probability the model gives its true label: Mammoth's online EWC.

Ω_θ = mean_n p(y_n|x_n) (∂ log p(y_n|x_n) / ∂θ)²,  y_n the true label, p the model's softmax.

Library practice (aimagelab/mammoth, models/ewc_on.py, commit 20ff873): end_task runs every training example
alone, takes the gradient of its log-likelihood of the true label, and adds `exp_cond_prob * grads ** 2` with
`exp_cond_prob = exp(log p(y|x))`, detached; the sum is divided by (batches × batch size), about the number of
samples. That is the term y = y_n of the true Fisher's sum over labels (fis_exact), kept whichever label the model
prefers. The weight is not differentiated: it scales the squared gradient, it is not part of the log-likelihood.

Since p ≤ 1 it is at most `fis` entrywise; the samples the model gets wrong, whose gradients are the largest,
count least.
"""

from torch import Tensor, nn

from estimators.base import Estimator
from estimators.fis import log_likelihood
from estimators.per_sample import gradient_moments


class ProbabilityWeightedFisher(Estimator):
    name = "fis_pweighted"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        def terms(out: Tensor, chunk: slice) -> list[tuple[Tensor, Tensor | None]]:
            log_p = log_likelihood(out, y[chunk])
            return [(log_p.sum(), log_p.detach().exp())]

        return gradient_moments(model, x, terms, power=2, batch_size=self.batch_size)
