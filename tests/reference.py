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


def signal_loop(model: nn.Sequential, x, classes=None) -> dict[str, torch.Tensor]:
    """SIG from its definition, sample by sample and weight by weight through the layers of a Sequential; with
    classes (a head), the softmax runs over those output units, and the others pass nothing on: their weights and
    biases get 0."""
    linear = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    head = range(linear[-1][1].out_features) if classes is None else [int(c) for c in classes]
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
                        for c, p in zip(head, F.softmax(h[list(head)], 0)):
                            act_sum[name][c] += p
                else:
                    h = m(h)
                    prev = [nm for nm, c in children[:i] if isinstance(c, nn.Linear)][-1]
                    act_sum[prev] += h.abs()
        for name, m in linear:
            w = torch.empty_like(m.weight)
            for i in range(m.out_features):
                passes_on = name != linear[-1][0] or i in head
                for j in range(m.in_features):
                    w[i, j] = m.weight[i, j].abs() * in_sum[name][j] / len(x) if passes_on else 0.0
            result[f"{name}.weight"] = w
            result[f"{name}.bias"] = act_sum[name] / len(x)
    return result


class HeadLogits:
    """A model seen through a head: its logits of `classes` only, in that order, so that a reference's softmax
    runs over the head as written out rather than through evaluation.task_head's −∞ mask; its parameters are the
    model's, by the same names. Labels go with it as positions in classes (head_labels)."""

    def __init__(self, model: nn.Module, classes):
        self.model, self.classes = model, torch.as_tensor(classes)

    def __call__(self, x):
        return self.model(x)[:, self.classes]

    def named_parameters(self):
        return self.model.named_parameters()


def head_labels(y, classes):
    """Each label's position in classes (every label must be one of them)."""
    matches = torch.as_tensor(y)[:, None] == torch.as_tensor(classes)[None]
    assert bool(matches.any(1).all()), "a label outside the head"
    return matches.int().argmax(1)


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    """The plain way: the model on the (already permuted) images."""
    return float((model(x).argmax(1) == y).double().mean())


@torch.no_grad()
def mean_loss(model: nn.Module, x, y) -> float:
    """Mean cross-entropy, one image at a time, in float64."""
    return sum(-float(F.log_softmax(model(x[n:n + 1]).double(), 1)[0, y[n]]) for n in range(len(x))) / len(x)


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


def conv_net_signal_loop(model: nn.Sequential, x) -> dict[str, torch.Tensor]:
    """SIG of a Sequential of Unflatten, Conv2d, BatchNorm2d, activations, MaxPool2d, Flatten and Linear layers
    from its definition (estimators/sig.py), one sample at a time, a conv weight's inputs read position by
    position from the padded input rather than through unfold."""
    children = list(model.named_children())
    activations = (nn.LeakyReLU, nn.ReLU)
    has_params = [name for name, m in children if list(m.parameters())]
    inputs = {name: 0.0 for name in has_params}
    signals = {name: 0.0 for name in has_params}
    counts = {name: [0, 0] for name in has_params}
    with torch.no_grad():
        for n in range(len(x)):
            h = x[n:n + 1]
            outputs = []
            for name, m in children:
                outputs.append((name, m, h, m(h)))
                h = outputs[-1][3]
            for i, (name, m, a_in, a_out) in enumerate(outputs):
                if name not in has_params:
                    continue
                follower = outputs[i + 1][1] if i + 1 < len(outputs) else None
                signal = outputs[i + 1][3] if isinstance(follower, activations) else a_out
                if name == has_params[-1]:
                    signal = F.softmax(a_out, 1)
                if isinstance(m, nn.Conv2d):
                    c_in, kh, kw = m.weight.shape[1:]
                    padded = F.pad(a_in, (m.padding[1], m.padding[1], m.padding[0], m.padding[0]))
                    total = torch.zeros(c_in, kh, kw, dtype=x.dtype)
                    positions = 0
                    for r in range(a_out.shape[2]):
                        for c in range(a_out.shape[3]):
                            total += padded[0, :, r:r + kh, c:c + kw].abs()
                            positions += 1
                    inputs[name] = inputs[name] + total
                    counts[name][0] += positions
                    signals[name] = signals[name] + signal[0].abs().flatten(1).sum(1)
                    counts[name][1] += signal[0, 0].numel()
                elif isinstance(m, nn.BatchNorm2d):
                    normalised = (a_in[0] - m.running_mean[:, None, None]) / \
                        (m.running_var[:, None, None] + m.eps).sqrt()
                    inputs[name] = inputs[name] + normalised.abs().flatten(1).sum(1)
                    counts[name][0] += normalised[0].numel()
                    signals[name] = signals[name] + signal[0].abs().flatten(1).sum(1)
                    counts[name][1] += signal[0, 0].numel()
                else:
                    inputs[name] = inputs[name] + a_in[0].abs()
                    counts[name][0] += 1
                    signals[name] = signals[name] + signal[0].abs()
                    counts[name][1] += 1
    result = {}
    for name, m in children:
        if name not in has_params:
            continue
        mean_input = inputs[name] / counts[name][0]
        result[f"{name}.weight"] = m.weight.detach().abs() * (mean_input[None] if isinstance(m, nn.Conv2d)
                                                              else mean_input)
        result[f"{name}.bias"] = signals[name] / counts[name][1]
    return result


