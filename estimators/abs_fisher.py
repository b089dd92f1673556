"""Absolute Fisher (Benzing 2022, AISTATS, "Unifying importance based regularisation methods for continual
learning"): the true Fisher with the absolute value of the gradient in place of its square.

Ω_θ = mean_n Σ_y p(y|x_n) |∂ log p(y|x_n) / ∂θ|,  p the model's softmax.

Benzing shows MAS is close to this quantity. By Jensen, Ω_AF ≤ √Ω_fis_exact elementwise.
"""

from torch import Tensor, nn

from estimators.base import Estimator
from estimators.per_sample import expected_per_sample_moment


class AbsoluteFisher(Estimator):
    name = "abs_fisher"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return expected_per_sample_moment(model, x, power=1, batch_size=self.batch_size)
