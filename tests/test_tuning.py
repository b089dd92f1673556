"""`python -m benchmark tune` with real Optuna storages (a journal file; PostgreSQL where one is running) and a
real MLflow store: concurrent workers, pruning of diverged trials, tuned λ picked up by `run`."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from benchmark.cli import main
from benchmark.tuning import open_storage, study_name
from tests.conftest import DATA_DIR
from tracking import Store

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's

POSTGRES_URL = os.environ.get("BENCHMARK_TEST_POSTGRES_URL")  # .ci/run starts a server and sets it


def tune_process(storage: str, uri: str, trials: int, sampler_seed: int) -> subprocess.Popen:
    # two workers run at once: each takes half the cores (torch's threads would otherwise spin against each other)
    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}
    return subprocess.Popen([sys.executable, "-m", "benchmark", "tune", "--driver", "mas", "--protocol", "smoke",
                             "--trials", str(trials), "--storage", storage, "--tracking-uri", uri,
                             "--sampler-seed", str(sampler_seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def two_workers_record_every_trial_once(storage: str, tmp_path: Path, initialised_store: Path) -> None:
    # one MLflow store per worker, as on two machines; the Optuna storage is the one thing they share
    uris = []
    for k in range(2):
        (tmp_path / f"w{k}").mkdir()
        shutil.copy(initialised_store, tmp_path / f"w{k}" / "mlflow.db")
        uris.append(f"sqlite:///{tmp_path / f'w{k}' / 'mlflow.db'}")
    workers = [tune_process(storage, uri, trials=2, sampler_seed=k) for k, uri in enumerate(uris)]
    progress = []
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
        progress.append(err)

    study = optuna.load_study(study_name=study_name("mas", "smoke"), storage=open_storage(storage))
    for err in progress:  # stderr a pipe, not a terminal: a line per finished trial instead of a bar
        lines = re.findall(r"^trial (\d)/2 finished: lambda-mas-smoke trial #(\d), λ (\S+), (.+), \d+\.\d s; "
                           r"best λ \S+ \(\d\.\d{4}\); (.*)$", err, re.M)
        assert [done for done, *_ in lines] == ["1", "2"] and lines[-1][-1] == "all done", err
        for _, number, lam, outcome, _ in lines:
            trial = study.trials[int(number)]
            assert float(lam) == pytest.approx(trial.params["lambda"], rel=1e-3)
            assert outcome.startswith("validation ACC" if trial.state.name == "COMPLETE" else "pruned")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    logged = []
    for uri in uris:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("pmnist-smoke-tuning")
        assert "λ tuning with Optuna" in experiment.tags["mlflow.note.content"]
        for run in client.search_runs([experiment.experiment_id], "tags.kind = 'trial'"):
            logged.append(int(run.data.tags["trial"]))
            trial = study.trials[int(run.data.tags["trial"])]
            assert float(run.data.params["lambda"]) == pytest.approx(trial.params["lambda"])
            assert run.data.tags["trial_state"] == trial.state.name
            assert run.data.tags["optuna_version"] == optuna.__version__
    assert sorted(logged) == [0, 1, 2, 3]


def test_two_workers_share_a_journal_file_study(tmp_path, initialised_store):
    two_workers_record_every_trial_once(str(tmp_path / "optuna.journal"), tmp_path, initialised_store)


@pytest.mark.skipif(not POSTGRES_URL, reason="needs BENCHMARK_TEST_POSTGRES_URL (set by .ci/run)")
def test_two_workers_share_a_postgresql_study(tmp_path, initialised_store):
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    with engine.begin() as connection:  # a clean database: drop what an earlier run left
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    two_workers_record_every_trial_once(POSTGRES_URL, tmp_path, initialised_store)


def test_tuning_records_curves_and_best_lambda_and_run_uses_it(tmp_path, store_uri):
    storage = str(tmp_path / "optuna.journal")
    assert main(["tune", "--driver", "sig", "--protocol", "smoke", "--trials", "2", "--storage", storage,
                 "--tracking-uri", store_uri, "--data-dir", DATA_DIR, "--sampler-seed", "0"]) == 0
    study = optuna.load_study(study_name="lambda-sig-smoke", storage=open_storage(storage))
    best = study.best_params["lambda"]
    assert all(sorted(t.intermediate_values) == [0, 1, 2] for t in study.trials)  # one report per task
    assert 1e-3 <= best <= 1e5

    store = Store(store_uri)
    (parent,) = store.find_runs("pmnist-smoke-tuning", kind="tune")
    assert float(parent.tags["best_lambda"]) == pytest.approx(best)
    assert parent.tags["n_complete"] == "2" and parent.tags["optuna_version"] == optuna.__version__
    trial_runs = store.find_runs("pmnist-smoke-tuning", kind="trial")
    history = MlflowClient(store_uri).get_metric_history(trial_runs[0].id, "val_acc")
    assert [m.step for m in history] == [0, 1, 2]

    # run picks the tuned λ (a 2-trial study: only when asked to); --lambda still wins
    assert main(["run", "--protocol", "smoke", "--drivers", "sig,mas", "--storage", storage, "--lambda-source",
                 "tuned", "--tracking-uri", store_uri, "--data-dir", DATA_DIR, "--lambda", "mas=3"]) == 0
    cells = {r.tags["driver"]: r.tags for r in store.find_runs("pmnist-smoke", kind="cell")}
    assert cells["sig"]["lambda_source"] == "tuned" and cells["sig"]["lambda_study"] == "lambda-sig-smoke"
    assert float(cells["sig"]["lambda"]) == pytest.approx(best)
    assert (cells["mas"]["lambda_source"], cells["mas"]["lambda"]) == ("user", "3.0")


def test_diverging_trials_are_pruned_with_the_reason(tmp_path, store_uri):
    config = tmp_path / "explode.toml"
    config.write_text((Path(__file__).parents[1] / "benchmark/protocols/smoke.toml").read_text()
                      .replace("lr = 0.001", "lr = 1e30"))
    storage = str(tmp_path / "optuna.journal")
    assert main(["tune", "--driver", "mas", "--config", str(config), "--trials", "2", "--storage", storage,
                 "--tracking-uri", store_uri, "--data-dir", DATA_DIR]) == 0
    study = optuna.load_study(study_name="lambda-mas-explode", storage=open_storage(storage))
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all("loss became" in t.user_attrs["failure_reason"] for t in study.trials)
    trials = Store(store_uri).find_runs("pmnist-explode-tuning", kind="trial")
    assert all(r.tags["trial_state"] == "PRUNED" and "diverged" in r.tags["prune_reason"] for r in trials)


def test_show_lists_best_lambda(tmp_path, store_uri, capsys):
    storage = str(tmp_path / "optuna.journal")
    assert main(["tune", "--show", "--storage", storage]) == 0
    assert "no study" in capsys.readouterr().out
    assert not Path(storage).exists()  # looking does not create a storage
    assert main(["tune", "--driver", "fis", "--protocol", "smoke", "--trials", "1", "--storage", storage,
                 "--tracking-uri", store_uri, "--data-dir", DATA_DIR]) == 0
    capsys.readouterr()
    assert main(["tune", "--show", "--storage", storage]) == 0
    assert "lambda-fis-smoke: best λ" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--driver", "mas", "--trials", "0"], "argument --trials: must be ≥ 1, not 0"),
    (["--driver", "ewc"], "unknown driver 'ewc' to tune"),
    (["--driver", "none"], "unknown driver 'none' to tune"),
    ([], "tune needs --driver"),
    (["--driver", "mas", "--lambda-range", "5,1"], "argument --lambda-range: needs 0 < LOW < HIGH < inf"),
    (["--driver", "mas", "--lambda-range", "0,1"], "argument --lambda-range: needs 0 < LOW < HIGH < inf"),
    (["--driver", "mas", "--lambda-range", "1e9"], "argument --lambda-range: '1e9' is not LOW,HIGH"),
    (["--driver", "mas", "--storage", "postgresql://user:secret@127.0.0.1:1/nothing"],
     "cannot open Optuna storage postgresql://user:***@127.0.0.1:1/nothing"),
])
def test_tune_bad_input(args, message, untouched_store, capsys):
    assert main(["tune", *args, "--tracking-uri", untouched_store, "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "secret" not in err, err


def test_interrupted_tuning_fails_the_running_trial_and_resumes_the_study(tmp_path, store_uri):
    import signal
    import time

    storage = str(tmp_path / "optuna.journal")
    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR}
    args = [sys.executable, "-m", "benchmark", "tune", "--driver", "mas", "--protocol", "smoke", "--storage", storage,
            "--tracking-uri", store_uri]
    process = subprocess.Popen([*args, "--trials", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for a finished trial: the next one is then running
        try:
            study = optuna.load_study(study_name="lambda-mas-smoke", storage=open_storage(storage))
            # a trial finished, and the next one has reported a task: the signal lands inside a trial
            if any(t.state.name == "COMPLETE" for t in study.trials) and \
                    any(t.state.name == "RUNNING" and t.intermediate_values for t in study.trials):
                break
        except KeyError:  # the journal exists, the study is not in it yet
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    study = optuna.load_study(study_name="lambda-mas-smoke", storage=open_storage(storage))
    states = [t.state.name for t in study.trials]
    # the interrupted trial becomes FAIL (never counted), the only one, and the last
    assert "RUNNING" not in states and states.count("FAIL") == 1 and states[-1] == "FAIL"
    done = subprocess.run([*args, "--trials", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="lambda-mas-smoke", storage=open_storage(storage))
    assert len(study.trials) == len(states) + 1 and study.trials[-1].state.name in ("COMPLETE", "PRUNED")
    (tune_parent,) = [r for r in Store(store_uri).find_runs("pmnist-smoke-tuning", kind="tune") if r.status == "KILLED"]
    assert tune_parent.tags["n_failed"] == str(states.count("FAIL"))


def test_tuning_never_reads_the_test_split(mnist):
    from benchmark.config import load_config
    from benchmark.loop import run_sequence
    from benchmark.scenario import Split, make_scenario, make_splits

    config = load_config("smoke")
    splits = make_splits(config.data, mnist)
    # test images with no pixels: any evaluation on them would fail with a shape error
    poisoned = Split(x=splits.test.x[:, :0], y=splits.test.y, indices=splits.test.indices)
    scenario = make_scenario(type(splits)(splits.train, splits.validation, splits.importance, poisoned), 3, seed=0)
    results = list(run_sequence(config, "mas", 4.5, 0, scenario, use_test_split=False))
    assert all(r.test_accuracy == [] and len(r.validation_accuracy) == 3 for r in results)


def test_pruner_compares_the_current_value_with_the_median():
    """Running accuracy falls as tasks are added: a trial must be judged on its value now, not its best."""
    from benchmark.tuning import MedianOfCurrentValuesPruner

    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage(),
                                pruner=MedianOfCurrentValuesPruner(n_startup_trials=3, n_warmup_steps=2))
    for final in (0.80, 0.85, 0.90):  # three completed trials, falling from 0.93
        trial = study.ask()
        for step, value in enumerate([0.93, 0.91, 0.88, final]):
            trial.report(value, step)
        study.tell(trial, final)
    trial = study.ask()
    for step, value in enumerate([0.93, 0.90]):
        trial.report(value, step)
        assert not trial.should_prune()  # warm-up: never before step 2
    trial.report(0.87, 2)  # below the median 0.88 at step 2, though its best (0.93) is not
    assert trial.should_prune()
    assert not optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2).prune(study, study.trials[-1])


def test_confirm_reruns_the_best_lambdas_on_the_next_tuning_seed(tmp_path, store_uri, mnist, capsys):
    from benchmark.config import load_config
    from benchmark.scenario import make_splits, make_task_sequence
    from benchmark.tuning import confirmation, validation_objective

    storage = str(tmp_path / "optuna.journal")
    common = ["--protocol", "smoke", "--storage", storage, "--tracking-uri", store_uri, "--data-dir", DATA_DIR]
    assert main(["tune", "--driver", "mas", "--trials", "3", "--sampler-seed", "0", *common]) == 0
    assert main(["tune", "--driver", "mas", "--confirm", "2", *common]) == 0
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="lambda-mas-smoke", storage=open_storage(storage))
    best_two = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)[:2]
    result = confirmation(study)
    assert result.seed == 10001 and result.lambdas == [t.params["lambda"] for t in best_two]
    assert result.study_values == [t.value for t in best_two]
    assert result.confirmed == (result.values[0] >= result.values[1])
    assert f"lambda-mas-smoke: {result.line()}" in printed

    # the recorded value is the validation objective of that λ on seed 10001, not on the study's seed 10000
    config = load_config("smoke")
    splits = make_splits(config.data, mnist)
    for seed, expected in ((10001, result.values[1]), (10000, result.study_values[1])):
        scenario = make_task_sequence(config.data, {"mnist": splits}, seed)
        assert validation_objective(config, "mas", result.lambdas[1], [seed], [scenario],
                                    lambda task, value: None) == pytest.approx(expected, abs=1e-12)

    store = Store(store_uri)
    (parent,) = store.find_runs("pmnist-smoke-tuning", kind="confirm")
    assert parent.status == "FINISHED" and parent.tags["confirmed"] == str(result.confirmed).lower()
    children = store.find_runs("pmnist-smoke-tuning", kind="confirm-lambda")
    assert sorted(float(r.tags["lambda"]) for r in children) == sorted(result.lambdas)
    assert main(["tune", "--show", "--storage", storage]) == 0
    assert f"; {result.line()}" in capsys.readouterr().out


def test_confirm_without_a_study_is_a_usage_error(tmp_path, untouched_store, capsys):
    assert main(["tune", "--driver", "sig", "--protocol", "smoke", "--confirm", "2", "--storage",
                 str(tmp_path / "optuna.journal"), "--tracking-uri", untouched_store, "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study lambda-sig-smoke to confirm" in err, err


@pytest.mark.parametrize("pruning", [True, False])
def test_no_pruning_runs_every_trial_to_the_end(tmp_path, store_uri, pruning):
    """Three recorded trials perfect at every task: the median pruner stops any real trial at the first task it
    may judge; --no-pruning lets it complete."""
    from optuna.distributions import FloatDistribution

    from benchmark.tuning import LAMBDA_RANGE

    storage = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="lambda-mas-smoke", storage=open_storage(storage), direction="maximize")
    for lam in (1.0, 2.0, 3.0):
        study.add_trial(optuna.trial.create_trial(
            params={"lambda": lam}, distributions={"lambda": FloatDistribution(*LAMBDA_RANGE, log=True)}, value=1.0,
            intermediate_values={0: 1.0, 1: 1.0, 2: 1.0}))
    assert main(["tune", "--driver", "mas", "--protocol", "smoke", "--trials", "2", "--storage", storage,
                 "--tracking-uri", store_uri, "--data-dir", DATA_DIR, *([] if pruning else ["--no-pruning"])]) == 0
    study = optuna.load_study(study_name="lambda-mas-smoke", storage=open_storage(storage))
    assert [t.state.name for t in study.trials[3:]] == ["PRUNED" if pruning else "COMPLETE"] * 2
    (parent,) = Store(store_uri).find_runs("pmnist-smoke-tuning", kind="tune")
    assert parent.tags["pruning"] == str(pruning).lower()


def test_lambda_range_bounds_every_trial_and_a_study_keeps_its_range(tmp_path, store_uri, capsys):
    storage = str(tmp_path / "optuna.journal")
    args = ["tune", "--driver", "mas", "--protocol", "smoke", "--storage", storage, "--tracking-uri", store_uri,
            "--data-dir", DATA_DIR, "--no-pruning"]
    assert main([*args, "--trials", "3", "--lambda-range", "1e6,1e7"]) == 0
    study = optuna.load_study(study_name="lambda-mas-smoke", storage=open_storage(storage))
    assert len(study.trials) == 3 and all(1e6 <= t.params["lambda"] <= 1e7 for t in study.trials)
    (parent,) = Store(store_uri).find_runs("pmnist-smoke-tuning", kind="tune")
    assert parent.tags["lambda_range"] == "1e+06,1e+07"
    capsys.readouterr()
    assert main(["tune", "--show", "--storage", storage]) == 0
    assert "over [1e+06, 1e+07]" in capsys.readouterr().out

    assert main([*args, "--trials", "1"]) == 2  # the default range is another search space: refused, nothing run
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study lambda-mas-smoke drew λ from [1e+06, 1e+07]" in err, err
    assert len(optuna.load_study(study_name="lambda-mas-smoke", storage=open_storage(storage)).trials) == 3
