"""The one protocol every importance estimator follows.

The training loop calls, for every task:
    begin_task(model)                      before the first step of the task
    observe_step(task_grads, total_grads, step_change)   after every optimiser step (only if observes_steps);
                                           step_change = θ after the step − θ before it
    importance(model, x, y) -> {param name: tensor}        after the task; the task's own importance

Importances are returned per task; accumulating them over tasks is the experiment's job, not the estimator's.
"""

from torch import Tensor, nn


class Estimator:
    name: str = ""
    observes_steps: bool = False

    def begin_task(self, model: nn.Module) -> None:
        pass

    def observe_step(self, task_grads: list[Tensor], total_grads: list[Tensor], step_change: list[Tensor]) -> None:
        pass

    def importance(self, model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError
