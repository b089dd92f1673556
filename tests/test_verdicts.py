"""The paper's claims judged cell by cell on their intervals, the sensitivity table, and differences paired by seed —
on constructed correlation tables and accuracy matrices, independent of any training run."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.report.stats import (
    SENSITIVITY,
    check_claims,
    claims_sensitivity,
    independent_difference,
    paired_difference,
    protocol_differences,
    sensitivity_headline,
)

LAYERS = ("fc1", "fc2", "fc3")
TASKS = range(10)
# what seed 0, 1, 2 add to a cell's value: 3 seeds, sd 0.01, a 95% t-interval of ± 4.303 · 0.01 / √3 ≈ ± 0.025
SPREAD = (-0.01, 0.0, 0.01)
MAS_FIS = "MAS–FIS > 0.8 on all layers and tasks"
SQUARED = "corr(FIS, MAS²) > corr(FIS, MAS)"
SIG = "SIG vs MAS/FIS/SI ≈ 0.6 on the first layer, falling to ≈ 0 or negative on the output layer"


def per_layer(fc1: float, fc2: float, fc3: float):
    return lambda layer, task: (fc1, fc2, fc3)[LAYERS.index(layer)]


def except_at(value, layer: str, task: int, there):
    """value everywhere but at (layer, task): there (a number, or a tuple of per-seed values)."""
    return lambda at_layer, at_task: there if (at_layer, at_task) == (layer, task) else value(at_layer, at_task)


# every claim comfortably true: cells far from their thresholds, SIG falling from ≈ 0.6 to below 0
GOOD = {("fis", "mas"): per_layer(0.9, 0.9, 0.9), ("fis", "mas^2"): per_layer(0.95, 0.95, 0.95),
        ("mas", "si"): per_layer(0.85, 0.85, 0.85), ("fis", "si"): per_layer(0.8, 0.8, 0.8),
        ("fis", "sig"): per_layer(0.6, 0.2, -0.1), ("mas", "sig"): per_layer(0.6, 0.3, -0.2),
        ("si", "sig"): per_layer(0.55, 0.1, -0.3)}


def correlations(values: dict, spread=SPREAD, method="pearson", kind="accumulated", param="weight") -> pd.DataFrame:
    """A correlations table: values[(a, b)](layer, task) is the cell's value, to which each seed adds its spread,
    or a tuple of the seeds' own values."""
    rows = []
    for (a, b), value in values.items():
        for layer in LAYERS:
            for task in TASKS:
                v = value(layer, task)
                for seed, x in enumerate(v if isinstance(v, tuple) else [v + offset for offset in spread]):
                    rows.append((seed, layer, task, kind, param, a, b, method, x))
    return pd.DataFrame(rows, columns=["seed", "layer", "task", "kind", "param", "estimator_a", "estimator_b",
                                       "method", "value"])


def judged(values: dict, spread=SPREAD) -> dict:
    return {r.claim: r for r in check_claims(correlations(values, spread))}


def test_claims_that_hold_in_every_cell():
    results = judged(GOOD)
    assert len(results) == 5
    for result in results.values():
        assert (result.verdict("1+"), result.verdict("0")) == ("holds", "holds"), result.claim
        assert [(row["tasks"], row["cells_holding"], row["cells"]) for row in result.rows()] == [("1+", 27, 27),
                                                                                                  ("0", 3, 3)]
    assert results[MAS_FIS].summary() == "holds from task 1 on in 27/27 cells; at task 0 holds in 3/3 cells"
    assert results[SIG].summary() == ("holds from task 1 on in 27/27 cells; at task 0 holds in 3/3 cells; the trend "
                                      "holds at tasks 0–9 of 10")


def test_a_claim_that_fails_in_one_cell_fails():
    """fc2 at task 5: 0.70 [0.68, 0.72], entirely below 0.8; every other cell holds."""
    result = judged({**GOOD, ("fis", "mas"): except_at(GOOD[("fis", "mas")], "fc2", 5, 0.7)})[MAS_FIS]
    assert (result.verdict("1+"), result.verdict("0")) == ("fails", "holds")
    assert result.holding("1+") == 26
    assert result.summary() == ("from task 1 on fails on fc2 at task 5 (0.70 [0.68, 0.72], fails); at task 0 holds in "
                                "3/3 cells")


def test_an_interval_that_contains_the_threshold_is_undecided():
    """fc3 at task 7: 0.81 [0.79, 0.83] contains 0.8 — undecided, not fails; a failing cell beside it decides, and
    is named first."""
    straddling = except_at(GOOD[("fis", "mas")], "fc3", 7, 0.81)
    (row, _) = judged({**GOOD, ("fis", "mas"): straddling})[MAS_FIS].rows()
    assert (row["tasks"], row["verdict"], row["cells_holding"], row["fraction_holding"]) == ("1+", "undecided", 26,
                                                                                             26 / 27)
    assert row["not_holding"] == "fc3 at task 7 (0.81 [0.79, 0.83], undecided)"
    both = judged({**GOOD, ("fis", "mas"): except_at(straddling, "fc1", 9, 0.7)})[MAS_FIS]
    assert both.verdict("1+") == "fails"
    assert both.rows()[0]["not_holding"] == ("fc1 at task 9 (0.70 [0.68, 0.72], fails); fc3 at task 7 (0.81 [0.79, "
                                             "0.83], undecided)")


