"""Signal passed through a weight (Kutalev 2020, arXiv 2005.07107; the paper's "SIG").

Weight W_ij of a Linear layer (input j → unit i):  Ω = |W_ij| · mean_n |x_nj|, x the layer's input.
Bias b_i:  Ω = mean_n |a_ni|, a the layer's output after its activation — leakyReLU on hidden layers, softmax
on the output layer.

The model must be a chain Linear → elementwise activation → Linear → … (the paper's MLP), so that the
activation output of a hidden Linear layer is the input of the next one.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from estimators.base import Estimator
from estimators.per_sample import forward_capturing, linear_layers


class SignalImportance(Estimator):
    name = "sig"

    def __init__(self, batch_size: int = 1000):
        self.batch_size = batch_size

    @torch.no_grad()
    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        layers = linear_layers(model)
        input_sums = [layer.weight.new_zeros(layer.in_features) for _, layer in layers]
        activation_sums = [layer.weight.new_zeros(layer.out_features) for _, layer in layers]
        for start in range(0, len(x), self.batch_size):
            out, inputs, _ = forward_capturing(model, x[start:start + self.batch_size])
            activations = inputs[1:] + [F.softmax(out, dim=1)]
            for i, (a_in, a_out) in enumerate(zip(inputs, activations)):
                if a_out.shape[1] != layers[i][1].out_features:
                    raise ValueError("SIG needs a chain of Linear layers: a layer's output feeds the next one")
                input_sums[i] += a_in.abs().sum(0)
                activation_sums[i] += a_out.abs().sum(0)
        result = {}
        for (name, layer), s_in, s_out in zip(layers, input_sums, activation_sums):
            result[f"{name}.weight"] = layer.weight.abs() * (s_in / len(x))[None, :]
            if layer.bias is not None:
                result[f"{name}.bias"] = s_out / len(x)
        return result
