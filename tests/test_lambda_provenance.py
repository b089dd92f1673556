"""`run` says which λ each driver uses and where it came from (benchmark/lambdas.py), before the first cell."""

from pathlib import Path

import optuna
import pytest

from benchmark.cli import main
from benchmark.tuning import LAMBDA_RANGE, open_storage
from tests.conftest import DATA_DIR


def make_study(storage_path, driver: str, complete: int, best_lambda: float = 7.0, best_value: float = 0.9):
    """A real Optuna study in a journal file, with `complete` finished trials, the best at best_lambda."""
    study = optuna.create_study(study_name=f"lambda-{driver}-smoke", storage=open_storage(str(storage_path)),
                                direction="maximize")
    distribution = optuna.distributions.FloatDistribution(*LAMBDA_RANGE, log=True)
    for k in range(complete):
        lam, value = (best_lambda, best_value) if k == 0 else (1.0 + k, best_value - 0.1)
        study.add_trial(optuna.trial.create_trial(params={"lambda": lam}, distributions={"lambda": distribution},
                                                  value=value))


def run(capsys, store_uri, storage, *extra):
    code = main(["run", "--protocol", "smoke", "--tracking-uri", store_uri, "--storage", str(storage),
                 "--data-dir", DATA_DIR, *extra])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if not line.startswith("20")]  # MLflow's own log lines


@pytest.mark.slow
def test_protocol_config_file_and_command_line_sources(store_uri, tmp_path, capsys):
    code, lines = run(capsys, store_uri, tmp_path / "none.journal", "--drivers", "none,mas,sig", "--lambda", "sig=3")
    assert code == 0
    assert lines[:2] == ["mas: λ 4.5 (protocol smoke)", "sig: λ 3 (--lambda)"]
    mine = tmp_path / "mine.toml"
    mine.write_text((Path(__file__).parents[1] / "benchmark/protocols/smoke.toml").read_text())
    code = main(["run", "--config", str(mine), "--drivers", "fis", "--tracking-uri", store_uri,
                 "--storage", str(tmp_path / "none.journal"), "--data-dir", DATA_DIR])
    assert code == 0 and "fis: λ 41 (config file mine.toml)" in capsys.readouterr().err


def test_a_study_above_the_threshold_is_used_and_said(store_uri, tmp_path, capsys):
    storage = tmp_path / "optuna.journal"
    make_study(storage, "mas", complete=10, best_lambda=25.57, best_value=0.9333)
    code, lines = run(capsys, store_uri, storage, "--drivers", "mas")
    assert code == 0
    assert lines[0] == "mas: λ 25.57 (tuned, study lambda-mas-smoke, 10 complete trials, validation ACC 0.933)"


def test_a_small_study_is_ignored_with_a_note_unless_asked_for(store_uri, tmp_path, capsys):
    storage = tmp_path / "optuna.journal"
    make_study(storage, "mas", complete=2, best_lambda=25.57)
    code, lines = run(capsys, store_uri, storage, "--drivers", "mas")
    assert code == 0
    assert lines[:2] == ["mas: λ 4.5 (protocol smoke)",
                         "note: mas: study lambda-mas-smoke has 2 complete trials (< 10): ignored, the protocol's λ "
                         "is used; --lambda-source tuned uses the study"]
    for extra in (["--lambda-source", "tuned"], ["--min-tuned-trials", "2"]):
        code, lines = run(capsys, store_uri, storage, "--drivers", "mas", *extra)
        assert code == 0 and lines[0].startswith("mas: λ 25.57 (tuned, study lambda-mas-smoke, 2 complete trials")
    code, lines = run(capsys, store_uri, storage, "--drivers", "mas", "--lambda-source", "protocol")
    assert code == 0 and lines[0] == "mas: λ 4.5 (protocol smoke)" and not any("note" in x for x in lines)


def test_protocol_source_never_takes_a_study_even_a_large_one(store_uri, tmp_path, capsys):
    storage = tmp_path / "optuna.journal"
    make_study(storage, "sig", complete=12)
    code, lines = run(capsys, store_uri, storage, "--drivers", "sig", "--lambda-source", "protocol")
    assert code == 0 and lines[0] == "sig: λ 0.1 (protocol smoke)"


def test_a_driver_the_protocol_has_no_lambda_for_falls_back_on_a_small_study(store_uri, tmp_path, capsys):
    storage = tmp_path / "optuna.journal"
    make_study(storage, "uniform", complete=1, best_lambda=0.5)
    code, lines = run(capsys, store_uri, storage, "--drivers", "uniform")
    assert code == 0
    assert lines[0].startswith("uniform: λ 0.5 (tuned, study lambda-uniform-smoke, 1 complete trial,")
    assert "note: uniform: the protocol has no λ, so the small study lambda-uniform-smoke is used" in lines


@pytest.mark.parametrize("extra, message", [
    (["--drivers", "mas", "--lambda-source", "tuned"],
     "no λ for driver 'mas': no study lambda-mas-smoke with a complete trial (--lambda-source tuned)"),
    (["--drivers", "uniform", "--lambda-source", "protocol"],
     "no λ for driver 'uniform': none in the protocol (--lambda-source protocol)"),
    (["--lambda-source", "best"], "argument --lambda-source: invalid choice: 'best'"),
    (["--min-tuned-trials", "0"], "argument --min-tuned-trials: must be ≥ 1, not 0"),
])
def test_bad_lambda_source_is_one_line_exit_2(untouched_store, tmp_path, capsys, extra, message):
    code = main(["run", "--protocol", "smoke", "--tracking-uri", untouched_store, "--storage",
                 str(tmp_path / "none.journal"), "--data-dir", DATA_DIR, *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
