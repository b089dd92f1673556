"""What a Ray task left RUNNING — its worker dead, or the task cancelled — found by the task's token and ended."""

from tracking import Store

RETRIED = "Ray worker died; retried"


def mark_left_running(store: Store, experiment: str, token: str, reason: str, status: str = "FAILED",
                      storage=None) -> None:
    """The runs a task left RUNNING: `status`, with the reason; with `storage`, a trial's Optuna trial FAIL as
    well, so that the study never counts it."""
    for left in store.end_left_running(experiment, status, reason, ray_task=token):
        if storage is not None and left.tags.get("kind") == "trial":
            fail_trial(storage, left.tags["study"], int(left.tags["trial"]))


def fail_trial(storage, study: str, number: int) -> None:
    from optuna.trial import TrialState

    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study), number)
    if storage.get_trial(trial_id).state == TrialState.RUNNING:  # it may have ended before its MLflow run did
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
