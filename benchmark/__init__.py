"""Permuted-MNIST benchmark of weight-importance estimators (Kutalev, arXiv 2211.17012)."""

__version__ = "0.1.0"
