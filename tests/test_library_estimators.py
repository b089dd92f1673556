"""What continual-learning libraries compute: the arg-max-label Fisher, the p(y|x)-weighted Fisher,
fis_batched with BatchNorm in train mode, SI's upper clamp and the blended accumulation — each against a slow loop
of its own definition (float64) and against its defining property; their options in the config."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from benchmark.config import load_config
from benchmark.correlations import correlation_rows, library_practice_correlations, pairs
from benchmark.errors import UsageError
from benchmark.loop import accumulate, make_estimators, run_sequence
from benchmark.scenario import make_scenario, make_splits
from estimators import (
    BatchedFisher,
    EmpiricalFisher,
    MaxPredictionFisher,
    ProbabilityWeightedFisher,
    SynapticIntelligence,
)
from tests.reference import (
    batch_statistics_batched_fisher_loop,
    batched_fisher_loop,
    max_prediction_fisher_loop,
    probability_weighted_fisher_loop,
)
from tests.test_conv_estimators import conv_net, images
from tests.test_estimators import assert_same, data, relative_error, small_net


def test_names_are_file_stems():
    assert (MaxPredictionFisher.name, ProbabilityWeightedFisher.name) == ("fis_maxpred", "fis_pweighted")


@pytest.mark.parametrize("make", [
    lambda: (MaxPredictionFisher(batch_size=10), max_prediction_fisher_loop),
    lambda: (ProbabilityWeightedFisher(batch_size=10), probability_weighted_fisher_loop),
], ids=["fis_maxpred", "fis_pweighted"])
@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_equals_batch1_loop(make, network):
    estimator, reference = make()
    # 37 (MLP) or 13 (conv net, BatchNorm in eval mode) samples in chunks of 10: the last one is smaller
    model, (x, y) = (small_net(), data()) if network == "mlp" else (conv_net(), images())
    assert_same(estimator.importance(model, x, y), reference(model, x, y), rtol=1e-6)


# --- fis_maxpred: the label is the model's, not the data's ---

def test_maxpred_ignores_the_true_labels_and_is_fis_where_the_model_is_right():
    model = small_net()
    x, y = data()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert (predicted != y).any()  # else the comparison with fis below would prove nothing
    maxpred = MaxPredictionFisher().importance(model, x, y)
    assert_same(MaxPredictionFisher().importance(model, x, torch.zeros_like(y)), maxpred, rtol=0)
    assert_same(maxpred, EmpiricalFisher().importance(model, x, predicted), rtol=1e-12)
    fis = EmpiricalFisher().importance(model, x, y)
    assert all(relative_error(maxpred[k], fis[k]) > 0.1 for k in fis)


# --- fis_pweighted: p(y|x) ≤ 1 weights the empirical Fisher ---

def test_pweighted_is_at_most_fis_entrywise():
    model = small_net()
    x, y = data()
    weighted, fis = ProbabilityWeightedFisher().importance(model, x, y), EmpiricalFisher().importance(model, x, y)
    for k in fis:
        assert (weighted[k] <= fis[k] * (1 + 1e-12)).all(), k
        assert (weighted[k] < 0.9 * fis[k]).any(), k


def test_pweighted_of_one_sample_is_its_probability_times_fis():
    model = small_net()
    x, y = data(n=1)
    with torch.no_grad():
        p = float(torch.softmax(model(x), 1)[0, y[0]])
    fis = EmpiricalFisher().importance(model, x, y)
    assert_same(ProbabilityWeightedFisher().importance(model, x, y), {k: p * v for k, v in fis.items()}, rtol=1e-12)


# --- fis_batched with BatchNorm in train mode (PyCIL, FACIL) ---

def test_batched_fisher_in_batchnorm_train_mode_equals_its_definition_on_the_conv_net():
    model = conv_net()  # eval mode, running statistics away from any batch's
    x, y = images()  # 13 samples in minibatches of 4: the last holds one sample (BatchNorm2d still has positions)
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    train_mode = BatchedFisher(batch_size=4, batchnorm="train").importance(model, x, y)
    reference = batch_statistics_batched_fisher_loop(model, x, y, 4)
    # a conv bias followed by BatchNorm is subtracted again with the batch mean: its gradient, hence Ω, is 0 (up
    # to rounding, 1e-30 here) and a relative comparison of rounding errors would prove nothing
    cancelled = ["conv1.bias", "conv2.bias"]
    for k in cancelled:
        assert train_mode.pop(k).abs().max() < 1e-20 and reference.pop(k).abs().max() < 1e-20, k
    assert_same(train_mode, reference, rtol=1e-6)
    # the model is left as it was: every layer in eval mode, running statistics and batch counts untouched
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(b, buffers[k]) for k, b in model.named_buffers())
    # and the option is not a no-op: the batch statistics change Ω
    eval_mode = BatchedFisher(batch_size=4).importance(model, x, y)
    assert_same(eval_mode, batched_fisher_loop(model, x, y, 4), rtol=1e-6)
    assert all(relative_error(train_mode[k], eval_mode[k]) > 0.01 for k in train_mode)
    assert all(eval_mode[k].abs().max() > 1e-6 for k in cancelled)


def test_batchnorm_train_mode_changes_nothing_without_batchnorm():
    model = small_net()
    x, y = data()
    assert_same(BatchedFisher(batch_size=10, batchnorm="train").importance(model, x, y),
                BatchedFisher(batch_size=10).importance(model, x, y), rtol=0)


def test_batchnorm_mode_is_checked():
    with pytest.raises(ValueError, match="'eval' or 'train'"):
        BatchedFisher(batchnorm="training")


# --- SI clamped from above (Avalanche) ---

def si_after_one_step(clamp_max=None, clip_at_zero=False) -> torch.Tensor:
    """Three weights 1 → 1 + Δ with gradients g, one step: ω = −g·Δ, Ω = ω / (Δ² + 0.1)
    = (0.4 / 0.14, −0.2 / 0.14, 0.01 / 0.1001)."""
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    si = SynapticIntelligence(xi=0.1, clamp_max=clamp_max, clip_at_zero=clip_at_zero)
    si.begin_task(model)
    change = torch.tensor([[-0.2, 0.2, -0.01]], dtype=torch.float64)
    with torch.no_grad():
        model.weight.add_(change)
    grad = torch.tensor([[2.0, 1.0, 1.0]], dtype=torch.float64)
    si.observe_step([grad], [grad], [change])
    return si.importance(model, None, None)["weight"][0]


def test_si_clamp_bounds_omega_from_above_only():
    unbounded = torch.tensor([0.4 / 0.14, -0.2 / 0.14, 0.01 / 0.1001], dtype=torch.float64)
    torch.testing.assert_close(si_after_one_step(), unbounded, rtol=1e-12, atol=0)
    # the large one bounded, the small and the negative one (no bound from below, as Avalanche) as they were
    torch.testing.assert_close(si_after_one_step(clamp_max=1.0), torch.tensor([1.0, unbounded[1], unbounded[2]]),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(si_after_one_step(clamp_max=1e-3, clip_at_zero=True),
                               torch.tensor([1e-3, 0.0, 1e-3], dtype=torch.float64), rtol=1e-12, atol=0)


def test_si_clamp_is_the_minimum_with_the_bound_on_a_random_path():
    torch.manual_seed(0)
    model = nn.Linear(20, 10).double()
    plain, clamped = SynapticIntelligence(), SynapticIntelligence(clamp_max=0.5)
    for si in (plain, clamped):
        si.begin_task(model)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in model.parameters()]
        change = [-0.01 * g + 0.005 * torch.randn_like(g) for g in grads]
        with torch.no_grad():
            for p, c in zip(model.parameters(), change):
                p.add_(c)
        for si in (plain, clamped):
            si.observe_step(grads, grads, change)
    unbounded, bounded = plain.importance(model, None, None), clamped.importance(model, None, None)
    for k, v in unbounded.items():
        assert (v > 0.5).any() and (v < 0.5).any(), k
        assert torch.equal(bounded[k], torch.minimum(v, torch.tensor(0.5, dtype=v.dtype))), k


# --- accumulation "blend" (FACIL, Avalanche MAS) ---

def config_with(**estimator_options):
    smoke = load_config("smoke")
    return replace(smoke, estimators=replace(smoke.estimators, **estimator_options))


def accumulated_over(increments: list[dict], config) -> dict:
    accumulated = {}
    for increment in increments:
        accumulated = accumulate(accumulated, increment, config)
    return accumulated


def three_tasks() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"fis": {"fc1.weight": torch.rand(4, 3, generator=g, dtype=torch.float64)}} for _ in range(3)]


def test_blend_is_an_average_with_the_previous_importance_from_zero():
    tasks = three_tasks()
    blended = accumulated_over(tasks, config_with(accumulation="blend", blend_alpha=0.5))["fis"]["fc1.weight"]
    # Ω_1 = ½·0 + ½ Ω_task1;  Ω_2 = ½ Ω_1 + ½ Ω_task2;  Ω_3 = ½ Ω_2 + ½ Ω_task3
    first, second, third = (t["fis"]["fc1.weight"] for t in tasks)
    torch.testing.assert_close(blended, first / 8 + second / 4 + third / 2, rtol=1e-15, atol=0)


def test_blend_with_alpha_0_is_the_last_tasks_importance():
    tasks = three_tasks()
    blended = accumulated_over(tasks, config_with(accumulation="blend", blend_alpha=0.0))
    assert torch.equal(blended["fis"]["fc1.weight"], tasks[-1]["fis"]["fc1.weight"])


@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_blend_is_online_accumulation_scaled_by_one_minus_alpha(alpha):
    """Started from zeros, as the libraries do, α Ω + (1 − α) Ω_task is (1 − α) times γ Ω + Ω_task with γ = α: the
    same penalty at a λ (1 − α) times as large."""
    tasks = three_tasks()
    blended = accumulated_over(tasks, config_with(accumulation="blend", blend_alpha=alpha))["fis"]["fc1.weight"]
    online = accumulated_over(tasks, config_with(accumulation="online", online_gamma=alpha))["fis"]["fc1.weight"]
    torch.testing.assert_close(blended, (1 - alpha) * online, rtol=1e-14, atol=0)


def test_sum_is_unchanged_by_the_blend_option():
    tasks = three_tasks()
    summed = accumulated_over(tasks, config_with(blend_alpha=0.2))["fis"]["fc1.weight"]
    assert torch.equal(summed, sum(t["fis"]["fc1.weight"] for t in tasks))


# --- wiring: the config's options reach the estimators, a run observes and drives them ---

def test_options_reach_the_estimators():
    config = config_with(observe=("si", "fis_batched", "fis_maxpred", "fis_pweighted"), si_clamp_max=0.001,
                         fis_batched_batchnorm="train", batch_size=7)
    estimators = make_estimators(config)
    assert list(estimators) == ["si", "fis_batched", "fis_maxpred", "fis_pweighted"]
    assert estimators["si"].clamp_max == 0.001 and estimators["fis_batched"].batchnorm == "train"
    assert estimators["fis_maxpred"].batch_size == estimators["fis_pweighted"].batch_size == 7
    defaults = make_estimators(config_with(observe=("si", "fis_batched")))
    assert defaults["si"].clamp_max is None and defaults["fis_batched"].batchnorm == "eval"  # 0: no bound


@pytest.mark.slow
def test_a_run_observes_and_drives_the_library_variants_with_blend(mnist):
    config = config_with(observe=("fis", "fis_exact", "fis_maxpred", "fis_pweighted"), accumulation="blend",
                         blend_alpha=0.5)
    config = replace(config, data=replace(config.data, tasks=2))
    scenario = make_scenario(make_splits(config.data, mnist), config.data.tasks, seed=0)
    first, second = run_sequence(config, "fis_maxpred", 10.0, 0, scenario)
    for est, values in second.accumulated.items():
        for name, v in values.items():
            torch.testing.assert_close(v, 0.25 * first.increments[est][name] + 0.5 * second.increments[est][name])
    rows = correlation_rows(1, "increment", second.increments)
    assert {(r[4], r[5]) for r in rows} >= {("fis_maxpred", "fis_exact"), ("fis_maxpred", "fis"),
                                            ("fis_pweighted", "fis"), ("fis_pweighted", "fis_exact")}


def test_library_pairs_appear_with_their_estimators():
    assert pairs(["fis", "fis_exact", "fis_maxpred", "fis_pweighted"]) == [
        ("fis_exact", "fis"), ("fis_maxpred", "fis_exact"), ("fis_maxpred", "fis"), ("fis_pweighted", "fis"),
        ("fis_pweighted", "fis_exact")]
    assert pairs(["fis", "fis_maxpred"]) == [("fis_maxpred", "fis")]


def test_library_practice_correlations_of_a_trained_model_without_a_run():
    model = small_net()
    x, _ = data(n=60)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    table = library_practice_correlations(model, x, predicted, load_config("smoke"))
    assert list(table.columns) == ["layer", "param", "estimator_a", "estimator_b", "method", "value"]
    assert set(zip(table.estimator_a, table.estimator_b)) == {
        ("fis_exact", "fis"), ("fis_batched", "fis"), ("fis_maxpred", "fis_exact"), ("fis_maxpred", "fis"),
        ("fis_pweighted", "fis"), ("fis_pweighted", "fis_exact")}
    assert set(table.layer) == {"0", "2", "4"} and set(table.param) == {"weight", "bias", "all"}
    # labels that are the model's predictions: the arg-max Fisher is the empirical one, in every layer
    same = table[(table.estimator_a == "fis_maxpred") & (table.estimator_b == "fis")]
    assert same.value.to_numpy() == pytest.approx(1.0, abs=1e-12)
    assert table.value.between(-1, 1).all()


@pytest.mark.parametrize("key, value", [
    ("si_clamp_max", -0.001), ("fis_batched_batchnorm", "training"), ("accumulation", "mix"),
    ("blend_alpha", 1.0), ("blend_alpha", -0.1), ("si_clamp_max", "0.001"),
])
def test_bad_library_options_are_one_line_errors_naming_them(tmp_path, key, value):
    path = tmp_path / "bad.toml"
    path.write_text(f"[estimators]\n{key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(UsageError) as error:
        load_config(path=path)
    message = str(error.value)
    assert f"estimators.{key}" in message and "\n" not in message


def test_good_library_options_load(tmp_path):
    path = tmp_path / "libraries.toml"
    path.write_text('[estimators]\nsi_clamp_max = 0.001\nfis_batched_batchnorm = "train"\n'
                    'accumulation = "blend"\nblend_alpha = 0\n')
    e = load_config(path=path).estimators
    assert (e.si_clamp_max, e.fis_batched_batchnorm, e.accumulation, e.blend_alpha) == (0.001, "train", "blend", 0.0)
