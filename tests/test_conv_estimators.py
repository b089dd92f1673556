"""Every estimator on the convolutional network (Conv2d, BatchNorm in eval mode, Linear) against a batch-1
autograd loop or its definition, and the models the exact rules refuse."""

import copy

import pytest
import torch
from torch import nn

from benchmark.config import ModelConfig
from benchmark.model import make_conv
from estimators import (
    AbsoluteFisher,
    BatchedFisher,
    EmpiricalFisher,
    MemoryAwareSynapses,
    SampledFisher,
    SignalImportance,
    TrueFisher,
)
from estimators.per_sample import per_sample_gradient_moment
from tests.reference import (
    absolute_fisher_loop,
    batched_fisher_loop,
    conv_net_signal_loop,
    fisher_loop,
    mas_loop,
    true_fisher_loop,
)
from tests.test_estimators import assert_same

SMALL = ModelConfig(kind="conv", channels=(3, 4), kernels=(5, 3), pools=(2, 1))


def conv_net(config: ModelConfig = SMALL, dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    """In eval mode, its BatchNorm layers with running statistics and affine parameters away from their initial
    values (a trained network's), so that every path has something to get wrong."""
    torch.manual_seed(seed)
    model = make_conv(config).to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def images(n: int = 13, dtype=torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("estimator, reference", [
    (EmpiricalFisher(batch_size=5), fisher_loop),
    (MemoryAwareSynapses(batch_size=5), mas_loop),
    (TrueFisher(batch_size=5), lambda model, x, y: true_fisher_loop(model, x)),
    (AbsoluteFisher(batch_size=5), lambda model, x, y: absolute_fisher_loop(model, x)),
    (BatchedFisher(batch_size=4), lambda model, x, y: batched_fisher_loop(model, x, y, 4)),
], ids=["fis", "mas", "fis_exact", "abs_fisher", "fis_batched"])
def test_conv_net_float64_equals_batch1_loop(estimator, reference):
    model = conv_net()
    x, y = images()  # 13 samples in chunks of 5: unequal chunks must still average over all samples
    assert_same(estimator.importance(model, x, y), reference(model, x, y), rtol=1e-6)


def test_fis_sampled_is_the_fisher_of_its_drawn_labels():
    model = conv_net()
    x, y = images()
    estimator = SampledFisher(seed=3, batch_size=5)
    estimator.begin_task(model)
    drawn = estimator.sample_labels(model, x)
    assert_same(estimator.importance(model, x, y), fisher_loop(model, x, drawn), rtol=1e-6)


def test_sig_equals_its_definition_on_the_conv_net():
    model = conv_net()
    x, y = images()
    assert_same(SignalImportance(batch_size=5).importance(model, x, y), conv_net_signal_loop(model, x), rtol=1e-6)


@pytest.mark.parametrize("estimator, reference", [
    (EmpiricalFisher(), fisher_loop),
    (MemoryAwareSynapses(), mas_loop),
], ids=["fis", "mas"])
def test_author_sized_conv_net_float32_within_1e5(estimator, reference):
    """The truth is the batch-1 loop in float64 on the same weights and images: a float32 loop is no truth, its
    error depends on the CPU's kernels (oneDNN's batch-1 conv backward was off by 2.4e-3 on an AVX2-only CPU)."""
    model = conv_net(ModelConfig(kind="conv"), dtype=torch.float32)  # 64-128-256 channels, as the author's
    x, y = images(6, dtype=torch.float32)
    fast = estimator.importance(model, x, y)
    truth = reference(copy.deepcopy(model).double(), x.double(), y)
    for k in truth:
        assert fast[k].dtype == torch.float32
        assert float((fast[k].double() - truth[k]).norm() / truth[k].norm()) <= 1e-5, k


def test_batch_norm_in_training_mode_is_refused_by_name():
    model = conv_net().train()
    x, y = images()
    with pytest.raises(ValueError, match="layer bn1 .*batch statistics"):
        EmpiricalFisher().importance(model, x, y)


class CentreOverBatch(nn.Module):
    """A layer of one's own that mixes samples: it subtracts the batch mean."""

    def __init__(self, features: int):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(features, dtype=torch.float64))

    def forward(self, x):
        return x - x.mean(0) + self.shift


def test_a_layer_that_mixes_samples_is_refused_by_name():
    model = nn.Sequential(nn.Linear(784, 6), CentreOverBatch(6), nn.Linear(6, 10)).double()
    x, y = images()
    with pytest.raises(ValueError, match=r"layer 1 \(CentreOverBatch\).*mixes samples"):
        per_sample_gradient_moment(model, x, y, lambda out, t: out.sum(1), power=2)


class Scale(nn.Module):
    """A layer of one's own that does not mix samples: the generic path treats it exactly."""

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, features, dtype=torch.float64))

    def forward(self, x):
        return torch.tanh(x * self.scale)


def test_a_users_own_layer_takes_the_generic_exact_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 6), Scale(6), nn.Linear(6, 10)).double()
    x, y = images()
    assert_same(EmpiricalFisher(batch_size=4).importance(model, x, y), fisher_loop(model, x, y), rtol=1e-6)


@pytest.mark.parametrize("driver", ["uniform", "shuffled-mas", "layermean-mas"])
def test_control_drivers_work_on_the_conv_net(driver):
    from estimators.controls import Control

    model = conv_net()
    x, y = images()
    increments = {"mas": MemoryAwareSynapses().importance(model, x, y)}
    control = Control(driver, seed=0).importance(model, increments)
    for name, p in model.named_parameters():
        assert control[name].shape == p.shape
        if driver != "uniform":  # both transforms keep each tensor's sum (estimators/controls.py)
            torch.testing.assert_close(control[name].sum(), increments["mas"][name].sum())
