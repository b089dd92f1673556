"""Per-sample gradients of a chain of Linear layers, summed over samples without a loop over samples.

For a Linear layer z = x Wᵀ + b and a scalar s_n that depends on sample n only, the gradient of s_n with
respect to W is the outer product δ_n x_nᵀ, with δ_n = ∂s_n/∂z_n, and with respect to b it is δ_n. Samples do
not interact in an MLP, so one backward pass of Σ_n s_n gives every δ_n at once (row n of ∂(Σ s)/∂z). Any
elementwise power of the per-sample gradient, summed over samples, is then a single matrix product:

    Σ_n |δ_ni · x_nj|^p = Σ_n |δ_ni|^p · |x_nj|^p = (|δ|^pᵀ |x|^p)_ij

This is the identity BackPACK uses for its per-sample second moments; here p = 2 gives the empirical Fisher
and p = 1 gives MAS.

An expectation over the model's own labels keeps the structure: with δ_{n,y} the gradient for class y,
Σ_y p_{n,y} |δ_{n,y,i} x_nj|^p = (Σ_y p_{n,y} |δ_{n,y,i}|^p) · |x_nj|^p, so one backward pass per class and
still one matrix product per layer (expected_per_sample_moment).
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's Linear layers in forward order; every trainable parameter must belong to one of them."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    covered = {id(p) for _, m in layers for p in m.parameters()}
    stray = [name for name, p in model.named_parameters() if id(p) not in covered]
    if stray:
        raise ValueError(f"per-sample rules exist for Linear layers only; parameters outside them: {stray}")
    return layers


def forward_capturing(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run the model, returning (output, inputs of each Linear layer, outputs of each Linear layer)."""
    inputs: list[Tensor] = []
    outputs: list[Tensor] = []

    def record(_module, args, out):
        inputs.append(args[0])
        outputs.append(out)

    handles = [m.register_forward_hook(record) for _, m in linear_layers(model)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, inputs, outputs


def magnitude(t: Tensor, power: int) -> Tensor:
    """|t|^power, in one elementwise pass for the powers the estimators use."""
    if power == 2:
        return t.square()
    if power == 1:
        return t.abs()
    return t.abs().pow(power)


def per_sample_gradient_moment(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    per_sample_scalar: Callable[[Tensor, Tensor], Tensor],
    power: int,
    batch_size: int = 1000,
) -> dict[str, Tensor]:
    """mean_n |∂ s_n / ∂θ|^power for every parameter θ, exact per sample.

    per_sample_scalar maps (model output [N, C], labels [N]) to the per-sample scalars s [N]; it must treat
    samples independently (no batch statistics), which holds for the MLPs of this benchmark.
    """
    layers = linear_layers(model)
    sums = {f"{name}.{kind}": torch.zeros_like(getattr(layer, kind))
            for name, layer in layers for kind in ("weight", "bias") if getattr(layer, kind) is not None}
    for start in range(0, len(x), batch_size):
        out, inputs, outputs = forward_capturing(model, x[start:start + batch_size])
        scalars = per_sample_scalar(out, y[start:start + batch_size])
        deltas = torch.autograd.grad(scalars.sum(), outputs)
        for (name, layer), a, d in zip(layers, inputs, deltas):
            a_p, d_p = magnitude(a.detach(), power), magnitude(d, power)
            sums[f"{name}.weight"] += d_p.T @ a_p
            if layer.bias is not None:
                sums[f"{name}.bias"] += d_p.sum(0)
    return {k: v / len(x) for k, v in sums.items()}


def expected_per_sample_moment(model: nn.Module, x: Tensor, power: int, batch_size: int = 1000) -> dict[str, Tensor]:
    """mean_n Σ_y p(y|x_n) |∂ log p(y|x_n) / ∂θ|^power for every parameter θ, p the model's softmax.

    p weights the classes and is not differentiated: it is the distribution the labels are drawn from, not
    part of the log-likelihood whose gradient is taken.
    """
    layers = linear_layers(model)
    sums = {f"{name}.{kind}": torch.zeros_like(getattr(layer, kind))
            for name, layer in layers for kind in ("weight", "bias") if getattr(layer, kind) is not None}
    for start in range(0, len(x), batch_size):
        out, inputs, outputs = forward_capturing(model, x[start:start + batch_size])
        log_p = F.log_softmax(out, dim=1)
        p = log_p.detach().exp()
        classes = p.shape[1]
        # w[n, i] = Σ_y p_{n,y} |δ_{n,y,i}|^power, built class by class so that only one set of δ is alive
        weights = [torch.zeros_like(z) for z in outputs]
        for c in range(classes):
            deltas = torch.autograd.grad(log_p[:, c].sum(), outputs, retain_graph=c < classes - 1)
            for w, d in zip(weights, deltas):
                w.addcmul_(p[:, c:c + 1], magnitude(d, power))
        for (name, layer), a, w in zip(layers, inputs, weights):
            sums[f"{name}.weight"] += w.T @ magnitude(a.detach(), power)
            if layer.bias is not None:
                sums[f"{name}.bias"] += w.sum(0)
    return {k: v / len(x) for k, v in sums.items()}
