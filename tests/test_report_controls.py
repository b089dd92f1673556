"""The report's Controls section and sweeps of two protocols reported together, on real smoke sweeps in
a real MLflow store: the paired differences against the runs' own accuracy matrices, the per-protocol verdicts
against the reports of each sweep alone."""

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.cli import main
from tests.conftest import DATA_DIR
from tests.test_report import markdown_tables
from tracking import Store

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's

CONTROLS = ["shuffled-mas", "layermean-mas", "uniform"]


@pytest.fixture(scope="module")
def stores(initialised_store, tmp_path_factory):
    """One store: a smoke sweep of mas and its controls, and a sweep of mas and shuffled-mas under a second
    protocol (smoke with two epochs a task); the ids of both sweeps."""
    folder = tmp_path_factory.mktemp("controls")
    shutil.copy(initialised_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert main(["run", "--protocol", "smoke", "--drivers", ",".join(["mas", *CONTROLS]), "--seeds", "2",
                 "--lambda", "uniform=1", "--tracking-uri", uri, "--data-dir", DATA_DIR]) == 0
    longer = folder / "smoke2.toml"
    longer.write_text((Path(__file__).parents[1] / "benchmark/protocols/smoke.toml").read_text()
                      .replace("epochs = 1", "epochs = 2"))
    assert main(["run", "--config", str(longer), "--drivers", "mas,shuffled-mas", "--seeds", "2",
                 "--tracking-uri", uri, "--data-dir", DATA_DIR]) == 0
    store = Store(uri)
    (smoke,), (smoke2,) = (store.find_runs(name, kind="sweep") for name in ("pmnist-smoke", "pmnist-smoke2"))
    return uri, smoke.id, smoke2.id


def report_on(uri, out, *sweeps) -> Path:
    assert main(["report", *[a for s in sweeps for a in ("--sweep", s)], "--out", str(out), "--tracking-uri", uri]) == 0
    return out


def acc_by_seed(uri, experiment, driver, tmp_path) -> dict[int, float]:
    store = Store(uri)
    result = {}
    for run in store.find_runs(experiment, kind="cell", driver=driver):
        matrix = pd.read_csv(store.download(run.id, "accuracy_matrix.csv", tmp_path / run.id))
        result[int(run.tags["seed"])] = matrix.drop(columns="after_task").to_numpy()[-1].mean()
    return result


def test_controls_side_by_side_with_paired_differences(stores, tmp_path):
    uri, smoke, _ = stores
    out = report_on(uri, tmp_path / "report", smoke)
    table = pd.read_csv(out / "controls.csv")
    mas = acc_by_seed(uri, "pmnist-smoke", "mas", tmp_path)
    readme = (out / "README.md").read_text()
    shown = markdown_tables(readme.split("## Controls")[1])[0].set_index("driver")
    assert list(shown.index) == ["mas", *CONTROLS]
    assert shown.loc["mas", "ACC − mas (paired)"] == "–"
    for control in CONTROLS:
        mine = acc_by_seed(uri, "pmnist-smoke", control, tmp_path)
        differences = [mine[seed] - mas[seed] for seed in (0, 1)]
        acc = table[(table.driver == control) & (table.measure == "ACC")]
        (row,) = acc[acc.quantity == "minus mas, paired by seed"].to_dict("records")
        low, high = stats.t.interval(0.95, 1, loc=np.mean(differences), scale=stats.sem(differences))
        assert (row["mean"], row["ci_low"], row["ci_high"], row["n"]) == (pytest.approx(np.mean(differences)),
                                                                         pytest.approx(low), pytest.approx(high), 2)
        assert acc[acc.quantity == "value"]["mean"].item() == pytest.approx(np.mean(list(mine.values())))
        expected = f"{100 * np.mean(differences):.2f} (n < 3)"
        assert shown.loc[control, "ACC − mas (paired)"] == expected
        assert f"- {control} − mas: {expected}" in readme.split("## Forgetting")[0]  # the summary says the same


def test_two_protocols_judged_side_by_side(stores, tmp_path):
    """Every number per protocol (none pooled over both), each claim's verdict as the protocol's own report says
    it, and each driver both ran compared paired by seed."""
    uri, smoke, smoke2 = stores
    both = report_on(uri, tmp_path / "both", smoke, smoke2)
    summary = (both / "README.md").read_text().split("## Forgetting")[0]
    assert "Sweeps of 2 protocols (smoke, smoke2)" in summary
    sensitivity, verdicts = (table.set_index("claim") for table in markdown_tables(summary)[1:3])
    assert list(sensitivity.columns) == list(verdicts.columns) == ["smoke", "smoke2"]
    forgetting = pd.read_csv(both / "forgetting.csv").set_index(["protocol", "driver"])
    for protocol, sweep in (("smoke", smoke), ("smoke2", smoke2)):
        alone = (report_on(uri, tmp_path / protocol, sweep) / "README.md").read_text().split("## Forgetting")[0]
        lines = dict(re.findall(r"^- (.+?): (.+)$", alone.split("On this report's measure")[1], re.M))
        assert list(verdicts.index) == list(lines)
        for claim, line in lines.items():
            assert verdicts.loc[claim, protocol] == line, (protocol, claim)
        acc = acc_by_seed(uri, f"pmnist-{protocol}", "mas", tmp_path)
        assert markdown_tables(summary)[0].set_index("driver").loc["mas", f"ACC % ({protocol})"] == \
            f"{100 * np.mean(list(acc.values())):.2f} (n < 3)"
        assert forgetting.loc[(protocol, "mas"), "n"] == 2
    controls = pd.read_csv(both / "controls.csv")
    assert set(zip(controls.protocol, controls.driver)) == {("smoke", d) for d in ["mas", *CONTROLS]} | {
        ("smoke2", "mas"), ("smoke2", "shuffled-mas")}
    assert re.search(r"^mas \(protocol smoke2\):$", (both / "README.md").read_text(), re.M)

    differences = pd.read_csv(both / "paired_differences.csv")
    assert set(differences.driver) == {"mas", "shuffled-mas"}
    for driver in ("mas", "shuffled-mas"):
        first, second = (acc_by_seed(uri, f"pmnist-{p}", driver, tmp_path) for p in ("smoke", "smoke2"))
        paired = [second[seed] - first[seed] for seed in (0, 1)]
        (row,) = differences[(differences.driver == driver) & (differences.measure == "ACC")].to_dict("records")
        low, high = stats.t.interval(0.95, 1, loc=np.mean(paired), scale=stats.sem(paired))
        assert (row["protocol A"], row["protocol B"], row["n"]) == ("smoke", "smoke2", 2)
        assert (row["mean"], row["ci_low"], row["ci_high"]) == (pytest.approx(np.mean(paired)), pytest.approx(low),
                                                                pytest.approx(high))
        assert f"- {driver}: smoke2 − smoke: {100 * np.mean(paired):.2f} (n < 3) over 2 seeds" in summary


def test_repeated_experiment_reports_each_ones_latest_sweep_side_by_side(stores, tmp_path, capsys):
    uri, smoke, smoke2 = stores
    by_sweep = (report_on(uri, tmp_path / "by-sweep", smoke, smoke2) / "README.md").read_text()
    out = tmp_path / "by-experiment"
    assert main(["report", "--experiment", "pmnist-smoke", "--experiment", "pmnist-smoke2", "--out", str(out),
                 "--tracking-uri", uri]) == 0
    err = capsys.readouterr().err
    assert f"of experiment pmnist-smoke: {smoke} " in err and f"of experiment pmnist-smoke2: {smoke2} " in err
    by_experiment = (out / "README.md").read_text()
    summary = by_experiment.split("## Forgetting")[0]
    assert summary == by_sweep.split("## Forgetting")[0].replace(str(tmp_path / "by-sweep"), str(out))


def test_a_protocol_without_the_lead_driver_gets_no_claims_column(stores, tmp_path):
    """Reported beside another protocol, a sweep without mas (here: none alone) shows its ACC, and no claims."""
    uri, smoke, _ = stores
    other = tmp_path / "smoke3.toml"
    other.write_text((Path(__file__).parents[1] / "benchmark/protocols/smoke.toml").read_text())
    assert main(["run", "--config", str(other), "--drivers", "none", "--seeds", "1", "--tracking-uri", uri,
                 "--data-dir", DATA_DIR]) == 0
    (smoke3,) = Store(uri).find_runs("pmnist-smoke3", kind="sweep")
    summary = (report_on(uri, tmp_path / "both", smoke, smoke3.id) / "README.md").read_text().split("## Forgetting")[0]
    acc, verdicts = markdown_tables(summary)[:2]
    assert list(acc.columns) == ["driver", "ACC % (smoke)", "ACC % (smoke3)"]
    assert acc.set_index("driver").loc["mas", "ACC % (smoke3)"] == "–"
    assert list(verdicts.columns) == ["claim", "smoke"]
