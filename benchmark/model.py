"""The models a protocol can choose (model.kind): a factory maps the [model] section to an nn.Module.

The model protocol, what the rest of the benchmark relies on: the module takes a batch of flat images
[N, 784] (float, in [0, 1]) and returns logits [N, 10] (softmax lives in the loss); its samples do not interact
in eval mode (importances and accuracies are computed in eval mode); its parameters are what the penalty, SI,
SOS, the importances and the correlations see, by name (a tensor is a layer's weights); its buffers (BatchNorm's
running statistics) are stored with the state dict and never penalised.

mlp   the paper's MLP 784-300-150-10, leakyReLU on hidden layers
conv  the paper author's convolutional network (aakutalev/ewc-features, section2/convolutional-ewc-*.py):
      Conv2d(1,64,5)–BatchNorm–leakyReLU–maxpool 2 → Conv2d(64,128,3)–BatchNorm–leakyReLU →
      Conv2d(128,256,3)–BatchNorm–leakyReLU → Linear(8·8·256, 10); channels, kernels and pools configurable
"""

from collections import OrderedDict
from collections.abc import Callable
from itertools import pairwise

from torch import nn

from benchmark import plugins
from benchmark.config import IMAGE_SIDE, ModelConfig
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


def make_conv(config: ModelConfig) -> nn.Sequential:
    """Blocks conv{i} → bn{i} → act{i} → pool{i} (no pool where the window is 1), then fc; PyTorch's default
    initialisation and BatchNorm settings, as in the author's code."""
    modules: OrderedDict[str, nn.Module] = OrderedDict(image=nn.Unflatten(1, (1, IMAGE_SIDE, IMAGE_SIDE)))
    channels, side = 1, IMAGE_SIDE
    for i, (out, kernel, pool) in enumerate(zip(config.channels, config.kernels, config.pools), start=1):
        modules[f"conv{i}"] = nn.Conv2d(channels, out, kernel)
        if config.batch_norm:
            modules[f"bn{i}"] = nn.BatchNorm2d(out)
        modules[f"act{i}"] = nn.LeakyReLU(config.leaky_relu_slope)
        if pool > 1:
            modules[f"pool{i}"] = nn.MaxPool2d(pool)
        channels, side = out, (side - kernel + 1) // pool
    modules["flatten"] = nn.Flatten()
    modules["fc"] = nn.Linear(channels * side * side, CLASSES)
    return nn.Sequential(modules)


MODELS: dict[str, Callable[[ModelConfig], nn.Module]] = {"mlp": make_mlp, "conv": make_conv}


def make_model(config: ModelConfig) -> nn.Module:
    """The protocol's model: its kind's, or what its factory of your own returns (checked by check_exact)."""
    if config.factory:
        return plugins.function(config.factory, "model.factory")(config)
    return MODELS[config.kind](config)


def check_exact(config: ModelConfig) -> None:
    """A ValueError naming the layer if the exact per-sample rules (estimators/per_sample.py) cannot treat the
    model in eval mode, found on two images before any training rather than after the first task."""
    import torch

    from estimators.per_sample import per_sample_gradient_moment

    model = make_model(config)
    if not isinstance(model, nn.Module):
        raise ValueError(f"the model is a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    logits = model(torch.rand(2, PIXELS))
    if not isinstance(logits, torch.Tensor) or logits.shape != (2, CLASSES):
        raise ValueError(f"the model must map images [N, {PIXELS}] to logits [N, {CLASSES}], not to "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    per_sample_gradient_moment(model, torch.rand(2, PIXELS), torch.zeros(2, dtype=torch.int64),
                               lambda out, _y: out.sum(1), power=2)
