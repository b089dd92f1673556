"""Memory Aware Synapses (Aljundi et al. 2018), as the paper defines it and the paper's author computes it.

Ω_θ = mean_n |∂ ‖softmax(f(x_n))‖²₂ / ∂θ|  — the absolute value is taken per sample, before averaging.
(MAS's official code takes the absolute value of a batch-summed gradient of the logits' norm instead; that is
not what is computed here.)
"""

import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator
from estimators.per_sample import per_sample_gradient_moment


def squared_output_norm(logits: Tensor, _y: Tensor) -> Tensor:
    return F.softmax(logits, dim=1).square().sum(1)


class MemoryAwareSynapses(Estimator):
    name = "mas"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return per_sample_gradient_moment(model, x, y, squared_output_norm, power=1, batch_size=self.batch_size)
