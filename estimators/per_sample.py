"""Per-sample gradients, summed over samples without a loop over samples: exact for any model whose samples do
not interact (eval mode).

One backward pass of Σ_n s_n gives, at the output z of every layer, δ_n = ∂s_n/∂z_n for every sample at once
(row n), because s_n depends on sample n only. The per-sample gradient of a layer's own parameters follows from
δ_n and the layer's input x_n; any elementwise power of it, summed over samples, then takes one rule per layer:

Linear (2-D input)  ∂s_n/∂W = δ_n x_nᵀ, so Σ_n |δ_ni x_nj|^p = (|δ|^pᵀ |x|^p)_ij: one matrix product (the identity
                    BackPACK uses for its per-sample second moments); the paper's MLP takes only this path
Conv2d              ∂s_n/∂W = δ_n · unfold(x_n)ᵀ, the sum running over the output positions: the power is taken
                    after that sum, per sample, so the per-sample gradients are formed (one einsum over a strided
                    view of the patches, in sub-chunks that bound the memory) — BackPACK's approach for
                    convolutions
anything else       (BatchNorm in eval mode, a user's own layer) torch.func: vmap over the samples of the
                    gradient of ⟨layer(x_n), δ_n⟩ with respect to the layer's own parameters (functional_call),
                    which is the per-sample gradient by the chain rule; also chunked

p = 2 gives the empirical Fisher, p = 1 MAS. An expectation over the model's own labels keeps the structure:
Σ_y p_{n,y} |∂ log p_{n,y}/∂θ|^p is one backward pass per class, each class's per-sample moments weighted by
p_{n,y}; for a Linear layer the weights go into |δ|^p before the single matrix product (Σ_y p_{n,y} |δ_{n,y,i}|^p).

A model these rules cannot treat exactly is an error naming the layer, never a silently wrong number: BatchNorm
using batch statistics (training mode, or no running statistics), a layer whose output for a sample depends on
the other samples, a layer called twice in one forward pass or with more than one input.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

# per-sample gradients alive at once, in elements, for the Conv2d and generic rules: 16M floats = 64 MB
PER_SAMPLE_ELEMENTS = 1 << 24


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that own parameters (directly), in registration order; an error if samples interact."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or not module.track_running_stats):
            raise ValueError(f"layer {name or type(model).__name__} ({type(module).__name__}) normalises with batch "
                             "statistics, which mixes samples: per-sample importances need it in eval mode with "
                             "running statistics (model.eval())")
    return [(name, m) for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def forward_capturing(model: nn.Module, x: Tensor,
                      layers: list[tuple[str, nn.Module]]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Run the model, returning (output, input of each layer, output of each layer), in the order of `layers`."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}

    def recorder(name: str):
        def record(_module, args, out):
            if name in outputs:
                raise ValueError(f"layer {name} is called more than once in a forward pass (shared weights): no "
                                 "exact per-sample rule")
            if len(args) != 1 or not isinstance(args[0], Tensor) or not isinstance(out, Tensor):
                raise ValueError(f"layer {name} takes or returns more than one tensor: no exact per-sample rule")
            inputs[name], outputs[name] = args[0], out
        return record

    handles = [m.register_forward_hook(recorder(name)) for name, m in layers]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [name for name, _ in layers if name not in outputs]
    if missing:
        raise ValueError(f"layer {missing[0]} is not called in the forward pass: no gradient to compute")
    return out, [inputs[name] for name, _ in layers], [outputs[name] for name, _ in layers]


def magnitude(t: Tensor, power: int) -> Tensor:
    """|t|^power, in one elementwise pass for the powers the estimators use."""
    if power == 2:
        return t.square()
    if power == 1:
        return t.abs()
    return t.abs().pow(power)


class LinearMoment:
    """Σ_n w_n |∂s_n/∂θ|^p of a Linear layer on a 2-D input: the weighted |δ|^p of every term (class) summed
    first, then one matrix product with |x|^p."""

    def __init__(self, layer: nn.Linear, x: Tensor, power: int):
        self.layer, self.x, self.power = layer, x.detach(), power
        self.rows: Tensor | None = None

    def add(self, delta: Tensor, weight: Tensor | None) -> None:
        d_p = magnitude(delta, self.power)
        if weight is not None:
            d_p = d_p * weight[:, None]
        self.rows = d_p if self.rows is None else self.rows + d_p

    def finish(self, sums: dict[str, Tensor], prefix: str) -> None:
        sums[f"{prefix}weight"] += self.rows.T @ magnitude(self.x, self.power)
        if self.layer.bias is not None:
            sums[f"{prefix}bias"] += self.rows.sum(0)


def conv_patches(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """[N, C_in, H_out, W_out, kh, kw]: the input entries each kernel entry multiplies at each output position, a
    strided view of the (zero-padded) input. F.unfold would copy them into columns; its CPU kernel (im2col) took 3 to
    20 times as long as the einsum over this view."""
    (ph, pw), (sh, sw), (kh, kw) = layer.padding, layer.stride, layer.kernel_size
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    return x.unfold(2, kh, sh).unfold(3, kw, sw)


class ConvMoment:
    """Σ_n w_n |∂s_n/∂θ|^p of a Conv2d layer: per-sample gradients δ_n · unfold(x_n)ᵀ, the power taken per sample
    after the sum over positions, formed a sub-chunk of samples at a time."""

    def __init__(self, layer: nn.Conv2d, x: Tensor, power: int):
        self.layer, self.x, self.power = layer, x.detach(), power
        self.weight_sum = torch.zeros_like(layer.weight)
        self.bias_sum = torch.zeros_like(layer.bias) if layer.bias is not None else None
        self.step = max(1, PER_SAMPLE_ELEMENTS // layer.weight.numel())

    def add(self, delta: Tensor, weight: Tensor | None) -> None:
        layer, n = self.layer, len(delta)
        for start in range(0, n, self.step):
            stop = min(start + self.step, n)
            d = delta[start:stop]  # [n, out channels, H_out, W_out]
            grads = torch.einsum("nohw,nchwuv->nocuv", d, conv_patches(layer, self.x[start:stop]))
            # in place: the per-sample gradients are the largest tensors of the whole computation
            grads = grads.square_() if self.power == 2 else grads.abs_() if self.power == 1 \
                else grads.abs_().pow_(self.power)
            bias = magnitude(d.sum((2, 3)), self.power) if self.bias_sum is not None else None
            if weight is not None:
                grads.mul_(weight[start:stop, None, None, None, None])
                bias = bias * weight[start:stop, None] if bias is not None else None
            self.weight_sum += grads.sum(0)
            if bias is not None:
                self.bias_sum += bias.sum(0)

    def finish(self, sums: dict[str, Tensor], prefix: str) -> None:
        sums[f"{prefix}weight"] += self.weight_sum
        if self.bias_sum is not None:
            sums[f"{prefix}bias"] += self.bias_sum


class GenericMoment:
    """Σ_n w_n |∂s_n/∂θ|^p of any layer whose samples do not interact: torch.func's vmap over the samples of the
    vector-Jacobian product of the layer alone with δ_n. The layer's output recomputed sample by sample must be
    its output in the batch, else the layer mixes samples and this is an error."""

    def __init__(self, name: str, layer: nn.Module, x: Tensor, out: Tensor, power: int):
        self.name, self.layer, self.x, self.out, self.power = name, layer, x.detach(), out.detach(), power
        self.params = {k: p.detach() for k, p in layer.named_parameters(recurse=False)}
        self.sums = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.step = max(1, PER_SAMPLE_ELEMENTS // sum(p.numel() for p in self.params.values()))
        self.checked = False

    def sample_gradient(self, x_n: Tensor, delta_n: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        out, pull_back = vjp(lambda params: functional_call(self.layer, params, (x_n[None],)), self.params)
        return out[0], pull_back(delta_n[None])[0]

    def add(self, delta: Tensor, weight: Tensor | None) -> None:
        for start in range(0, len(delta), self.step):
            stop = min(start + self.step, len(delta))
            outs, grads = vmap(self.sample_gradient)(self.x[start:stop], delta[start:stop])
            if not self.checked:
                scale = float(self.out[start:stop].abs().max()) or 1.0
                if not torch.allclose(outs, self.out[start:stop], rtol=1e-4, atol=1e-5 * scale):
                    raise ValueError(f"layer {self.name} ({type(self.layer).__name__}) gives a sample another output "
                                     "alone than in its batch: it mixes samples, no exact per-sample rule")
            for k, g in grads.items():
                g = magnitude(g, self.power)
                if weight is not None:
                    g = g * weight[start:stop].view(-1, *[1] * (g.dim() - 1))
                self.sums[k] += g.sum(0)
        self.checked = True

    def finish(self, sums: dict[str, Tensor], prefix: str) -> None:
        for k, v in self.sums.items():
            sums[f"{prefix}{k}"] += v


def layer_moment(name: str, layer: nn.Module, x: Tensor, out: Tensor, power: int):
    """The fastest exact rule for this layer (module docstring)."""
    if type(layer) is nn.Linear and x.dim() == 2:
        return LinearMoment(layer, x, power)
    if type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros" \
            and not isinstance(layer.padding, str) and layer.dilation == (1, 1):
        return ConvMoment(layer, x, power)
    return GenericMoment(name, layer, x, out, power)


# (model output [N, C] of a chunk, the chunk's samples) -> its terms: (Σ_n s_n, per-sample weights or None), one
# term per class for an expectation over the model's labels
Terms = Callable[[Tensor, slice], list[tuple[Tensor, Tensor | None]]]


def gradient_moments(model: nn.Module, x: Tensor, terms: Terms, power: int, batch_size: int) -> dict[str, Tensor]:
    """mean_n Σ_terms w_n |∂ s_n / ∂θ|^power for every parameter θ, chunk by chunk of batch_size samples."""
    layers = parameter_layers(model)
    sums = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for start in range(0, len(x), batch_size):
        out, inputs, outputs = forward_capturing(model, x[start:start + batch_size], layers)
        moments = [layer_moment(name, layer, a, z, power) for (name, layer), a, z in zip(layers, inputs, outputs)]
        chunk_terms = terms(out, slice(start, start + batch_size))
        for i, (total, weight) in enumerate(chunk_terms):
            deltas = torch.autograd.grad(total, outputs, retain_graph=i < len(chunk_terms) - 1, allow_unused=True)
            for moment, z, d in zip(moments, outputs, deltas):
                moment.add(d if d is not None else torch.zeros_like(z), weight)
        for (name, _), moment in zip(layers, moments):
            moment.finish(sums, f"{name}." if name else "")
    return {k: v / len(x) for k, v in sums.items()}


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
    samples independently.
    """
    return gradient_moments(model, x, lambda out, chunk: [(per_sample_scalar(out, y[chunk]).sum(), None)], power,
                            batch_size)


def expected_per_sample_moment(model: nn.Module, x: Tensor, power: int, batch_size: int = 1000) -> dict[str, Tensor]:
    """mean_n Σ_y p(y|x_n) |∂ log p(y|x_n) / ∂θ|^power for every parameter θ, p the model's softmax.

    p weights the classes and is not differentiated: it is the distribution the labels are drawn from, not
    part of the log-likelihood whose gradient is taken.
    """
    def terms(out: Tensor, _chunk: slice) -> list[tuple[Tensor, Tensor | None]]:
        log_p = F.log_softmax(out, dim=1)
        p = log_p.detach().exp()
        return [(log_p[:, c].sum(), p[:, c]) for c in range(p.shape[1])]

    return gradient_moments(model, x, terms, power, batch_size)
