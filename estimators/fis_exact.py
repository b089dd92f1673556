"""True Fisher information (Martens 2020, "New insights and perspectives on the natural gradient method";
the quantity EWC is derived from, Kirkpatrick et al. 2017), computed exactly over the model's classes.

Ω_θ = mean_n Σ_y p(y|x_n) (∂ log p(y|x_n) / ∂θ)²,  p the model's softmax.

The labels come from the model, not the data: the true labels enter nowhere. Van de Ven (2025, "On the
computation of the Fisher information in continual learning") compares this exact expectation with the
cheaper variants (fis, fis_sampled, fis_batched).
"""

from torch import Tensor, nn

from estimators.base import Estimator
from estimators.per_sample import expected_per_sample_moment


class TrueFisher(Estimator):
    name = "fis_exact"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return expected_per_sample_moment(model, x, power=2, batch_size=self.batch_size)