def max_prediction_fisher_loop(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    """mean_n (∂ log p(ŷ_n|x_n) / ∂θ)², ŷ_n the class of the sample's largest logit, found in its own forward pass."""
    return per_sample_loop(model, x, y, lambda out, _t: F.log_softmax(out, 1)[0, int(out[0].argmax())], torch.square)


def probability_weighted_fisher_loop(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    """mean_n p(y_n|x_n) (∂ log p(y_n|x_n) / ∂θ)², one autograd call per sample, the weight a plain number."""
    params = dict(model.named_parameters())
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    for n in range(len(x)):
        log_p = F.log_softmax(model(x[n:n + 1]), 1)[0, y[n]]
        weight = float(log_p.detach().exp())
        for k, g in zip(params, torch.autograd.grad(log_p, list(params.values()))):
            sums[k] += weight * g.square()
    return {k: v / len(x) for k, v in sums.items()}


def batch_statistics_forward(model: nn.Sequential, x) -> torch.Tensor:
    """The Sequential's output with every BatchNorm2d written out as normalisation by the batch's own statistics:
    (h − mean) / √(biased variance + ε) over samples and positions, then γ·ĥ + β; the other layers as they are."""
    h = x
    for m in model:
        if isinstance(m, nn.BatchNorm2d):
            mean = h.mean((0, 2, 3), keepdim=True)
            variance = (h - mean).square().mean((0, 2, 3), keepdim=True)
            h = (h - mean) / (variance + m.eps).sqrt() * m.weight[:, None, None] + m.bias[:, None, None]
        else:
            h = m(h)
    return h


def batch_statistics_batched_fisher_loop(model: nn.Sequential, x, y, batch_size: int) -> dict[str, torch.Tensor]:
    """mean over consecutive minibatches of (mean of the minibatch's gradients of −log p(y_n|x_n))², the network
    normalising by each minibatch's statistics (batch_statistics_forward): one autograd call per sample of the
    minibatch's forward pass, since with batch statistics a sample's loss depends on the others' inputs."""
    params = dict(model.named_parameters())
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    batches = 0
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        log_p = F.log_softmax(batch_statistics_forward(model, x[start:stop]), 1)
        mean_grad = {k: torch.zeros_like(p) for k, p in params.items()}
        for i, n in enumerate(range(start, stop)):
            grads = torch.autograd.grad(-log_p[i, y[n]], list(params.values()), retain_graph=True)
            for k, g in zip(params, grads):
                mean_grad[k] += g / (stop - start)
        for k in params:
            sums[k] += mean_grad[k].square()
        batches += 1
    return {k: v / batches for k, v in sums.items()}
