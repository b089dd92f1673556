"""Sparsification curves (benchmark/sparsify.py): the zeroing order and its tie rule, the exact fractions, the
random baseline's seed, a model whose output one path of weights carries, the batched curve points against a plain
loop over fractions, the summary by hand, and `python -m benchmark sparsify` end to end and on bad input."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from torch import nn

from benchmark.cli import main
from benchmark.config import ModelConfig
from benchmark.model import make_mlp
from benchmark.sparsify import (
    EXPERIMENT,
    FRACTIONS,
    ORDERS,
    SCOPES,
    STEPS,
    curve_metrics,
    curve_points,
    magnitude_importance,
    prunable_weights,
    random_importance,
    read_logged_run,
    schedules,
    summarise,
)
from estimators.fis_exact import TrueFisher
from tests.conftest import DATA_DIR
from tracking import Store


def zeroing_sequence(schedule, names) -> list[tuple[str, int]]:
    """The weights in the order the schedule zeroes them: by the step each is first zero (at most one a step here)."""
    first_zero = []
    for name in names:
        kept = schedule.kept(name).flatten(1)  # [STEPS + 1, n]
        first_zero += [(int((~kept[:, e]).nonzero()[0]), name, e) for e in range(kept.shape[1])]
    assert len({step for step, _, _ in first_zero}) == len(first_zero), "two weights zeroed at one step"
    return [(name, e) for _, name, e in sorted(first_zero)]


@pytest.mark.parametrize("order", ORDERS)
def test_zeroing_order_is_the_importance_order_ties_by_position(order):
    importance = {"fc1.weight": torch.tensor([[3.0, 1.0], [1.0, 2.0]]), "fc2.weight": torch.tensor([[1.0, 0.5, 3.0]])}
    sign = 1 if order == "increasing" else -1
    names = list(importance)
    by_rule = sorted(((name, e) for name in names for e in range(importance[name].numel())),
                     key=lambda w: (sign * float(importance[w[0]].flatten()[w[1]]), names.index(w[0]), w[1]))
    layered = schedules(importance, order)
    assert zeroing_sequence(layered["global"], names) == by_rule
    if order == "increasing":  # ties at 1: fc1's two before fc2's, each tensor's in flat order; at 3 fc1's first
        assert by_rule == [("fc2.weight", 1), ("fc1.weight", 1), ("fc1.weight", 2), ("fc2.weight", 0),
                           ("fc1.weight", 3), ("fc1.weight", 0), ("fc2.weight", 2)]
    for name in importance:  # per layer: each tensor in its own order, the global one restricted to it
        assert zeroing_sequence(layered["layer"], [name]) == [w for w in by_rule if w[0] == name]


@pytest.mark.parametrize("order", ORDERS)
def test_many_ties_follow_the_flat_index(order):
    values = torch.randint(0, 3, (5, 8), generator=torch.Generator().manual_seed(0)).float()
    schedule = schedules({"w": values}, order)["layer"]
    sign = 1 if order == "increasing" else -1
    expected = sorted(range(40), key=lambda e: (sign * float(values.flatten()[e]), e))
    assert schedule.ranks["w"].flatten().argsort().tolist() == expected


def round_half_up(k: int, n: int) -> int:
    return (2 * k * n + STEPS) // (2 * STEPS)


@pytest.mark.parametrize("scope", SCOPES)
def test_zeroed_fractions_are_exact(scope):
    torch.manual_seed(0)
    model = make_mlp(ModelConfig(hidden=(7, 5)))
    weights = prunable_weights(model)
    assert list(weights) == ["fc1.weight", "fc2.weight", "fc3.weight"]  # biases are kept
    schedule = schedules(random_importance(weights, 1), "increasing")[scope]
    total = sum(w.numel() for w in weights.values())
    for k in [0, 1, 2, 3, 77, 100, 101, 150, 199, 200]:
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            for name, w in prunable_weights(pruned).items():
                w.mul_(schedule.kept(name)[k])
        zeros = {name: int((w == 0).sum()) for name, w in prunable_weights(pruned).items()}
        if scope == "layer":
            assert zeros == {name: round_half_up(k, w.numel()) for name, w in weights.items()}, k
        else:
            assert sum(zeros.values()) == round_half_up(k, total), k
        assert all(int((b == 0).sum()) == 0 for name, b in pruned.named_parameters() if name.endswith("bias"))


def test_random_order_is_reproducible_from_its_seed():
    weights = prunable_weights(make_mlp(ModelConfig(hidden=(7, 5))))
    a, b, other = random_importance(weights, 3), random_importance(weights, 3), random_importance(weights, 4)
    assert all(torch.equal(a[name], b[name]) for name in weights)
    assert not all(torch.equal(a[name], other[name]) for name in weights)
    places = torch.cat([a[name].flatten() for name in weights]).sort().values
    assert torch.equal(places, torch.arange(len(places), dtype=places.dtype))  # a permutation: no ties
    for order in ORDERS:
        for scope in SCOPES:
            first, second = schedules(a, order)[scope], schedules(b, order)[scope]
            assert all(torch.equal(first.kept(name), second.kept(name)) for name in weights)


def carried_model() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """20 inputs of which only input 0 carries a signal s = ±1, the label s > 0; 100 hidden units. The output is
    carried by fc1's weight [0, 0] (0.5) into hidden unit 0 and on by fc2's [0, 0] (−1) and [1, 0] (+1), either of
    which alone still classifies every image. Every other weight is a distractor that cannot matter: fc1's from
    the inputs that are always 0 (large, 2.0), fc1's from input 0 into the other units (0) and fc2's from those
    units (large, 3.0, but their units' outputs are 0). Biases 0."""
    model = nn.Sequential(nn.Linear(20, 100), nn.LeakyReLU(0.01), nn.Linear(100, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[0].weight[:, 1:] = 2.0
        model[0].weight[0, 0] = 0.5
        model[2].weight[:, 1:] = 3.0
        model[2].weight[0, 0], model[2].weight[1, 0] = -1.0, 1.0
    x = torch.zeros(64, 20)
    x[:, 0] = torch.tensor([1.0, -1.0]).repeat(32)
    return model.eval(), x, (x[:, 0] > 0).long()


def zeroed_last(schedule, carriers: dict[str, list[int]]) -> bool:
    """Whether no carrier (weight name -> flat indices) is zeroed while any other weight of those tensors is there."""
    for k in range(STEPS + 1):
        kept = {name: schedule.kept(name)[k].flatten().clone() for name in carriers}
        carriers_kept = all(kept[name][flat].all() for name, flat in carriers.items())
        for name, flat in carriers.items():
            kept[name][flat] = False
        if any(mask.any() for mask in kept.values()) and not carriers_kept:
            return False
    return True


def test_a_right_importance_zeroes_the_weights_that_carry_the_output_last():
    model, x, y = carried_model()
    weights = prunable_weights(model)
    fisher = TrueFisher().importance(model, x, y)
    carriers = {"0.weight": [0], "2.weight": [0, 100]}  # flat indices
    accuracy_intact = curve_points(model, schedules(magnitude_importance(weights), "increasing")["layer"], x, y)[0][0]
    assert accuracy_intact == 1.0

    by_fisher = schedules({name: fisher[name] for name in weights}, "increasing")
    assert zeroed_last(by_fisher["global"], carriers)
    assert all(zeroed_last(by_fisher["layer"], {name: flat}) for name, flat in carriers.items())
    assert not zeroed_last(schedules(magnitude_importance(weights), "increasing")["global"], carriers)
    for scope in SCOPES:
        accuracy, loss = curve_points(model, by_fisher[scope], x, y)
        assert (accuracy[:-1] == 1.0).all(), f"{scope}: accuracy fell at {FRACTIONS[np.argmin(accuracy == 1.0)]}"
        assert accuracy[-1] == 0.5  # nothing left: both logits 0, every image class 0
    # magnitude zeroes fc2's two carriers (|1| < 3) first, one a step; Fisher in decreasing order at once
    by_magnitude, _ = curve_points(model, schedules(magnitude_importance(weights), "increasing")["layer"], x, y)
    assert by_magnitude[1] == 1.0 and by_magnitude[2] == 0.5
    most_first, _ = curve_points(model, schedules({name: fisher[name] for name in weights}, "decreasing")["layer"],
                                 x, y)
    assert most_first[0] == 1.0 and most_first[1] == 0.5


def loop_over_fractions(model, schedule, x, y, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """The reference: each fraction's model built, evaluated whole, one after the other."""
    accuracy, loss = [], []
    for k in range(STEPS + 1):
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            for name, w in prunable_weights(pruned).items():
                w.mul_(schedule.kept(name)[k])
            logits = pruned(x)
        if classes is not None:
            outside = torch.ones(logits.shape[1], dtype=torch.bool)
            outside[classes] = False
            logits = logits.masked_fill(outside, float("-inf"))
        accuracy.append(float((logits.argmax(1) == y).double().mean()))
        loss.append(float(F.cross_entropy(logits, y)))
    return np.array(accuracy), np.array(loss)


@pytest.mark.parametrize("classes", [None, [2, 3]], ids=["all-classes", "head"])
def test_batched_curve_points_equal_a_loop_over_fractions(classes):
    """In float64, where no near-tie of two logits can tell the two apart; 450 images span three chunks of images
    and the 201 steps three chunks of steps."""
    torch.manual_seed(0)
    model = make_mlp(ModelConfig(hidden=(30, 20))).double().eval()
    x = torch.rand(450, 784, dtype=torch.float64)
    y = torch.randint(0, 10, (450,)) if classes is None else torch.randint(2, 4, (450,))
    head = None if classes is None else torch.tensor(classes)
    weights = prunable_weights(model)
    tied = {name: (w.abs() * 20).round() for name, w in magnitude_importance(weights).items()}  # many ties
    for order in ORDERS:
        for scope, schedule in schedules(tied, order).items():
            accuracy, loss = curve_points(model, schedule, x, y, head)
            expected_accuracy, expected_loss = loop_over_fractions(model, schedule, x, y, head)
            assert np.array_equal(accuracy, expected_accuracy), (order, scope)
            np.testing.assert_allclose(loss, expected_loss, rtol=1e-10, err_msg=f"{order} {scope}")


def test_summary_by_hand():
    """Accuracy falling linearly from 1 to 0: area 0.5, below 90 % first at the first fraction past 0.1; a second
    seed 0.1 lower everywhere; magnitude at 0.8 throughout."""
    def curve(estimator, seed, accuracy):
        return pd.DataFrame({"estimator": estimator, "order": "increasing", "scope": "layer", "task": 0,
                             "fraction": FRACTIONS, "accuracy": accuracy, "loss": 0.0, "seed": seed})

    linear = 1 - FRACTIONS
    curves = pd.concat([curve("fis", 0, linear), curve("fis", 1, linear - 0.1), curve("magnitude", 0, 0.8 + 0 * linear),
                        curve("magnitude", 1, 0.8 + 0 * linear)])
    per_seed = pd.concat([curve_metrics(c).assign(seed=seed) for seed, c in curves.groupby("seed")])
    fis = per_seed[per_seed.estimator == "fis"].set_index("seed")
    assert fis.auc[0] == pytest.approx(0.5) and fis.auc[1] == pytest.approx(0.4)
    assert fis.below_90[0] == pytest.approx(0.105) and fis.below_90[1] == pytest.approx(0.005)
    assert fis.below_50[0] == pytest.approx(0.505)
    assert np.isnan(per_seed[per_seed.estimator == "magnitude"].below_50).all()  # never below 50 %
    row = summarise(per_seed).set_index("estimator").loc["fis"]
    assert row.n == 2 and row.auc == pytest.approx(0.45)
    # paired differences 0.5 − 0.8 and 0.4 − 0.8: mean −0.35, sd 0.0707, t(0.975, 1) = 12.706
    assert row.auc_minus_magnitude == pytest.approx(-0.35)
    assert row.auc_minus_magnitude_high - row.auc_minus_magnitude == pytest.approx(12.706 * 0.070711 / np.sqrt(2),
                                                                                   rel=1e-3)


TINY = """
[data]
tasks = {tasks}
train_images = 1000
validation_images = 500
importance_samples = 200
test_images = 300

[model]
hidden = [20, 10]

[training]
epochs = 1

[estimators]
observe = ["fis", "mas", "si"]
"""


def tiny_protocol(tmp_path: Path, tasks: int) -> str:
    path = tmp_path / f"tiny{tasks}.toml"
    path.write_text(TINY.format(tasks=tasks))
    return str(path)


def runs_of(uri: str, experiment: str, kind: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else [r for r in client.search_runs([found.experiment_id])
                                     if r.data.tags.get("kind") == kind]


@pytest.mark.slow
def test_sparsify_end_to_end_and_resumed(store_uri, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sparsify", "--config", tiny_protocol(tmp_path, 1), "--seeds", "2", "--data-dir", DATA_DIR,
            "--tracking-uri", store_uri, "--out", str(out)]
    assert main(args) == 0
    children = runs_of(store_uri, EXPERIMENT, "sparsify")
    assert sorted(r.data.tags["seed"] for r in children) == ["0", "1"]
    artifacts = Path(MlflowClient(store_uri).download_artifacts(children[0].info.run_id, "", str(tmp_path / "a")))
    curves = pd.read_csv(artifacts / "curves.csv")
    assert list(curves.columns) == ["estimator", "order", "scope", "task", "fraction", "accuracy", "loss"]
    assert list(dict.fromkeys(curves.estimator)) == ["fis", "mas", "si", "magnitude", "random"]
    assert len(curves) == 5 * len(ORDERS) * len(SCOPES) * (STEPS + 1)
    assert curves.accuracy.between(0, 1).all() and (curves.loss > 0).all()
    assert len(pd.read_csv(artifacts / "summary.csv")) == 5 * 4
    assert json.loads((artifacts / "config.json").read_text())["seed"] in (0, 1)
    for name in ("README.md", "summary.csv", "cells.csv", "curves.csv.gz", "sparsification.png"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert (summary.n == 2).all() and (summary[summary.estimator == "magnitude"].auc_minus_magnitude == 0).all()
    assert "Regenerate: `python -m benchmark " in (out / "README.md").read_text()
    # again: both seeds are read from their finished runs, none is trained
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().err.count("reused") == 2
    assert len(runs_of(store_uri, EXPERIMENT, "sparsify")) == 2
    assert pd.read_csv(out / "summary.csv").equals(summary)


@pytest.mark.slow
def test_sparsify_from_a_logged_run(store_uri, tmp_path, capsys):
    protocol = tiny_protocol(tmp_path, 2)
    for log in ("all", "final"):
        assert main(["run", "--config", protocol, "--drivers", "mas", "--log-importances", log, "--data-dir",
                     DATA_DIR, "--tracking-uri", store_uri]) == 0
    cells = {r.data.params["log_importances"]: r.info.run_id for r in runs_of(store_uri, "pmnist-tiny2", "cell")}
    out = tmp_path / "out"
    assert main(["sparsify", "--from-run", cells["all"], "--task", "1", "--data-dir", DATA_DIR, "--tracking-uri",
                 store_uri, "--out", str(out)]) == 0
    curves = pd.read_csv(out / "curves.csv.gz")
    assert sorted(curves.task.unique()) == [0, 1] and set(curves.seed) == {0}
    assert len(curves) == 2 * 5 * len(ORDERS) * len(SCOPES) * (STEPS + 1)  # mas, si, fis sorted by name, baselines
    (child,) = runs_of(store_uri, EXPERIMENT, "sparsify")
    assert child.data.tags["from_run"] == cells["all"] and child.data.tags["task"] == "1"
    # each task read back with its own importance (once all read the last task's: one downloaded file for both)
    logged = read_logged_run(Store(store_uri), cells["all"], 1)
    client = MlflowClient(store_uri)
    for j in (0, 1):
        own = load_file(client.download_artifacts(cells["all"], f"tasks/task_{j:02d}/importances.safetensors",
                                                  str(tmp_path / f"check{j}")))
        assert torch.equal(logged.importances[j]["mas"]["fc1.weight"], own["mas.fc1.weight"])
    assert not torch.equal(logged.importances[0]["mas"]["fc1.weight"], logged.importances[1]["mas"]["fc1.weight"])

    capsys.readouterr()
    assert main(["sparsify", "--from-run", cells["all"], "--task", "2", "--data-dir", DATA_DIR, "--tracking-uri",
                 store_uri]) == 2
    err = capsys.readouterr().err
    assert f"--task 2: run {cells['all']} has tasks 0 … 1" in err
    assert main(["sparsify", "--from-run", cells["final"], "--data-dir", DATA_DIR, "--tracking-uri", store_uri]) == 2
    err = capsys.readouterr().err
    assert "the run has no artifact tasks/task_00/importances.safetensors" in err and "--log-importances all" in err
    assert len(runs_of(store_uri, EXPERIMENT, "sparsify")) == 1  # the refused ones wrote nothing


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "argument --seeds: must be ≥ 1, not 0"),
    (["--task", "1"], "--task needs --from-run"),
    (["--protocol", "conv-quick"], "sparsify evaluates models whose first module is a Linear layer"),
    (["--protocol", "huge"], "unknown protocol 'huge'"),
    (["--from-run", "0123", "--seeds", "2"], "--from-run takes the run's own protocol and seed: drop --seeds"),
    (["--from-run", "0123"], "no tracking store at"),
])
def test_bad_input(args, message, untouched_store, capsys):
    assert main(["sparsify", *args, "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("benchmark: error: ") and message in err, err


def test_unknown_run_is_named_and_nothing_written(store_uri, capsys):
    assert main(["sparsify", "--from-run", "0123abc", "--tracking-uri", store_uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--from-run: no run '0123abc'" in err
    assert MlflowClient(store_uri).get_experiment_by_name(EXPERIMENT) is None
