import numpy as np
import pytest

from benchmark.metrics import average_accuracy, backward_transfer, forgetting

# R[i, j]: accuracy on task j after training task i
R = np.array([
    [0.9, 0.1, 0.1],
    [0.7, 0.95, 0.1],
    [0.6, 0.8, 0.9],
])


def test_average_accuracy_over_seen_tasks():
    assert average_accuracy(R) == pytest.approx((0.6 + 0.8 + 0.9) / 3)
    assert average_accuracy(R, after_task=1) == pytest.approx((0.7 + 0.95) / 2)
    assert average_accuracy(R, after_task=0) == pytest.approx(0.9)


def test_backward_transfer():
    assert backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.8 - 0.95)) / 2)


def test_forgetting_uses_best_accuracy_after_learning():
    R2 = R.copy()
    R2[1, 0] = 0.97  # task 0 got better after task 1: forgetting counts from the best
    assert forgetting(R2) == pytest.approx(((0.97 - 0.6) + (0.95 - 0.8)) / 2)
    # accuracies on a task before it was learned do not count as "earlier accuracy"
    R3 = R.copy()
    R3[0, 1] = 0.99
    assert forgetting(R3) == pytest.approx(forgetting(R))


def test_single_task_has_no_transfer():
    assert backward_transfer(R[:1, :1]) == 0.0
    assert forgetting(R[:1, :1]) == 0.0
