"""Fisher with the model's top prediction as the label: FACIL's default ("max_pred").

Ω_θ = mean_n (∂ log p(ŷ_n | x_n) / ∂θ)²,  ŷ_n = argmax_y p(y | x_n), p the model's softmax; the true labels enter
nowhere.

Library practice (mmasana/FACIL, src/approach/ewc.py, commit e0563c7): `fi_sampling_type` defaults to 'max_pred',
and compute_fisher_matrix_diag then takes `preds = outputs.argmax(1)` as the labels of the cross-entropy whose
gradient it squares. FACIL squares the gradient of a minibatch's mean loss, with BatchNorm in train mode; this
estimator changes only the label and keeps the per-sample square, so that its distance to `fis` (true labels) and
to `fis_exact` (the expectation over labels drawn from p, which ŷ replaces by the single most likely one) is the
label's doing alone. Where the model is right on every sample, ŷ = y and this is `fis`; where it is certain,
p(ŷ|x) → 1 and this vanishes, as the true Fisher does.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator
from estimators.per_sample import per_sample_gradient_moment


def log_likelihood_of_prediction(logits: Tensor, _y: Tensor) -> Tensor:
    """log p(ŷ|x) per sample, ŷ the arg-max of the logits: an index, so no gradient flows through the choice."""
    return F.log_softmax(logits, dim=1).gather(1, logits.argmax(1, keepdim=True)).squeeze(1)


class MaxPredictionFisher(Estimator):
    name = "fis_maxpred"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return per_sample_gradient_moment(model, x, y, log_likelihood_of_prediction, power=2,
                                          batch_size=self.batch_size)
