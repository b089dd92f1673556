"""Which λ each driver of a run uses, and where it came from — said on stderr before the first cell.

Sources, the first that has a λ for the driver wins:
    --lambda                    always
    tuned                       the best λ of the driver's Optuna study (tune), with --lambda-source auto
                                only from a study with at least --min-tuned-trials complete trials
    protocol                    the protocol's (or --config file's) [penalty] lambda
    the controlled estimator's  shuffled-<est> and layermean-<est> keep <est>'s per-tensor sums of Ω, so without
                                a λ of their own they take <est>'s, whatever its source: a fair comparison
    tuned, small study          auto only: a study below the threshold, where nothing above has a λ
--lambda-source tuned takes every penalised driver's λ from its study (any trial count) and fails where there
is none; --lambda-source protocol never reads the Optuna storage.

Why a threshold (MIN_TUNED_TRIALS = 10): the TPE sampler draws its first 5 trials at random, so a study of fewer
than 10 complete trials has barely begun to search; such a study is usually a test of `tune`, not a result.
"""

import dataclasses
from dataclasses import dataclass

from benchmark.config import Config
from benchmark.errors import UsageError
from estimators.names import base_estimator

MIN_TUNED_TRIALS = 10
SOURCES = ("auto", "tuned", "protocol")


@dataclass(frozen=True)
class Lambda:
    value: float
    source: str  # "default" (a shipped protocol), "config" (your --config file), "tuned" or "user" (--lambda)
    study: str = ""  # the Optuna study a tuned λ comes from
    trials: int = 0  # that study's complete trials
    validation_acc: float = float("nan")  # that study's best value
    of: str = ""  # the estimator whose λ a control took


def provenance(driver: str, lam: Lambda, protocol: str) -> str:
    """'mas: λ 25.57 (tuned, study lambda-mas-paper, 12 complete trials, validation ACC 0.933)'."""
    if lam.source == "tuned":
        origin = (f"tuned, study {lam.study}, {lam.trials} complete trial{'s' if lam.trials != 1 else ''}, "
                  f"validation ACC {lam.validation_acc:.3f}")
    else:
        origin = {"default": f"protocol {protocol}", "config": f"config file {protocol}.toml",
                  "user": "--lambda"}[lam.source]
    inherited = f"{lam.of}'s λ, " if lam.of else ""
    return f"{driver}: λ {lam.value:.4g} ({inherited}{origin})"


def resolve_lambdas(config: Config, drivers: list[str], user: dict[str, float], source: str, storage,
                    from_file: bool = False,
                    min_tuned_trials: int = MIN_TUNED_TRIALS) -> tuple[dict[str, Lambda], list[str]]:
    """λ for every penalised driver, and notes to show beside the provenance lines (small studies ignored or
    used). storage: the Optuna storage, None where there is none or source is "protocol"; from_file: the
    protocol is the user's --config file. A driver without a λ is a UsageError naming the ways to give one."""
    from benchmark.tuning import study_name, tuned_study

    notes: list[str] = []

    def tuned(driver: str) -> Lambda | None:
        found = tuned_study(storage, driver, config.protocol, config.data.dataset) if storage is not None else None
        return None if found is None else Lambda(found.best_lambda, "tuned", found.study, found.complete,
                                                  found.best_value)

    def own(driver: str) -> Lambda | None:
        if driver in user:
            return Lambda(user[driver], "user")
        study = tuned(driver) if source != "protocol" else None
        if source == "tuned" or (study is not None and study.trials >= min_tuned_trials):
            return study
        in_protocol = config.penalty.lambda_.get(driver)
        if in_protocol is None:
            return None
        if study is not None:
            notes.append(f"{driver}: study {study.study} has {study.trials} complete trial"
                         f"{'s' if study.trials != 1 else ''} (< {min_tuned_trials}): ignored, the protocol's λ "
                         "is used; --lambda-source tuned uses the study")
        return Lambda(in_protocol, "config" if from_file else "default")

    lambdas = {}
    for driver in drivers:
        if driver == "none":
            continue
        lam = own(driver)
        base = base_estimator(driver)
        if lam is None and base is not None:
            inherited = own(base)
            lam = dataclasses.replace(inherited, of=base) if inherited else None
        if lam is None and source == "auto":
            lam = tuned(driver)  # a small study where the protocol has no λ: better than none, and said so
            if lam is not None:
                notes.append(f"{driver}: the protocol has no λ, so the small study {lam.study} is used")
        if lam is None:
            why = {"tuned": f"no study {study_name(driver, config.protocol, config.data.dataset)} with a complete "
                            "trial (--lambda-source tuned)",
                   "protocol": "none in the protocol (--lambda-source protocol)"}.get(source, "none found")
            raise UsageError(f"no λ for driver {driver!r}: {why}; tune it (python -m benchmark tune --driver "
                             f"{driver}), add it to [penalty] lambda or pass --lambda")
        lambdas[driver] = lam
    return lambdas, list(dict.fromkeys(notes))  # a control and its estimator may note the same study
