"""Split tasks in van de Ven et al.'s three incremental-learning types (data.split_type): each type's heads and
labels, the loss and the prediction through them, evaluation under each type's rule, every estimator against a
batch-1 loop of its own definition over the same head, and class-incremental forgetting as the theory has it."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.cli import main
from benchmark.config import DataConfig, ModelConfig, load_config
from benchmark.evaluation import evaluate, task_head
from benchmark.loop import run_sequence
from benchmark.model import make_mlp
from benchmark.scenario import PIXELS, Split, Splits, evaluation_head, make_splits, make_task_sequence
from benchmark.sweep import config_hash
from estimators import ESTIMATORS, SynapticIntelligence
from estimators.sos import RunningSquaredGradients
from tests.reference import (
    HeadLogits,
    absolute_fisher_loop,
    batched_fisher_loop,
    fisher_loop,
    head_labels,
    mas_loop,
    max_prediction_fisher_loop,
    probability_weighted_fisher_loop,
    signal_loop,
    true_fisher_loop,
)
from tests.test_estimators import assert_same, cell_alone, relative_error, train_alone

TYPES = ("task", "domain", "class")
TASK = 1  # the task the single-task checks look at: its head differs in all three types


def synthetic_sequence(split_type: str, images: int = 60, tasks: int = 3):
    """Split tasks of the given type over random float64 images, labels 0 … 9 in turn (images / 10 of each)."""
    g = torch.Generator().manual_seed(0)

    def split() -> Split:
        return Split(torch.rand(images, PIXELS, generator=g, dtype=torch.float64), torch.arange(images) % 10,
                     np.arange(images))

    data = DataConfig(sequence="split", tasks=tasks, split_type=split_type)
    return make_task_sequence(data, {"mnist": Splits(split(), split(), split(), split())}, seed=0)


def small_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return make_mlp(ModelConfig(hidden=(7, 5))).double()


# --- heads, labels, loss and prediction, by type ---

HEADS = {"task": [2, 3], "domain": [0, 1], "class": [0, 1, 2, 3]}  # task 1's, while it trains
LABELS = {"task": {2, 3}, "domain": {0, 1}, "class": {2, 3}}  # task 1's labels (domain: digit mod 2)


@pytest.mark.parametrize("split_type", TYPES)
def test_heads_and_labels(split_type):
    sequence = synthetic_sequence(split_type)
    assert sequence.classes(TASK).tolist() == HEADS[split_type]
    for name in ("train", "validation", "importance", "test"):
        x, y = sequence.split(name, TASK)
        assert set(y.tolist()) == LABELS[split_type] and len(x) == len(y) == 12  # the images of digits 2 and 3
        digits = synthetic_sequence("task").split(name, TASK)[1]
        assert torch.equal(y, digits % 2 if split_type == "domain" else digits)


@pytest.mark.parametrize("split_type", TYPES)
def test_loss_and_prediction_are_the_softmax_over_the_head(split_type):
    """Constructed logits whose largest entry lies outside the head: the loss is the cross-entropy over the head's
    logits alone, the prediction the head's arg-max."""
    sequence = synthetic_sequence(split_type)
    _, y = sequence.split("train", TASK)
    head = sequence.classes(TASK)
    logits = torch.randn(len(y), 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    logits[:, 9] = 50.0  # digit 9 is in no task-1 head: it would win every prediction and take the softmax
    identity = nn.Identity()
    with task_head(identity, head):
        loss = F.cross_entropy(identity(logits), y)
        predicted = identity(logits).argmax(1)
    by_hand = torch.stack([torch.logsumexp(logits[n, head], 0) - logits[n, int(y[n])] for n in range(len(y))]).mean()
    torch.testing.assert_close(loss, by_hand, rtol=1e-12, atol=0)
    assert torch.equal(predicted, head[logits[:, head].argmax(1)])


EVALUATION_HEADS = {  # (task j, after task i) → the units task j is evaluated on
    "task": lambda j, i: [2 * j, 2 * j + 1],
    "domain": lambda j, i: [0, 1],
    "class": lambda j, i: list(range(2 * i + 2)),  # every class seen up to task i, whichever task is read
}


@pytest.mark.parametrize("split_type", TYPES)
def test_evaluation_follows_the_types_rule(split_type):
    sequence = synthetic_sequence(split_type)
    model = small_mlp().eval()
    for trained in range(sequence.tasks):
        by_hand, loss_by_hand = [], []
        for task in range(sequence.tasks):
            units = EVALUATION_HEADS[split_type](task, trained)
            assert evaluation_head(sequence, task, trained).tolist() == units
            x, y = sequence.split("test", task)
            with torch.no_grad():
                logits = model(x)[:, units]
            predicted = torch.tensor(units)[logits.argmax(1)]
            by_hand.append(float((predicted == y).double().mean()))
            # the loss over the head's units only: infinite where a label lies outside them (class-incremental,
            # a task not yet trained), else the label's position among them
            if not set(y.tolist()) <= set(units):
                loss_by_hand.append(float("inf"))
                continue
            position = torch.tensor([units.index(int(label)) for label in y])
            loss_by_hand.append(float(-logits.double().log_softmax(1)[range(len(y)), position].mean()))
        scores = evaluate(model, sequence, "test", trained)
        assert scores.accuracy == pytest.approx(by_hand, abs=1e-12)
        assert scores.loss == pytest.approx(loss_by_hand, rel=1e-5)


@pytest.mark.parametrize("split_type", TYPES)
def test_the_type_is_recorded_with_the_run_and_task_records_as_before(split_type):
    recorded = synthetic_sequence(split_type).record()["task_sequence.json"]
    assert [t["classes"] for t in recorded["tasks"]] == [[0, 1], [2, 3], [4, 5]]  # the images' digits
    assert recorded.get("split_type") == (None if split_type == "task" else split_type)
    assert json.loads(json.dumps(recorded)) == recorded  # stored as JSON, read back as written


def test_the_default_type_leaves_existing_cells_hashes_alone():
    resolved = load_config("smoke-split").to_dict()
    assert resolved["data"]["split_type"] == "task"
    before = {**resolved, "data": {k: v for k, v in resolved["data"].items() if k != "split_type"}}
    assert config_hash(resolved) == config_hash(before)
    assert config_hash(load_config("smoke-split-class").to_dict()) != config_hash(before)


@pytest.mark.parametrize("text, message", [
    ('[data]\nsequence = "split"\nsplit_type = "instance"\n',
     "data.split_type = 'instance': choose from task, domain, class"),
    ('[data]\nsplit_type = "class"\n', "data.split_type = 'class' is for data.sequence = 'split'"),
])
def test_a_bad_split_type_is_one_line_exit_2(text, message, tmp_path, untouched_store, capsys):
    protocol = tmp_path / "mine.toml"
    protocol.write_text(text)
    assert main(["run", "--config", str(protocol), "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# --- every estimator against a batch-1 loop of its definition over the same head ---

def sampled_fisher_reference(estimator):
    """fis_sampled's definition for the labels it drew (drawn from the head's softmax: labels of the head)."""
    def reference(model, x, y, head):
        with task_head(model, head):
            drawn = estimator.sample_labels(model, x)
        return fisher_loop(HeadLogits(model, head), x, head_labels(drawn, head))
    return reference


def through_head(loop):
    """A reference loop over the head's logits, the labels as positions in the head."""
    return lambda model, x, y, head: loop(HeadLogits(model, head), x, head_labels(y, head))


PER_SAMPLE = {  # estimator (batches of 5 over 12 samples: the last one shorter) → its batch-1 reference
    "fis": (lambda: ESTIMATORS["fis"](batch_size=5), through_head(fisher_loop)),
    "mas": (lambda: ESTIMATORS["mas"](batch_size=5), through_head(mas_loop)),
    "sig": (lambda: ESTIMATORS["sig"](batch_size=5), lambda model, x, y, head: signal_loop(model, x, head)),
    "fis_exact": (lambda: ESTIMATORS["fis_exact"](batch_size=5),
                  lambda model, x, y, head: true_fisher_loop(HeadLogits(model, head), x)),
    "abs_fisher": (lambda: ESTIMATORS["abs_fisher"](batch_size=5),
                   lambda model, x, y, head: absolute_fisher_loop(HeadLogits(model, head), x)),
    "fis_sampled": (lambda: ESTIMATORS["fis_sampled"](seed=4, batch_size=5), None),
    "fis_batched": (lambda: ESTIMATORS["fis_batched"](batch_size=5),
                    lambda model, x, y, head: batched_fisher_loop(HeadLogits(model, head), x, head_labels(y, head), 5)),
    "fis_maxpred": (lambda: ESTIMATORS["fis_maxpred"](batch_size=5), through_head(max_prediction_fisher_loop)),
    "fis_pweighted": (lambda: ESTIMATORS["fis_pweighted"](batch_size=5),
                      through_head(probability_weighted_fisher_loop)),
}


@pytest.mark.parametrize("split_type", TYPES)
@pytest.mark.parametrize("name", list(PER_SAMPLE))
def test_estimator_equals_its_batch1_loop_over_the_head(name, split_type):
    """What the loop computes — the estimator inside task_head on the task's importance samples — against its
    definition with the softmax over the head's logits written out (float64, 1e-6 relative); the output units
    outside the head get exactly 0, SIG included."""
    sequence = synthetic_sequence(split_type)
    model = small_mlp().eval()
    x, y = sequence.split("importance", TASK)
    head = sequence.classes(TASK)
    make, reference = PER_SAMPLE[name]
    estimator = make()
    reference = reference or sampled_fisher_reference(estimator)
    with task_head(model, head):
        fast = estimator.importance(model, x, y)
    assert_same(fast, reference(model, x, y, head), rtol=1e-6)
    outside = [c for c in range(10) if c not in head.tolist()]
    assert not fast["fc3.weight"][outside].any() and not fast["fc3.bias"][outside].any()


@pytest.mark.parametrize("split_type", TYPES)
def test_si_and_sos_in_training_through_the_head_equal_a_hand_written_loop(split_type):
    """SI's path integral and SOS's squared gradients of the loss over the head, from the experiment's training
    step inside task_head, against a plain loop that trains on the head's logits itself (float64)."""
    sequence = synthetic_sequence(split_type, images=400)
    x, y = sequence.split("train", TASK)
    head = sequence.classes(TASK)
    trainee, config = cell_alone((6, 5), {"x": x, "y": y})
    model = trainee.model.double()
    reference = copy.deepcopy(model)
    si, sos = SynapticIntelligence(xi=0.1), RunningSquaredGradients()
    trainee.observers = [si, sos]
    for observer in trainee.observers:
        observer.begin_task(model)
    with task_head(model, head):
        train_alone(trainee, config)
    fast_si, fast_sos = si.importance(model, x, y), sos.importance(model, x, y)

    params = list(reference.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    start = [p.detach().clone() for p in params]
    path = [torch.zeros_like(p) for p in params]
    squares = [torch.zeros_like(p) for p in params]
    positions, steps = head_labels(y, head), 0
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))  # train_alone's batch order
    for s in range(0, len(x), config.training.batch_size):
        idx = order[s:s + config.training.batch_size]
        optimizer.zero_grad()
        F.cross_entropy(reference(x[idx])[:, head], positions[idx]).backward()
        before = [p.detach().clone() for p in params]
        optimizer.step()
        for w, sq, p, b in zip(path, squares, params, before):
            w -= p.grad * (p.detach() - b)
            sq += p.grad.square()
        steps += 1
    names = [name for name, _ in reference.named_parameters()]
    slow_si = {n: w / ((p.detach() - s0).square() + 0.1) for n, w, p, s0 in zip(names, path, params, start)}
    slow_sos = {n: sq / steps for n, sq in zip(names, squares)}
    for fast, slow in ((fast_si, slow_si), (fast_sos, slow_sos)):
        for k in slow:
            assert slow[k].abs().max() > 0
            assert relative_error(fast[k], slow[k]) <= 1e-6, k


# --- class-incremental forgetting, measured ---

@pytest.mark.slow
def test_class_incremental_none_forgets_old_tasks_entirely(mnist):
    """Without a penalty, class-IL training on task i's two digits drives their logits above every older class's
    (the softmax over all seen classes rewards nothing else): after task i ≥ 1 the older tasks' images are
    classified as task i's digits, accuracy ≈ 0 on them — below the 1/(2i+2) of guessing among the seen classes —
    while task i itself is learnt. Task-IL, the same training with each task's own head, keeps them above chance."""
    config = load_config("smoke-split-class")
    # the smoke protocol's 2 steps a task learn no task: 100 steps (batches of 10, 5 epochs) do; no observers
    config = replace(config, training=replace(config.training, batch_size=10, epochs=5),
                     estimators=replace(config.estimators, observe=()))
    splits = {"mnist": make_splits(config.data, mnist)}
    accuracies = {}
    for split_type in ("class", "task"):
        data = replace(config.data, split_type=split_type)
        sequence = make_task_sequence(data, splits, seed=0)
        accuracies[split_type] = [r.test_accuracy for r in run_sequence(replace(config, data=data), "none", 0.0, 0,
                                                                        sequence)]
    class_il, task_il = accuracies["class"], accuracies["task"]
    for i in range(1, config.data.tasks):
        assert class_il[i][i] > 0.9, class_il  # the new task is learnt
        for j in range(i):
            assert class_il[i][j] < 0.05, class_il  # measured: 0.0 (seeds 0, 1, 2)
            assert task_il[i][j] > 0.6, task_il  # measured ≥ 0.77 (seeds 0, 1, 2): told apart within the pair


@pytest.mark.slow
def test_training_by_iterations_takes_that_many_steps(mnist):
    # per task: as many passes over its shuffled images as 25 steps take, the last cut short
    config = load_config("smoke-split")
    # (with the Adam state handed on after the last task, whose step count is every step the cell took)
    config = replace(config, training=replace(config.training, iterations=25, adam_state="carried"))
    sequence = make_task_sequence(config.data, {"mnist": make_splits(config.data, mnist)}, seed=0)
    for task, result in enumerate(run_sequence(config, "mas", 1.0, 0, sequence)):
        steps_per_pass = -(-len(sequence.split("train", task)[0]) // config.training.batch_size)
        assert len(result.epoch_losses) == -(-25 // steps_per_pass) > config.training.epochs
    assert float(result.adam_state["fc1.weight.step"]) == 25 * sequence.tasks