def test_a_failure_at_task_0_alone_is_reported_apart():
    """The published paper cell: fc2 right after task 0, 0.797 [0.774, 0.820] — the seeds 0.797 ∓ d with d chosen so
    that the t-interval's half-width is 0.023."""
    d = 0.023 * np.sqrt(3) / stats.t.ppf(0.975, 2)
    dip = except_at(GOOD[("fis", "mas")], "fc2", 0, (0.797 - d, 0.797, 0.797 + d))
    result = judged({**GOOD, ("fis", "mas"): dip})[MAS_FIS]
    assert result.summary() == ("holds from task 1 on in 27/27 cells; at task 0 fails on fc2 (0.80 [0.77, 0.82], "
                                "undecided)")
    assert [(row["tasks"], row["verdict"]) for row in result.rows()] == [("1+", "holds"), ("0", "undecided")]


def test_the_squared_claim_is_judged_on_differences_paired_by_seed():
    """The seeds' values spread 0.80–0.90, so corr(fis, mas) and corr(fis, mas²) have overlapping intervals; but
    on every seed mas² is 0.01 higher (lower): paired, the claim holds (fails) in every cell."""
    plain = lambda layer, task: (0.80, 0.85, 0.90)  # noqa: E731
    higher = judged({**GOOD, ("fis", "mas"): plain, ("fis", "mas^2"): lambda layer, task: (0.81, 0.86, 0.91)})
    assert higher[SQUARED].summary() == "holds from task 1 on in 27/27 cells; at task 0 holds in 3/3 cells"
    lower = judged({**GOOD, ("fis", "mas"): plain, ("fis", "mas^2"): lambda layer, task: (0.79, 0.84, 0.89)})[SQUARED]
    assert (lower.verdict("1+"), lower.verdict("0")) == ("fails", "fails")
    assert lower.summary().startswith("from task 1 on fails on fc1 at task 1 (-0.01 [-0.01, -0.01], fails), ")
    assert "and 23 more (0/27 cells hold); at task 0 fails on fc1 (-0.01 [-0.01, -0.01], fails), fc2" in lower.summary()


def test_the_sig_trend_is_judged_per_task():
    """SIG–SI at task 4: the output layer at 0.30 [0.28, 0.32] is above 0 — fails there; SIG–FIS at task 0: no fall
    from the first layer to the output layer — fails there; SIG–MAS's output layer at 0 (interval containing it) is
    "≈ 0": holds."""
    values = {**GOOD, ("si", "sig"): except_at(GOOD[("si", "sig")], "fc3", 4, 0.3),
              ("fis", "sig"): except_at(GOOD[("fis", "sig")], "fc1", 0, -0.1),
              ("mas", "sig"): per_layer(0.6, 0.3, 0.0)}
    result = judged(values)[SIG]
    assert result.summary() == (
        "from task 1 on fails on SIG–SI at task 4 (fc1 − fc3 0.25 [0.25, 0.25], fc3 0.30 [0.28, 0.32], fails); "
        "at task 0 fails on SIG–FIS (fc1 − fc3 0.00 [0.00, 0.00], fc3 -0.10 [-0.12, -0.08], fails); "
        "the trend holds at tasks 1–3, 5–9 of 10")


def test_with_fewer_than_three_seeds_the_mean_decides_and_the_verdict_is_indicative():
    """Two seeds: 0.81 holds and 0.79 fails on their means alone (with three seeds both would be undecided)."""
    values = {**GOOD, ("fis", "mas"): except_at(except_at(GOOD[("fis", "mas")], "fc2", 3, 0.79), "fc1", 0, 0.81)}
    result = judged(values, spread=(-0.01, 0.01))[MAS_FIS]
    assert result.summary() == ("from task 1 on fails on fc2 at task 3 (0.79 (n < 3), fails); at task 0 holds in 3/3 "
                                "cells (only 2 seeds: indicative)")
    assert all(row["indicative"] for row in result.rows())


def test_paired_difference_by_hand():
    """a − b over the seeds both have (0, 1, 2): differences 0.01, 0.03, 0.01; mean 0.05/3 = 0.016667; sd
    √(((−0.02/3)² · 2 + (0.04/3)²) / 2) = 0.011547; standard error 0.011547 / √3 = 0.0066667; t(0.975, 2 df) =
    4.302653; half-width 0.028684: [−0.012018, 0.045351]."""
    a = {0: 0.95, 1: 0.93, 2: 0.96, 3: 0.90}
    b = {0: 0.94, 1: 0.90, 2: 0.95, 4: 0.50}
    e = paired_difference(a, b)
    assert (e.mean, e.low, e.high, e.n) == (pytest.approx(0.016667, abs=1e-6), pytest.approx(-0.012018, abs=1e-6),
                                            pytest.approx(0.045351, abs=1e-6), 3)


