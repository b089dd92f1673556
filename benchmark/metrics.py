"""Continual-learning measures over the accuracy matrix R, R[i, j] = accuracy on task j after training task i.

ACC and BWT follow Lopez-Paz & Ranzato (GEM, 2017); forgetting follows Chaudhry et al. (2018), with the
maximum taken over the accuracies a task had after it was learned (l ≥ j).
"""

import numpy as np


def average_accuracy(R: np.ndarray, after_task: int | None = None) -> float:
    """Mean accuracy over the tasks seen so far, after task `after_task` (default: the last)."""
    i = len(R) - 1 if after_task is None else after_task
    return float(np.mean(R[i, : i + 1]))


def backward_transfer(R: np.ndarray) -> float:
    """mean_{j < T-1} R[T-1, j] − R[j, j]; negative means forgetting."""
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forgetting(R: np.ndarray) -> float:
    """mean_{j < T-1} (max_{j ≤ l < T-1} R[l, j]) − R[T-1, j]."""
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[j:T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))
