"""Every estimator against a slow per-sample reference, and against its definition on hand-computed cases."""

import copy
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.config import ModelConfig, load_config
from benchmark.loop import Cell, CellTraining, Stack, make_optimizer, train_task
from benchmark.model import make_mlp
from benchmark.penalty import Penalty
from estimators import EmpiricalFisher, MemoryAwareSynapses, SignalImportance, SynapticIntelligence
from tests.reference import fisher_loop, mas_loop, signal_loop


def small_net(seed=0, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 7), nn.LeakyReLU(0.01), nn.Linear(7, 5), nn.LeakyReLU(0.01),
                         nn.Linear(5, 4)).to(dtype)


def data(n=37, features=12, classes=4, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def assert_same(fast: dict, slow: dict, rtol: float = 1e-5):
    assert fast.keys() == slow.keys()
    for k in slow:
        assert slow[k].abs().max() > 0, f"{k}: reference is all zero, the comparison would prove nothing"
        torch.testing.assert_close(fast[k], slow[k], rtol=rtol, atol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("estimator, reference", [
    (EmpiricalFisher(batch_size=10), fisher_loop),
    (MemoryAwareSynapses(batch_size=10), mas_loop),
], ids=["fis", "mas"])
def test_gradient_estimators_equal_batch1_loop(estimator, reference):
    model = small_net()
    x, y = data()
    # batch_size=10 with 37 samples: chunks of unequal size must still average over all samples
    assert_same(estimator.importance(model, x, y), reference(model, x, y))


def test_sig_equals_definition_loop():
    model = small_net()
    x, y = data()
    assert_same(SignalImportance(batch_size=10).importance(model, x, y), signal_loop(model, x))


@pytest.mark.parametrize("estimator, reference", [
    (EmpiricalFisher(), fisher_loop),
    (MemoryAwareSynapses(), mas_loop),
], ids=["fis", "mas"])
def test_paper_sized_mlp_float32_within_1e5_relative(estimator, reference):
    torch.manual_seed(0)
    model = make_mlp(ModelConfig())  # 784-300-150-10, float32 as in the experiment
    x = torch.rand(40, 784)
    y = torch.randint(0, 10, (40,))
    fast, slow = estimator.importance(model, x, y), reference(model, x, y)
    for k in slow:
        assert relative_error(fast[k], slow[k]) <= 1e-5, k


# --- defining properties on cases small enough to compute by hand ---

def one_layer(weight, bias) -> nn.Sequential:
    layer = nn.Linear(len(weight[0]), len(weight)).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float64))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return nn.Sequential(layer)


