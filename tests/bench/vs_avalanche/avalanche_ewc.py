"""Avalanche's EWC on the protocol of pmnist3.toml, the whole training in one process, for time_both.py.

Run with a Python that has avalanche-lib (its own virtual environment: `pip install avalanche-lib`). Evaluation keeps
to what this suite computes too: accuracy on every task's test set after each task, no loggers.
"""

import argparse

import torch
from avalanche.benchmarks.classic import PermutedMNIST
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import SimpleMLP
from avalanche.training import EWC
from avalanche.training.plugins import EvaluationPlugin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True, help="folder holding MNIST/raw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tasks = PermutedMNIST(n_experiences=3, seed=args.seed, dataset_root=args.data_dir)
    model = SimpleMLP(num_classes=10, hidden_size=256)
    strategy = EWC(model, torch.optim.SGD(model.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss(),
                   ewc_lambda=0.4, mode="separate", train_epochs=10, train_mb_size=128, eval_mb_size=1000,
                   device="cpu", evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]))
    for experience in tasks.train_stream:
        strategy.train(experience)
        metrics = strategy.eval(tasks.test_stream)
    accuracy = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Stream"))
    print(f"ACC {accuracy:.4f}")


if __name__ == "__main__":
    main()
