"""`compare`: two published folders paired by seed from their cells.csv, against a hand computation."""

import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.compare import compare


def folder(tmp_path, name: str, protocol: str, rows: list[tuple], cpu: str = "AMD EPYC"):
    """A results folder whose cells.csv has a row (driver, seed, λ, ACC) per cell."""
    path = tmp_path / name
    path.mkdir()
    pd.DataFrame([{"protocol": protocol, "dataset": "mnist", "driver": d, "seed": s, "lambda": lam,
                   "lambda_source": "default", "ACC": acc, "BWT": -0.01 * s, "cpu": cpu, "fingerprint": "f",
                   "run_id": f"{d}{s}"} for d, s, lam, acc in rows]).to_csv(path / "cells.csv", index=False)
    return path


def test_paired_differences_against_a_hand_computation(tmp_path):
    a = folder(tmp_path, "a", "paper", [("mas", 0, 4.5, 0.90), ("mas", 1, 4.5, 0.92), ("mas", 2, 4.5, 0.91),
                                        ("none", 0, 0, 0.47), ("none", 1, 0, 0.48), ("none", 2, 0, 0.46),
                                        ("si", 0, 0.25, 0.93)])
    b = folder(tmp_path, "b", "paper-tuned", [("mas", 0, 3.3, 0.93), ("mas", 1, 3.3, 0.92), ("mas", 2, 3.3, 0.95),
                                              ("mas", 3, 3.3, 0.99),  # a seed A lacks: not paired, not counted
                                              ("none", 0, 0, 0.47), ("none", 1, 0, 0.48), ("none", 2, 0, 0.46)],
               cpu="Intel Xeon")
    table, differing = compare(a, b)
    assert differing == ["cpu"]
    acc = table[table.measure == "ACC"].set_index("driver")
    assert list(acc.index) == ["none", "mas"]  # the drivers both ran, in the paper's order
    # differences 0.03, 0.00, 0.04: mean 0.02333, sd 0.020817, t(0.975, 2) = 4.302653 → half-width 0.051712
    mas = acc.loc["mas"]
    assert (mas.seeds, mas.identical_seeds, mas.lambda_A, mas.lambda_B) == (3, 1, "4.5", "3.3")
    assert mas["mean"] == pytest.approx(0.023333, abs=1e-6)
    assert (mas.low, mas.high) == (pytest.approx(-0.028379, abs=1e-6), pytest.approx(0.075045, abs=1e-6))
    assert mas.direction == "no difference shown"
    assert (acc.loc["none", "direction"], acc.loc["none", "identical_seeds"]) == ("identical", 3)
    assert set(table.measure) == {"ACC", "BWT"}  # no forgetting column in these cells.csv: not compared


def test_a_shown_difference_and_the_cli(tmp_path, capsys):
    a = folder(tmp_path, "a", "paper", [("fis", s, 41, 0.93 + 0.001 * s) for s in range(5)])
    b = folder(tmp_path, "b", "paper-tuned", [("fis", s, 29.4, 0.94 + 0.0012 * s) for s in range(5)])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "out" / "paired.csv")]) == 0
    out = capsys.readouterr().out
    # differences 0.0100 … 0.0108: mean 0.0104, sd 0.000316, t(0.975, 4) = 2.776445 → half-width 0.000393
    assert "| fis | 41 | 29.4 | +1.04 [+1.00, +1.08] | 5 | 0 | B higher |" in out
    written = pd.read_csv(tmp_path / "out" / "paired.csv")
    assert written[written.measure == "ACC"].direction.tolist() == ["B higher"]


def test_first_seed_leaves_out_the_seeds_before_it(tmp_path, capsys):
    """A carried Adam chain's first cell starts fresh, the same as the protocol it ablates: --first-seed 1 pairs
    only the cells whose Adam was carried."""
    a = folder(tmp_path, "a", "author", [("mas", s, 4.5, acc) for s, acc in enumerate([0.95, 0.94, 0.95, 0.93])])
    b = folder(tmp_path, "b", "author-adam-carried",
               [("mas", s, 4.5, acc) for s, acc in enumerate([0.95, 0.96, 0.95, 0.96])])
    everything = compare(a, b)[0].set_index(["driver", "measure"]).loc[("mas", "ACC")]
    assert (everything.seeds, everything.identical_seeds) == (4, 2)
    carried = compare(a, b, first_seed=1)[0].set_index(["driver", "measure"]).loc[("mas", "ACC")]
    # differences 0.02, 0.00, 0.03 (seeds 1–3): mean 0.016667, sd 0.015275, t(0.975, 2) = 4.302653 → ± 0.037946
    assert (carried.seeds, carried.identical_seeds) == (3, 1)
    assert carried["mean"] == pytest.approx(0.016667, abs=1e-6)
    assert (carried.low, carried.high) == (pytest.approx(-0.021279, abs=1e-6), pytest.approx(0.054612, abs=1e-6))
    assert main(["compare", str(a), str(b), "--first-seed", "1"]) == 0
    assert "| mas | 4.5 | 4.5 | +1.67 [-2.13, +5.46] | 3 | 1 | no difference shown |" in capsys.readouterr().out


def test_bad_folders_are_one_line_errors(tmp_path, capsys):
    a = folder(tmp_path, "a", "paper", [("fis", 0, 41, 0.9)])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pd.concat([pd.read_csv(a / "cells.csv"), pd.read_csv(a / "cells.csv").assign(protocol="author")]) \
        .to_csv(mixed / "cells.csv", index=False)
    other = folder(tmp_path, "other", "paper", [("mas", 0, 4.5, 0.9)])
    for args, message in [([str(a), str(tmp_path / "nowhere")], "no results folder"),
                          ([str(a), str(mixed)], "holds protocols author, paper: compare needs one protocol"),
                          ([str(a), str(other)], "share no driver")]:
        assert main(["compare", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
