"""The estimators beyond the paper's four (true, absolute, sampled and batched Fisher; SOS) against slow loops
and their defining properties."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import ModelConfig
from benchmark.model import make_mlp
from estimators.abs_fisher import AbsoluteFisher
from estimators.fis import EmpiricalFisher
from estimators.fis_batched import BatchedFisher
from estimators.fis_exact import TrueFisher
from estimators.fis_sampled import SampledFisher
from estimators.sos import RunningSquaredGradients
from tests.reference import absolute_fisher_loop, batched_fisher_loop, fisher_loop, true_fisher_loop
from tests.test_estimators import assert_same, cell_alone, data, relative_error, small_net, train_alone


def sampled_fisher_loop(estimator: SampledFisher):
    # the reference gets the estimator's draw: what is checked is the gradient moment for those labels
    return lambda model, x, y: fisher_loop(model, x, estimator.sample_labels(model, x))


def test_names_are_file_stems():
    assert [c.name for c in (TrueFisher, AbsoluteFisher, SampledFisher, BatchedFisher, RunningSquaredGradients)] \
        == ["fis_exact", "abs_fisher", "fis_sampled", "fis_batched", "sos"]


@pytest.mark.parametrize("make", [
    lambda: (TrueFisher(batch_size=10), lambda m, x, y: true_fisher_loop(m, x)),
    lambda: (AbsoluteFisher(batch_size=10), lambda m, x, y: absolute_fisher_loop(m, x)),
    lambda: (lambda e: (e, sampled_fisher_loop(e)))(SampledFisher(seed=4, batch_size=10)),
    lambda: (BatchedFisher(batch_size=10), lambda m, x, y: batched_fisher_loop(m, x, y, 10)),
], ids=["fis_exact", "abs_fisher", "fis_sampled", "fis_batched"])
def test_equals_batch1_loop(make):
    estimator, reference = make()
    model = small_net()
    x, y = data()
    # 37 samples in chunks (or minibatches) of 10: the last one is smaller
    assert_same(estimator.importance(model, x, y), reference(model, x, y), rtol=1e-6)


def test_sampled_labels_come_from_the_model_not_the_data():
    model = small_net()
    x, y = data()
    estimator = SampledFisher(seed=4)
    drawn = estimator.sample_labels(model, x)
    assert (drawn != y).any() and len(drawn.unique()) > 1
    # the true labels are ignored
    assert_same(estimator.importance(model, x, torch.zeros_like(y)), estimator.importance(model, x, y), rtol=0)


@pytest.mark.parametrize("make, reference", [
    (lambda: TrueFisher(), lambda e, m, x, y: true_fisher_loop(m, x)),
    (lambda: AbsoluteFisher(), lambda e, m, x, y: absolute_fisher_loop(m, x)),
    (lambda: SampledFisher(seed=1), lambda e, m, x, y: fisher_loop(m, x, e.sample_labels(m, x))),
    (lambda: BatchedFisher(batch_size=16), lambda e, m, x, y: batched_fisher_loop(m, x, y, 16)),
], ids=["fis_exact", "abs_fisher", "fis_sampled", "fis_batched"])
def test_paper_sized_mlp_float32_within_1e5_of_max(make, reference):
    torch.manual_seed(0)
    model = make_mlp(ModelConfig())  # 784-300-150-10, float32 as in the experiment
    x = torch.rand(40, 784)
    y = torch.randint(0, 10, (40,))
    estimator = make()
    fast, slow = estimator.importance(model, x, y), reference(estimator, model, x, y)
    assert fast.keys() == slow.keys()
    for k in slow:
        assert slow[k].abs().max() > 0, k
        assert (fast[k] - slow[k]).abs().max() <= 1e-5 * slow[k].abs().max(), k


# --- SOS ---

def test_sos_in_training_loop_equals_hand_written_squared_gradients():
    images = {}
    trainee, config = cell_alone((6, 5), images, epochs=2)
    model = trainee.model
    reference = copy.deepcopy(model)
    x = images["x"] = torch.rand(250, 784)  # minibatches of 100, 100, 50; two epochs: six steps
    y = images["y"] = torch.randint(0, 10, (250,))

    sos = RunningSquaredGradients()
    trainee.observers = [sos]
    sos.begin_task(model)
    train_alone(trainee, config)
    fast = sos.importance(model, x, y)

    params = list(reference.parameters())
    ref_optimizer = torch.optim.Adam(params, lr=1e-2)
    squares = [torch.zeros_like(p) for p in params]
    steps = 0
    shuffle = torch.Generator().manual_seed(5)
    batch = config.training.batch_size
    for _ in range(config.training.epochs):
        order = torch.randperm(250, generator=shuffle)
        for s in range(0, 250, batch):
            idx = order[s:s + batch]
            ref_optimizer.zero_grad()
            F.cross_entropy(reference(x[idx]), y[idx]).backward()
            for sq, p in zip(squares, params):
                sq += p.grad.square()
            steps += 1
            ref_optimizer.step()
    assert steps == 6 == sos.steps
    slow = {name: sq / steps for (name, _), sq in zip(reference.named_parameters(), squares)}

    for p, p_ref in zip(model.parameters(), params):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-7)
    assert fast.keys() == slow.keys()
    for k in slow:
        assert slow[k].abs().max() > 0
        assert relative_error(fast[k], slow[k]) <= 1e-5, k


def test_sos_of_constant_gradient_is_its_square_and_restarts_each_task():
    model = nn.Linear(3, 2).double()
    sos = RunningSquaredGradients()
    grads = [torch.full_like(p, -1.5) + torch.arange(p.numel(), dtype=p.dtype).view_as(p) for p in model.parameters()]
    for _task in range(2):  # the second task must not see the first one's steps
        sos.begin_task(model)
        for _ in range(7):
            sos.observe_step(grads, grads, grads)
        imp = sos.importance(model, None, None)
        for (name, _), g in zip(model.named_parameters(), grads):
            torch.testing.assert_close(imp[name], g.square(), rtol=1e-12, atol=0)
    sos.begin_task(model)
    for name, p in model.named_parameters():
        assert torch.equal(sos.importance(model, None, None)[name], torch.zeros_like(p))  # no step: zero
    assert set(RunningSquaredGradients().importance(model, None, None)) == {"weight", "bias"}


# --- defining properties of the Fisher variants ---

def test_true_fisher_is_the_expectation_of_the_sampled_fisher():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.01), nn.Linear(4, 3)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    exact = TrueFisher().importance(model, x, None)
    draws = 500
    mean = {k: torch.zeros_like(v) for k, v in exact.items()}
    for seed in range(draws):
        for k, v in SampledFisher(seed=seed).importance(model, x, None).items():
            mean[k] += v / draws
    with torch.no_grad():
        most_likely = model(x).argmax(1)
    argmax_fisher = EmpiricalFisher().importance(model, x, most_likely)
    for k in exact:
        assert relative_error(mean[k], exact[k]) < 0.05, k
        # the tolerance tells the true Fisher from a Fisher with a fixed label per sample
        assert relative_error(argmax_fisher[k], exact[k]) > 0.3, k


def test_true_fisher_is_the_empirical_fisher_under_the_models_own_label_distribution():
    # W = 0, b = log q: p(·|x) = q = (½, ¼, ¼) for every x; labels (0, 0, 1, 2) for each x follow q exactly
    layer = nn.Linear(5, 3).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).log())
    model = nn.Sequential(layer)
    x, _ = data(n=9, features=5)
    labels = torch.tensor([0, 0, 1, 2]).repeat(len(x))
    empirical = EmpiricalFisher().importance(model, x.repeat_interleave(4, dim=0), labels)
    assert_same(TrueFisher().importance(model, x, None), empirical, rtol=1e-12)


def test_true_fisher_and_empirical_fisher_both_vanish_when_the_model_is_certain():
    """One-hot softmax on the true labels: every label gradient the true Fisher weights by p ≈ 1 is ≈ 0, and the
    others have weight ≈ 0. Both estimates vanish (the true Fisher like ε = 1 − p, the empirical like ε²), so
    they agree in absolute terms, not in ratio."""
    model = small_net()
    x, _ = data()
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    top2 = logits.topk(2, dim=1).values
    scale = 40 / float((top2[:, 0] - top2[:, 1]).min())  # every sample's margin ≥ 40: 1 − p ≤ 3 e^−40
    unscaled = TrueFisher().importance(model, x, y)
    with torch.no_grad():
        model[4].weight.mul_(scale)
        model[4].bias.mul_(scale)
        p = F.softmax(model(x), 1)
    assert torch.equal(p.argmax(1), y) and float(p.max(1).values.min()) > 1 - 1e-15
    exact, empirical = TrueFisher().importance(model, x, y), EmpiricalFisher().importance(model, x, y)
    for k in exact:
        assert (exact[k] - empirical[k]).abs().max() <= 1e-8 * unscaled[k].abs().max(), k


def test_absolute_fisher_is_at_most_the_root_of_the_true_fisher():
    model = small_net()
    x, y = data()
    absolute, exact = AbsoluteFisher().importance(model, x, y), TrueFisher().importance(model, x, y)
    for k in exact:
        # Jensen: E|g| ≤ √E g² over (n, y ~ p)
        assert (absolute[k] <= exact[k].sqrt() * (1 + 1e-12)).all(), k
        assert (absolute[k] < 0.99 * exact[k].sqrt()).any(), k


def test_batched_fisher_extremes_and_bound():
    model = small_net()
    x, y = data(n=36)
    per_sample = EmpiricalFisher().importance(model, x, y)
    assert_same(BatchedFisher(batch_size=1).importance(model, x, y), per_sample, rtol=1e-6)

    names, params = zip(*model.named_parameters())
    full_batch = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    assert_same(BatchedFisher(batch_size=len(x)).importance(model, x, y),
                {k: g.square() for k, g in zip(names, full_batch)}, rtol=1e-6)

    # equal minibatches: mean_b (mean_{n∈b} g_n)² ≤ mean_n g_n² elementwise (Jensen), and far below it
    batched = BatchedFisher(batch_size=12).importance(model, x, y)
    for k in per_sample:
        assert (batched[k] <= per_sample[k] * (1 + 1e-12)).all(), k
        assert batched[k].sum() < 0.5 * per_sample[k].sum(), k


def test_sampled_fisher_is_reproducible_per_seed_and_task():
    model = small_net()
    x, y = data()

    def labels_after(seed: int, tasks: int):
        estimator = SampledFisher(seed=seed)
        for _ in range(tasks):
            estimator.begin_task(model)
        return estimator, estimator.sample_labels(model, x)

    estimator, first = labels_after(seed=7, tasks=1)
    assert torch.equal(estimator.sample_labels(model, x), first)  # a rerun of the same task
    assert torch.equal(labels_after(seed=7, tasks=1)[1], first)  # a fresh estimator at the same task
    assert_same(estimator.importance(model, x, y), labels_after(seed=7, tasks=1)[0].importance(model, x, y), rtol=0)
    estimator.begin_task(model)
    assert not torch.equal(estimator.sample_labels(model, x), first)  # the next task draws again
    assert torch.equal(estimator.sample_labels(model, x), labels_after(seed=7, tasks=2)[1])
    assert not torch.equal(labels_after(seed=8, tasks=1)[1], first)  # another seed draws otherwise
