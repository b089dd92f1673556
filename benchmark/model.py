"""The paper's MLP: 784-300-150-10, leakyReLU on hidden layers, logits out (softmax lives in the loss)."""

from collections import OrderedDict
from itertools import pairwise

from torch import nn

from benchmark.config import ModelConfig
from benchmark.scenario import PIXELS

CLASSES = 10


def make_mlp(config: ModelConfig) -> nn.Sequential:
    """Linear layers fc1, fc2, … with PyTorch's default initialisation (as in the author's code)."""
    sizes = [PIXELS, *config.hidden, CLASSES]
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (n_in, n_out) in enumerate(pairwise(sizes), start=1):
        modules[f"fc{i}"] = nn.Linear(n_in, n_out)
        if i < len(sizes) - 1:
            modules[f"act{i}"] = nn.LeakyReLU(config.leaky_relu_slope)
    return nn.Sequential(modules)
