"""Signal passed through a weight (Kutalev 2020, arXiv 2005.07107; the paper's "SIG"), and its extension to
convolutions and BatchNorm in the same spirit: a weight's importance is its magnitude times the mean magnitude of
the signal it multiplies; a bias's is the mean magnitude of the signal its unit passes on.

Linear weight W_ij (input j → unit i):  Ω = |W_ij| · mean_n |x_nj|, x the layer's input (the paper's).
Conv2d weight W[o, c, u, v]:  Ω = |W[o, c, u, v]| · mean over samples and output positions of |unfold(x)[(c, u, v)]|,
    the input entry the weight multiplies at each position the kernel slides over (zero padding included).
BatchNorm weight γ_c:  Ω = |γ_c| · mean over samples and positions of |x̂_c|, x̂ = (x − running mean) /
    √(running variance + ε): the normalised input γ multiplies (eval mode, as every importance).
Bias b_i of any of them (BatchNorm's β too):  Ω = mean over samples (and positions) of |a_i|, a the signal the
    unit passes on: the output of the elementwise activation applied directly to the layer's output, if one is
    (leakyReLU in the paper's MLP and after the conv net's BatchNorm); softmax of the model's output for the
    layer that produces it (the paper's output layer); else the layer's output itself (a Conv2d whose output
    goes to BatchNorm).
A head (split tasks; benchmark/evaluation.py's task_head masks the logits of the other output units to −∞): an output
    unit outside it passes nothing on, so the signal through its weights reaches no output and they get 0, as its
    bias does (its softmax is 0) — the head's weights only, as the gradient-based importances give.

Any other layer with parameters is an error naming it: SIG is defined layer by layer.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator
from estimators.per_sample import PER_SAMPLE_ELEMENTS, conv_patches, parameter_layers

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)


def leaf_calls(model: nn.Module, x: Tensor) -> tuple[Tensor, list[tuple[str, nn.Module, Tensor, Tensor]]]:
    """Run the model; return its output and every call of a module without children, in order:
    (name, module, input, output)."""
    calls = []

    def recorder(name: str):
        return lambda module, args, out: calls.append((name, module, args[0], out))

    handles = [m.register_forward_hook(recorder(name)) for name, m in model.named_modules()
               if next(m.children(), None) is None]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, calls


def unit_sums(a: Tensor, unit_dim: int) -> Tensor:
    """Σ |a| over everything but the unit axis (samples, positions)."""
    dims = [d for d in range(a.dim()) if d != unit_dim % a.dim()]
    return a.abs().sum(dims)


class SignalImportance(Estimator):
    name = "sig"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    @torch.no_grad()
    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        layers = dict(parameter_layers(model))
        for name, layer in layers.items():
            if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)) or \
                    isinstance(layer, nn.Conv2d) and (layer.dilation != (1, 1) or isinstance(layer.padding, str)):
                raise ValueError(f"SIG has no rule for layer {name} ({type(layer).__name__}): it is defined for "
                                 "Linear, Conv2d (without dilation) and BatchNorm layers")
        input_sums: dict[str, Tensor] = {}  # per layer: Σ |input entry a weight multiplies|, and how many entries
        signal_sums: dict[str, Tensor] = {}  # per layer: Σ |signal passed on| per unit
        counts: dict[str, list[float]] = {name: [0.0, 0.0] for name in layers}
        output_layer, head = None, None  # the layer producing the model's output; its units with a finite logit
        for start in range(0, len(x), self.batch_size):
            out, calls = leaf_calls(model, x[start:start + self.batch_size])
            last = max(i for i, call in enumerate(calls) if call[0] in layers)
            for i, (name, layer, a_in, a_out) in enumerate(calls):
                if name not in layers:
                    continue
                inputs, n_inputs = self.input_magnitudes(layer, a_in)
                model_output = out if i == last and out.shape == a_out.shape else None
                signal = self.passed_on(calls, i, model_output)
                if model_output is not None:
                    in_head = torch.isfinite(model_output).any(0)
                    output_layer, head = name, in_head if head is None else head | in_head
                unit_dim = -1 if isinstance(layer, nn.Linear) else 1
                input_sums[name] = input_sums.get(name, 0) + inputs
                signal_sums[name] = signal_sums.get(name, 0) + unit_sums(signal, unit_dim)
                counts[name][0] += n_inputs
                counts[name][1] += signal.numel() / signal.shape[unit_dim]
        result = {}
        for name, layer in layers.items():
            prefix = f"{name}." if name else ""
            mean_input = input_sums[name] / counts[name][0]
            if isinstance(layer, nn.Conv2d):
                mean_input = mean_input[None]
            weight = layer.weight.abs() * mean_input
            if name == output_layer:  # a unit outside the head (module docstring): × 0; inside: × 1, exactly
                weight = weight * head.reshape(-1, *[1] * (weight.dim() - 1))
            result[f"{prefix}weight"] = weight
            if layer.bias is not None:
                result[f"{prefix}bias"] = signal_sums[name] / counts[name][1]
        return result

    @staticmethod
    def input_magnitudes(layer: nn.Module, a: Tensor) -> tuple[Tensor, float]:
        """Σ over samples (and positions) of |the input entry each weight multiplies|, and the number summed."""
        if isinstance(layer, nn.Linear):
            return unit_sums(a, -1), a.numel() / a.shape[-1]
        if isinstance(layer, nn.Conv2d):
            total, count = 0, 0.0
            patch = layer.weight[0].numel()
            step = max(1, PER_SAMPLE_ELEMENTS // (patch * a.shape[2] * a.shape[3]))
            for start in range(0, len(a), step):
                patches = conv_patches(layer, a[start:start + step])  # [n, C_in, H_out, W_out, kh, kw]
                total = total + patches.abs().sum((0, 2, 3))
                count += patches.shape[0] * patches.shape[2] * patches.shape[3]
            return total, count
        shape = [1, -1] + [1] * (a.dim() - 2)  # BatchNorm: per channel, the normalised input γ multiplies
        normalised = (a - layer.running_mean.view(shape)) / (layer.running_var.view(shape) + layer.eps).sqrt()
        return unit_sums(normalised, 1), a.numel() / a.shape[1]

    @staticmethod
    def passed_on(calls: list, i: int, model_output: Tensor | None) -> Tensor:
        """What layer call i's units pass on (module docstring)."""
        output = calls[i][3]
        for _, module, a_in, a_out in calls[i + 1:]:
            if a_in is output and isinstance(module, ACTIVATIONS):
                return a_out
        return F.softmax(model_output, dim=1) if model_output is not None else output
