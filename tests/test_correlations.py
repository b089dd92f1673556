import math

import numpy as np
import pytest
import torch
from scipy import stats

from benchmark.correlations import COLUMNS, average_ranks, correlation_rows, layer_vectors, pairs


def importances(seed):
    g = torch.Generator().manual_seed(seed)
    return {"fc1.weight": torch.rand(4, 3, generator=g), "fc1.bias": torch.rand(4, generator=g),
            "fc2.weight": torch.rand(2, 4, generator=g), "fc2.bias": torch.rand(2, generator=g)}


def table(rows):
    return {(r[1], r[2], r[4], r[5], r[6]): r[7] for r in rows}


def test_pairs_include_derived_only_when_sources_exist():
    assert pairs(["fis", "mas", "si", "sig"]) == [
        ("fis", "mas"), ("fis", "si"), ("fis", "sig"), ("mas", "si"), ("mas", "sig"), ("si", "sig"),
        ("fis", "mas^2"), ("sqrt(fis)", "mas")]
    assert pairs(["si", "sig"]) == [("si", "sig")]


def test_layer_vectors_weight_bias_and_all():
    imp = importances(0)
    v = layer_vectors(imp)
    assert set(v) == {(layer, p) for layer in ("fc1", "fc2") for p in ("weight", "bias", "all")}
    np.testing.assert_array_equal(v[("fc1", "weight")], imp["fc1.weight"].double().numpy().ravel())
    assert len(v[("fc1", "all")]) == 12 + 4


def test_values_match_scipy():
    imps = {"fis": importances(0), "mas": importances(1), "si": importances(2)}
    rows = correlation_rows(3, "accumulated", imps)
    assert all(len(r) == len(COLUMNS) and r[0] == 3 and r[3] == "accumulated" for r in rows)
    t = table(rows)
    a = layer_vectors(imps["fis"])[("fc1", "all")].astype(np.float64)
    b = layer_vectors(imps["mas"])[("fc1", "all")].astype(np.float64)
    assert t[("fc1", "all", "fis", "mas", "pearson")] == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert t[("fc1", "all", "fis", "mas", "spearman")] == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
    assert t[("fc1", "all", "fis", "mas^2", "pearson")] == pytest.approx(stats.pearsonr(a, b ** 2)[0], abs=1e-12)
    assert t[("fc1", "all", "sqrt(fis)", "mas", "pearson")] == pytest.approx(
        stats.pearsonr(np.sqrt(a), b)[0], abs=1e-12)
    # monotone transforms leave Spearman unchanged
    assert t[("fc1", "all", "fis", "mas^2", "spearman")] == pytest.approx(t[("fc1", "all", "fis", "mas", "spearman")])
    # 3 estimators → 3 pairs + 2 derived; 2 layers × 3 params × 2 methods
    assert len(rows) == 5 * 2 * 3 * 3


def test_spearman_with_ties_matches_scipy():
    imps = {"fis": {"fc1.weight": torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0, 0.0])},
            "mas": {"fc1.weight": torch.tensor([0.5, 0.1, 0.1, 0.9, 0.2, 0.2])}}
    t = table(correlation_rows(0, "increment", imps))
    a, b = imps["fis"]["fc1.weight"].numpy(), imps["mas"]["fc1.weight"].numpy()
    assert t[("fc1", "weight", "fis", "mas", "spearman")] == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)


def test_constant_importance_gives_nan_not_an_error():
    imps = {"fis": {"fc1.bias": torch.ones(5)}, "mas": {"fc1.bias": torch.rand(5)}}
    t = table(correlation_rows(0, "increment", imps))
    assert math.isnan(t[("fc1", "bias", "fis", "mas", "pearson")])


def test_average_ranks_equal_scipy_rankdata():
    rng = np.random.default_rng(0)
    for v in (rng.random(5000).astype(np.float32),
              np.where(rng.random(5000) < 0.3, 0.0, rng.integers(0, 50, 5000)).astype(np.float32),  # runs of ties
              np.array([2.0]), np.zeros(7)):
        np.testing.assert_array_equal(average_ranks(v), stats.rankdata(v))


def test_top_k_overlap_by_hand():
    # 20 weights; top 10% = the 2 largest. a: entries 0, 1; b: entries 1, 2 → Jaccard 1 / 3
    a, b = torch.zeros(20), torch.zeros(20)
    a[0], a[1], b[1], b[2] = 5.0, 4.0, 3.0, 9.0
    rows = correlation_rows(0, "increment", {"fis": {"fc1.weight": a}, "mas": {"fc1.weight": b}}, top_k_percent=10)
    t = table(rows)
    assert t[("fc1", "weight", "fis", "mas", "jaccard_top10")] == pytest.approx(1 / 3)
    # fis vs mas²: mas² has mas's top entries
    assert t[("fc1", "weight", "fis", "mas^2", "jaccard_top10")] == pytest.approx(1 / 3)
    rows = correlation_rows(0, "increment", {"fis": {"fc1.weight": a}, "mas": {"fc1.weight": a * 2}}, 25)
    assert table(rows)[("fc1", "weight", "fis", "mas", "jaccard_top25")] == 1.0


def test_extra_pairs_appear_with_their_estimators():
    names = ["fis", "mas", "si", "sig", "fis_exact", "fis_sampled", "fis_batched", "abs_fisher", "sos"]
    assert pairs(names)[6:] == [("fis", "mas^2"), ("sqrt(fis)", "mas"), ("fis_exact", "fis"),
                                ("fis_sampled", "fis_exact"), ("fis_batched", "fis"), ("mas", "abs_fisher"),
                                ("si", "sqrt(sos)")]
    assert ("fis_exact", "mas") not in pairs(names)


def test_library_options_against_a_hand_computation_on_two_tasks():
    """fis[blend] after two tasks is 0.25 Ω_0 + 0.5 Ω_1 (blending from zero with α = 0.5), si[bound] is
    min(Ω_0, 0.001) + min(Ω_1, 0.001); each against the plain sum Ω_0 + Ω_1 of the same increments."""
    from benchmark.config import load_config
    from benchmark.correlations import library_option_correlations

    def scaled(seed, scale):
        return {k: v * scale for k, v in importances(seed).items()}

    increments = {0: {"fis": importances(1), "si": scaled(2, 0.002)},
                  1: {"fis": importances(3), "si": scaled(4, 0.002)}}
    table = library_option_correlations(increments, load_config("paper"))
    assert set(zip(table.estimator_a, table.estimator_b)) == {("fis[blend]", "fis"), ("si[bound]", "si")}

    def value(a, layer, method):
        return table[(table.estimator_a == a) & (table.layer == layer) & (table.param == "weight")
                     & (table.method == method)].value.item()

    f0, f1 = (increments[t]["fis"]["fc2.weight"].flatten().double() for t in (0, 1))
    s0, s1 = (increments[t]["si"]["fc1.weight"].flatten().double() for t in (0, 1))
    assert value("fis[blend]", "fc2", "pearson") == pytest.approx(
        stats.pearsonr(0.25 * f0 + 0.5 * f1, f0 + f1)[0], abs=1e-6)
    bounded = s0.clamp(max=0.001) + s1.clamp(max=0.001)
    assert (s0 > 0.001).any() and (s0 < 0.001).any()  # the bound binds on some entries, not on all
    assert value("si[bound]", "fc1", "spearman") == pytest.approx(stats.spearmanr(bounded, s0 + s1)[0], abs=1e-6)
    assert value("si[bound]", "fc1", "pearson") == pytest.approx(stats.pearsonr(bounded, s0 + s1)[0], abs=1e-6)
