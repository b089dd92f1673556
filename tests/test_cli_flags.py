"""The selection flags of `run`, `tune` and `report`, each checked for what it does to the runs and files, not only
that it parses: a flag that were silently ignored would fail here."""

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from benchmark.cli import main, parse_drivers
from benchmark.config import TUNING_FIRST_SEED
from benchmark.drivers import PAPER_DRIVERS, estimator_drivers
from benchmark.scenario import draw_permutations
from tests.conftest import DATA_DIR
from tracking import Store


def test_paper_and_all_name_their_driver_sets():
    assert parse_drivers("paper") == ["none", "fis", "mas", "si", "sig"] == list(PAPER_DRIVERS)
    every = parse_drivers("all")
    assert every == list(estimator_drivers()) and every[:5] == list(PAPER_DRIVERS)
    assert {"fis_exact", "fis_sampled", "fis_batched", "abs_fisher", "sos"} <= set(every)
    assert not any(d == "uniform" or "-" in d for d in every)  # controls are asked for by name, never by "all"


@pytest.fixture(scope="module")
def shifted_sweep(initialised_store, tmp_path_factory) -> str:
    """`run` with seeds 3 and 4 and no importances logged: the store's URI."""
    path = tmp_path_factory.mktemp("flags") / "mlflow.db"
    path.write_bytes(initialised_store.read_bytes())
    uri = f"sqlite:///{path}"
    assert main(["run", "--protocol", "smoke", "--drivers", "mas", "--seeds", "2", "--first-seed", "3",
                 "--log-importances", "none", "--tracking-uri", uri, "--data-dir", DATA_DIR]) == 0
    return uri


def cells(uri: str) -> dict[int, Path]:
    """Each cell's seed → its downloaded artifact folder."""
    client = MlflowClient(uri)
    return {int(r.tags["seed"]): Path(client.download_artifacts(r.id, ""))
            for r in Store(uri).find_runs("pmnist-smoke", kind="cell")}


@pytest.mark.slow  # trains through the CLI
def test_first_seed_shifts_the_seeds_and_what_they_draw(shifted_sweep):
    folders = cells(shifted_sweep)
    assert sorted(folders) == [3, 4]
    for seed, root in folders.items():
        assert json.loads((root / "config.json").read_text())["seed"] == seed
        np.testing.assert_array_equal(np.load(root / "permutations.npy", allow_pickle=False),
                                      draw_permutations(3, seed))


@pytest.mark.slow  # trains through the CLI
def test_log_importances_none_keeps_the_states_and_no_importance(shifted_sweep):
    for root in cells(shifted_sweep).values():
        files = {str(p.relative_to(root)) for p in root.rglob("*.safetensors")}
        assert files == {f"tasks/task_{t:02d}/state_dict.safetensors" for t in range(3)}
        assert (root / "correlations.csv").exists()  # computed in the run, whatever is logged


def test_run_refuses_the_tuning_seeds(untouched_store, capsys):
    assert main(["run", "--protocol", "smoke", "--first-seed", str(TUNING_FIRST_SEED - 1), "--seeds", "2",
                 "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run reports seeds below {TUNING_FIRST_SEED}, not {TUNING_FIRST_SEED}" in err


@pytest.mark.slow  # trains through the CLI
def test_tuning_seeds_are_the_trials_seeds_and_never_a_reported_one(tmp_path, store_uri):
    assert main(["tune", "--driver", "mas", "--protocol", "smoke", "--trials", "1", "--tuning-seeds", "2",
                 "--storage", str(tmp_path / "optuna.journal"), "--tracking-uri", store_uri,
                 "--data-dir", DATA_DIR]) == 0
    (trial,) = Store(store_uri).find_runs("pmnist-smoke-tuning", kind="trial")
    seeds = [int(s) for s in MlflowClient(store_uri).get_run(trial.id).data.params["seeds"].split(",")]
    assert seeds == [TUNING_FIRST_SEED, TUNING_FIRST_SEED + 1]


@pytest.mark.slow  # trains through the CLI
def test_report_param_and_kind_choose_the_correlations_judged(shifted_sweep, tmp_path):
    def claims(*flags):
        out = tmp_path / "-".join(flags or ("default",))
        assert main(["report", "--tracking-uri", shifted_sweep, "--experiment", "pmnist-smoke", "--out", str(out),
                     *flags]) == 0
        return html.unescape((out / "index.html").read_text()), pd.read_csv(out / "claims.csv")

    default_text, default_claims = claims()
    text, chosen = claims("--param", "bias", "--kind", "increment")
    assert "accumulated importances over each layer's weight entries" in default_text
    assert "increment importances over each layer's bias entries" in text
    assert "increment importances over each layer's bias entries" not in default_text
    assert not chosen.fillna("").equals(default_claims.fillna(""))  # other correlations, other verdict rows
