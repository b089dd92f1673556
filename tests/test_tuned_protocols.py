"""Every shipped `*-tuned.toml` says where its studies are (results/<folder>/optuna.journal): its λ must be each
study's best λ (to the 4 significant digits the file gives), and the trial counts its comments state must be the
study's. Everything but λ must be its base protocol's, and it must set λ for every driver its base does."""

import re
import shutil
from pathlib import Path

import optuna
import pytest

from benchmark.config import load_config
from benchmark.tuning import open_storage, trial_counts

ROOT = Path(__file__).resolve().parents[1]
TUNED = sorted((ROOT / "benchmark" / "protocols").glob("*-tuned.toml"))
# a penalty line: lambda.<driver> = <λ>   # <complete> / <pruned> / <failed>, …
COUNTS = re.compile(r"^lambda\.(\S+)\s*=\s*\S+\s*#\s*(\d+) / (\d+) / (\d+)", re.M)


def test_there_are_tuned_protocols():
    assert {p.stem for p in TUNED} >= {"paper-tuned", "conv-quick-tuned", "split-quick-tuned",
                                       "split-quick-domain-tuned", "split-quick-class-tuned", "rotated-quick-tuned"}


@pytest.mark.parametrize("path", TUNED, ids=lambda p: p.stem)
def test_a_tuned_protocols_lambdas_are_its_studies_best(path, tmp_path):
    text = path.read_text()
    (journal,) = set(re.findall(r"results/[\w-]+/optuna\.journal", text))
    base = path.stem.removesuffix("-tuned")
    shutil.copy(ROOT / journal, tmp_path / "optuna.journal")  # reading must not touch the published file
    storage = open_storage(str(tmp_path / "optuna.journal"), create=False)
    lambdas = load_config(path.stem).penalty.lambda_
    stated = {driver: tuple(map(int, counts)) for driver, *counts in COUNTS.findall(text)}
    assert set(stated) == set(lambdas)
    for driver, lam in lambdas.items():
        study = optuna.load_study(study_name=f"lambda-{driver}-{base}", storage=storage)
        assert float(f"{study.best_params['lambda']:.4g}") == pytest.approx(lam, rel=1e-12), driver
        counts = trial_counts(study)
        assert stated[driver] == (counts["complete"], counts["pruned"], counts["failed"]), driver


@pytest.mark.parametrize("path", TUNED, ids=lambda p: p.stem)
def test_a_tuned_protocol_differs_from_its_base_only_in_lambda(path):
    tuned, base = load_config(path.stem).to_dict(), load_config(path.stem.removesuffix("-tuned")).to_dict()
    assert tuned["penalty"]["lambda"].keys() >= base["penalty"]["lambda"].keys()  # paper-tuned adds a control
    for section in tuned.keys() - {"protocol", "penalty"}:
        assert tuned[section] == base[section], section
