"""Slow, obviously-correct references: one sample at a time through autograd, or plain Python loops."""

import torch
import torch.nn.functional as F
from torch import nn


def per_sample_loop(model: nn.Module, x, y, scalar, transform) -> dict[str, torch.Tensor]:
    """mean_n transform(∂ scalar(model(x_n), y_n) / ∂θ), one autograd call per sample (batch size 1)."""
    params = dict(model.named_parameters())
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    for n in range(len(x)):
        s = scalar(model(x[n:n + 1]), y[n:n + 1]).sum()
        grads = torch.autograd.grad(s, list(params.values()))
        for k, g in zip(params, grads):
            sums[k] += transform(g)
    return {k: v / len(x) for k, v in sums.items()}


def fisher_loop(model, x, y):
    return per_sample_loop(model, x, y, lambda out, t: F.log_softmax(out, 1)[0, t[0]], torch.square)


def mas_loop(model, x, y):
    return per_sample_loop(model, x, y, lambda out, t: F.softmax(out, 1).square().sum(), torch.abs)


def signal_loop(model: nn.Sequential, x) -> dict[str, torch.Tensor]:
    """SIG from its definition, sample by sample and weight by weight through the layers of a Sequential."""
    linear = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    result = {}
    with torch.no_grad():
        in_sum = {name: torch.zeros(m.in_features, dtype=x.dtype) for name, m in linear}
        act_sum = {name: torch.zeros(m.out_features, dtype=x.dtype) for name, m in linear}
        for n in range(len(x)):
            h = x[n]
            children = list(model.named_children())
            for i, (name, m) in enumerate(children):
                if isinstance(m, nn.Linear):
                    in_sum[name] += h.abs()
                    h = m(h)
                    is_last = all(not isinstance(c, nn.Linear) for _, c in children[i + 1:])
                    if is_last:
                        act_sum[name] += F.softmax(h, 0).abs()
                else:
                    h = m(h)
                    prev = [nm for nm, c in children[:i] if isinstance(c, nn.Linear)][-1]
                    act_sum[prev] += h.abs()
        for name, m in linear:
            w = torch.empty_like(m.weight)
            for i in range(m.out_features):
                for j in range(m.in_features):
                    w[i, j] = m.weight[i, j].abs() * in_sum[name][j] / len(x)
            result[f"{name}.weight"] = w
            result[f"{name}.bias"] = act_sum[name] / len(x)
    return result


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    """The plain way: the model on the (already permuted) images."""
    return float((model(x).argmax(1) == y).double().mean())


def expected_gradient_loop(model: nn.Module, x, transform) -> dict[str, torch.Tensor]:
    """mean_n Σ_y p(y|x_n) transform(∂ log p(y|x_n) / ∂θ): one autograd call per sample and class."""
    params = dict(model.named_parameters())
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    for n in range(len(x)):
        log_p = F.log_softmax(model(x[n:n + 1]), 1)[0]
        for c in range(len(log_p)):
            grads = torch.autograd.grad(log_p[c], list(params.values()), retain_graph=True)
            weight = float(log_p[c].detach().exp())
            for k, g in zip(params, grads):
                sums[k] += weight * transform(g)
    return {k: v / len(x) for k, v in sums.items()}


def true_fisher_loop(model, x):
    return expected_gradient_loop(model, x, torch.square)


def absolute_fisher_loop(model, x):
    return expected_gradient_loop(model, x, torch.abs)


def batched_fisher_loop(model: nn.Module, x, y, batch_size: int) -> dict[str, torch.Tensor]:
    """mean over consecutive minibatches of (mean of the minibatch's per-sample gradients of −log p(y|x))²,
    the minibatch gradient built sample by sample."""
    params = dict(model.named_parameters())
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    batches = 0
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        mean_grad = {k: torch.zeros_like(p) for k, p in params.items()}
        for n in range(start, stop):
            nll = -F.log_softmax(model(x[n:n + 1]), 1)[0, y[n]]
            for k, g in zip(params, torch.autograd.grad(nll, list(params.values()))):
                mean_grad[k] += g / (stop - start)
        for k in params:
            sums[k] += mean_grad[k].square()
        batches += 1
    return {k: v / batches for k, v in sums.items()}