def test_independent_difference_by_hand():
    """Welch: a = 0.95, 0.93, 0.97 (mean 0.95, variance 0.0004), b = 0.94, 0.92, 0.93, 0.95, 0.91 (mean 0.93, variance
    0.00025; a NaN dropped). Squared standard errors 0.0004/3 and 0.00025/5, standard error √(1.8333e-4) = 0.013540;
    Welch–Satterthwaite (1.8333e-4)² / ((1.3333e-4)²/2 + (5e-5)²/4) = 3.5328 degrees of freedom, t(0.975) = 2.927405;
    half-width 0.039637: 0.02 [−0.019637, 0.059637]; n the smaller count, 3."""
    e = independent_difference([0.95, 0.93, 0.97], [0.94, 0.92, 0.93, 0.95, 0.91, float("nan")])
    assert (e.mean, e.low, e.high, e.n) == (pytest.approx(0.02, abs=1e-9), pytest.approx(-0.019637, abs=1e-6),
                                            pytest.approx(0.059637, abs=1e-6), 3)
    one = independent_difference([0.95], [0.94, 0.92])
    assert one.mean == pytest.approx(0.02) and np.isnan(one.low) and one.n == 1


def test_protocols_are_compared_paired_by_seed():
    """mas under paper-tuned minus under paper: the hand-computed difference above, negated (seeds 3 and 4 ran under
    one protocol only); fis, under paper alone, has no row."""
    acc = {("paper", 0): 0.95, ("paper", 1): 0.93, ("paper", 2): 0.96, ("paper", 3): 0.90,
           ("paper-tuned", 0): 0.94, ("paper-tuned", 1): 0.90, ("paper-tuned", 2): 0.95, ("paper-tuned", 4): 0.50}
    rows = [{"run_id": f"{p}-mas-{seed}", "driver": "mas", "seed": seed, "protocol": p} for p, seed in acc]
    rows.append({"run_id": "paper-fis-0", "driver": "fis", "seed": 0, "protocol": "paper"})
    accuracy = {f"{p}-mas-{seed}": np.array([[0.99, 0.1], [value, value]]) for (p, seed), value in acc.items()}
    accuracy["paper-fis-0"] = np.array([[0.99, 0.1], [0.9, 0.9]])
    table = protocol_differences(pd.DataFrame(rows), accuracy, ["paper", "paper-tuned"])
    (row,) = table.to_dict("records")
    assert (row["driver"], row["protocol A"], row["protocol B"]) == ("mas", "paper", "paper-tuned")
    e = row["ACC"]
    assert (e.mean, e.low, e.high, e.n) == (pytest.approx(-0.016667, abs=1e-6), pytest.approx(-0.045351, abs=1e-6),
                                            pytest.approx(0.012018, abs=1e-6), 3)


def test_the_sensitivity_table_has_a_verdict_in_every_way_of_measuring():
    """Eight ways (Pearson/Spearman × accumulated/increment × weight/all); fis–mas made low on fc3 in the two
    Spearman-on-increments ones; Jaccard and bias-only rows are no way of measuring here."""
    low = {**GOOD, ("fis", "mas"): per_layer(0.9, 0.9, 0.5)}
    tables = [correlations(low if (method, kind) == ("spearman", "increment") else GOOD, method=method, kind=kind,
                           param=param) for method, kind, param in SENSITIVITY]
    tables += [correlations(low, method="jaccard_top10"), correlations(low, param="bias")]
    table = claims_sensitivity(pd.concat(tables, ignore_index=True))
    assert len(table) == 5 * 8 * 2
    assert table.groupby(["claim", "tasks"]).apply(
        lambda g: sorted(zip(g.method, g.kind, g.param)), include_groups=False).map(
        lambda ways: ways == sorted(SENSITIVITY)).all()
    mas_fis = table[table.claim == MAS_FIS]
    assert set(mas_fis[mas_fis.verdict == "fails"].pipe(lambda t: zip(t.method, t.kind, t.param))) == {
        ("spearman", "increment", "weight"), ("spearman", "increment", "all")}
    assert sensitivity_headline(table, MAS_FIS) == ("from task 1 on holds in 6 of 8 combinations (fails in 2); at "
                                                    "task 0 holds in 6 of 8 combinations (fails in 2)")
    assert sensitivity_headline(table, "MAS–SI > 0.8") == ("from task 1 on holds in 8 of 8 combinations; at task 0 "
                                                           "holds in 8 of 8 combinations")
