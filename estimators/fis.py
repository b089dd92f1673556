"""Empirical Fisher (EWC, Kirkpatrick et al. 2017, in the variant the paper's author uses).

Ω_θ = mean_n (∂ log p(y_n | x_n) / ∂θ)²  with y_n the true label, one sample at a time — not the square of a
minibatch gradient, which is a different (and much smaller) quantity.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator
from estimators.per_sample import per_sample_gradient_moment


def log_likelihood(logits: Tensor, y: Tensor) -> Tensor:
    return F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)


class EmpiricalFisher(Estimator):
    name = "fis"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return per_sample_gradient_moment(model, x, y, log_likelihood, power=2, batch_size=self.batch_size)
