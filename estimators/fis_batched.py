"""The squared minibatch gradient, the "Fisher" many continual-learning libraries ship (van de Ven 2025, "On
the computation of the Fisher information in continual learning", discusses it among the variants).

The samples are split into consecutive minibatches b of size batch_size (the last may be smaller);
g_b = ∇_θ mean_{n∈b} −log p(y_n|x_n) with the true labels, and Ω_θ = mean_b g_b² (unweighted over minibatches).

This is NOT the per-sample (empirical) Fisher: the square is taken after averaging over the minibatch, so the
per-sample gradients partly cancel. With uncorrelated per-sample gradients it is roughly the empirical Fisher
divided by batch_size (plus the squared mean gradient), i.e. much smaller; with batch_size=1 it is the
empirical Fisher (fis).

Libraries that ship it (their public code, at the commits read):
- Avalanche (ContinualAI/avalanche, avalanche/training/plugins/ewc.py, EWCPlugin.compute_importances, 8a75da6):
  exactly this — model.eval(), the training criterion on minibatches of train_mb_size with the true labels,
  p.grad² summed and divided by the number of minibatches.
- PyCIL (G-U-N/PyCIL, models/ewc.py, EWC.getFisherDiagonal, 27a5ed8): the same over its shuffled training
  loader (batches of 128) with the network in train mode, then clamped at fishermax = 1e-4 (not done here).
- FACIL (mmasana/FACIL, src/approach/ewc.py, compute_fisher_matrix_diag, e0563c7): model.train(), each
  minibatch's g_b² weighted by its size and the sum divided by batches × batch size; its default labels are the
  model's arg-max (see fis_maxpred), the true labels an option.

batchnorm = "train" computes it as PyCIL and FACIL do, with every BatchNorm layer normalising by the statistics of
the minibatch b (and the gradient flowing through them) instead of its running statistics. Only BatchNorm layers
change mode (the libraries switch the whole model; the benchmark's models have no other layer, such as dropout,
that the mode changes). A forward pass in train mode also updates the running statistics, a change to the model
rather than to its importance: they are put back afterwards, so that the option changes Ω and nothing else.
Default "eval", as every other estimator. The per-sample estimators keep refusing BatchNorm in train mode: with
batch statistics a sample's gradient depends on the other samples of its batch (estimators/per_sample.py).
"""

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator
from estimators.names import BATCHNORM_MODES


@contextmanager
def batchnorm_with_batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside, the model's BatchNorm layers are in train mode; on leaving, their modes and running statistics are
    what they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in norms]
    try:
        for m in norms:
            m.train()
        yield
    finally:
        with torch.no_grad():
            for m, (training, buffers) in zip(norms, saved):
                m.train(training)
                for k, b in m.named_buffers(recurse=False):
                    b.copy_(buffers[k])


class BatchedFisher(Estimator):
    name = "fis_batched"

    def __init__(self, batch_size: int = 100, batchnorm: str = "eval"):
        if batchnorm not in BATCHNORM_MODES:
            raise ValueError(f"fis_batched batchnorm must be 'eval' or 'train', not {batchnorm!r}")
        self.batch_size = batch_size
        self.batchnorm = batchnorm

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        names, params = zip(*model.named_parameters())
        sums = [torch.zeros_like(p) for p in params]
        batches = 0
        with batchnorm_with_batch_statistics(model) if self.batchnorm == "train" else nullcontext():
            for start in range(0, len(x), self.batch_size):
                loss = F.cross_entropy(model(x[start:start + self.batch_size]), y[start:start + self.batch_size])
                grads = torch.autograd.grad(loss, params)
                torch._foreach_addcmul_(sums, grads, grads)
                batches += 1
        return {name: s / batches for name, s in zip(names, sums)}