def test_fisher_by_hand():
    # W = 0, b = 0: p = (½, ½); ∂ log p_y/∂z = e_y − p = (½, −½); ∂/∂W = (e_y − p) xᵀ
    model = one_layer([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    imp = EmpiricalFisher().importance(model, x, torch.tensor([0]))
    torch.testing.assert_close(imp["0.weight"], torch.tensor([[0.25, 1.0], [0.25, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(imp["0.bias"], torch.tensor([0.25, 0.25], dtype=torch.float64))


def test_mas_by_hand_is_mean_of_absolute_values_not_absolute_batch_gradient():
    # b = (ln 3, 0): p = (¾, ¼), ‖p‖² = 5/8; ∂‖p‖²/∂z_k = 2 p_k (p_k − ‖p‖²) = (3/16, −3/16).
    # x and −x give opposite gradients for W: a batch gradient would cancel to 0, MAS must not.
    model = one_layer([[0.0, 0.0], [0.0, 0.0]], [math.log(3.0), 0.0])
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    imp = MemoryAwareSynapses().importance(model, x, torch.tensor([0, 1]))
    torch.testing.assert_close(imp["0.weight"], torch.tensor([[3 / 16, 6 / 16], [3 / 16, 6 / 16]],
                                                             dtype=torch.float64))
    torch.testing.assert_close(imp["0.bias"], torch.tensor([3 / 16, 3 / 16], dtype=torch.float64))


def test_sig_by_hand():
    # layer 1: z = W1 x + b1, leakyReLU(0.5); layer 2: logits = W2 h + b2, softmax
    l1, l2 = nn.Linear(2, 2).double(), nn.Linear(2, 2).double()
    with torch.no_grad():
        l1.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        l1.bias.zero_()
        l2.weight.zero_()
        l2.bias.zero_()
    model = nn.Sequential(l1, nn.LeakyReLU(0.5), l2)
    x = torch.tensor([[1.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    imp = SignalImportance().importance(model, x, torch.tensor([0, 0]))
    # mean |x| = (2, 1): |W1| * (2, 1)
    torch.testing.assert_close(imp["0.weight"], torch.tensor([[2.0, 2.0], [1.0, 0.0]], dtype=torch.float64))
    # z1 = (−1, 0.5) and (5, 1.5); leakyReLU(0.5) → (−0.5, 0.5) and (5, 1.5); mean |a| = (2.75, 1.0)
    torch.testing.assert_close(imp["0.bias"], torch.tensor([2.75, 1.0], dtype=torch.float64))
    # layer 2 input mean |h| = (2.75, 1.0), W2 = 0 → 0; softmax of zero logits = (½, ½)
    torch.testing.assert_close(imp["2.weight"], torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(imp["2.bias"], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_si_by_hand():
    # one parameter moved 1.0 → 0.8 → 0.7 with gradients 2 and 1:
    # ω = −(2·(−0.2) + 1·(−0.1)) = 0.5;  Δ = −0.3;  Ω = 0.5 / (0.09 + 0.1)
    model = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    si = SynapticIntelligence(xi=0.1)
    si.begin_task(model)
    for grad, new in ((2.0, 0.8), (1.0, 0.7)):
        change = [new - model.weight.detach()]
        with torch.no_grad():
            model.weight.fill_(new)
        g = [torch.full_like(model.weight, grad)]
        si.observe_step(g, g, change)
    omega = si.importance(model, None, None)["weight"]
    torch.testing.assert_close(omega, torch.full((1, 1), 0.5 / 0.19, dtype=torch.float64))


def test_si_clip_at_zero():
    model = nn.Linear(1, 1, bias=False).double()
    si = SynapticIntelligence(clip_at_zero=True)
    si.begin_task(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    si.observe_step([torch.ones_like(model.weight)], [torch.ones_like(model.weight)], [torch.ones_like(model.weight)])
    # a step uphill gives ω = −1·1 < 0: clipped to 0
    assert float(si.importance(model, None, None)["weight"]) == 0.0


def cell_alone(hidden: tuple[int, ...], images: dict[str, torch.Tensor],
               epochs: int = 1) -> tuple[CellTraining, object]:
    """One cell of the experiment's training loop, untrained: seed 0's MLP of these hidden sizes, task 0's images
    images["x"], images["y"] (filled in by the caller), batches drawn from Generator(5); and its config."""
    smoke = load_config("smoke")
    config = replace(smoke, model=replace(smoke.model, hidden=hidden),
                     training=replace(smoke.training, epochs=epochs))
    scenario = SimpleNamespace(device=torch.device("cpu"), split=lambda _name, _task: (images["x"], images["y"]))
    trainee = CellTraining(config, Cell("none", 0.0, 0, scenario))
    trainee.shuffle = torch.Generator().manual_seed(5)
    return trainee, config


def train_alone(trainee: CellTraining, config, lr: float = 1e-2) -> None:
    """The experiment's train_task on the cell alone, with PyTorch's default Adam."""
    stack = Stack([trainee.model], batched=False)
    train_task(stack, [trainee], torch.optim.Adam(stack.parameters(), lr=lr), 0, config)


@pytest.mark.parametrize("gradient", ["task", "total"])
def test_si_in_training_loop_equals_hand_written_path_integral(gradient):
    """The experiment's training step (analytic penalty gradient, Adam, SI bookkeeping) against a plain loop
    that backpropagates through task loss + penalty and keeps its own copies of θ."""
    images = {}
    trainee, config = cell_alone((6, 5), images)
    model = trainee.model
    reference = copy.deepcopy(model)
    x = images["x"] = torch.rand(120, 784)
    y = images["y"] = torch.randint(0, 10, (120,))
    lam = 3.0
    omega_penalty = [torch.rand_like(p) for p in model.parameters()]
    anchor = [p.detach() + 0.05 * torch.randn_like(p) for p in model.parameters()]  # θ* away from θ

    trainee.penalty = Penalty(lam)
    trainee.penalty.consolidate(anchor, omega_penalty)
    si = SynapticIntelligence(xi=0.1, gradient=gradient)
    trainee.observers = [si]
    si.begin_task(model)
    train_alone(trainee, config)
    fast = si.importance(model, x, y)

    # the reference: same batches, autograd through the penalised loss, explicit clones
    params = list(reference.parameters())
    ref_optimizer = torch.optim.Adam(params, lr=1e-2)
    start = [p.detach().clone() for p in params]
    omega = [torch.zeros_like(p) for p in params]
    order = torch.randperm(120, generator=torch.Generator().manual_seed(5))
    for s in range(0, 120, config.training.batch_size):
        idx = order[s:s + config.training.batch_size]
        task_loss = F.cross_entropy(reference(x[idx]), y[idx])
        g_task = torch.autograd.grad(task_loss, params, retain_graph=True)
        total = task_loss + lam * sum((o * (p - a).square()).sum() for o, p, a in zip(omega_penalty, params, anchor))
        ref_optimizer.zero_grad()
        total.backward()
        g = g_task if gradient == "task" else [p.grad.clone() for p in params]
        old = [p.detach().clone() for p in params]
        ref_optimizer.step()
        for w, gi, o, p in zip(omega, g, old, params):
            w -= gi * (p.detach() - o)
    slow = {name: w / ((p.detach() - s0).square() + 0.1)
            for (name, p), w, s0 in zip(reference.named_parameters(), omega, start)}

    for p, p_ref in zip(model.parameters(), params):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-7)  # the analytic penalty gradient is exact
    for k in slow:
        assert slow[k].abs().max() > 0
        assert relative_error(fast[k], slow[k]) <= 1e-5, k


def test_experiment_optimizer_is_pytorchs_adam_up_to_rounding():
    """make_optimizer's fused Adam takes the same steps as PyTorch's default Adam (float rounding aside)."""
    config = load_config("paper")
    x, y = torch.rand(500, 784), torch.randint(0, 10, (500,))
    models = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = make_mlp(config.model)
        optimizer = make_optimizer(config, model) if fused else torch.optim.Adam(model.parameters(), lr=1e-3)
        for start in range(0, 500, 100):
            optimizer.zero_grad()
            F.cross_entropy(model(x[start:start + 100]), y[start:start + 100]).backward()
            optimizer.step()
        models.append(model)
    assert isinstance(make_optimizer(config, models[0]), torch.optim.Adam)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
