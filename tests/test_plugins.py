"""Estimator plugins (benchmark/plugins.py): README's "Bring your own" run as written, a protocol file's plugin
as an observer, an installed distribution's entry point, and every bad input."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import tomllib

from benchmark import plugins
from benchmark.cli import main
from benchmark.config import load_config
from benchmark.lambdas import Lambda
from benchmark.sweep import cell_config, config_hash
from tests.conftest import DATA_DIR
from tracking import Store

pytestmark = pytest.mark.slow  # trains through the CLI or a real store: the full suite's, not the fast tier's

ROOT = Path(__file__).parents[1]
SMOKE = (ROOT / "benchmark/protocols/smoke.toml").read_text()


@pytest.fixture(autouse=True)
def no_plugins_between_tests(monkeypatch):
    monkeypatch.setattr(plugins, "_loaded", {})  # in-process loads must not leak into other tests


BRING_YOUR_OWN = ROOT / "docs" / "bring-your-own.md"  # README links to it


def readme_blocks(language: str) -> list[str]:
    section = BRING_YOUR_OWN.read_text()
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def write_readme_modules(folder: Path) -> None:
    for block in readme_blocks("python"):
        name = block.splitlines()[0].removeprefix("# ").strip()
        (folder / name).write_text(block)


def cli(folder: Path, command: list[str], store_uri: str, env_extra: dict | None = None):
    # the user's folder first (python -m puts the working directory on sys.path), then this checkout
    path = os.pathsep.join(p for p in ((env_extra or {}).get("PYTHONPATH"), str(ROOT)) if p)
    env = {**os.environ, "BENCHMARK_DATA_DIR": DATA_DIR, "MLFLOW_TRACKING_URI": store_uri,
           "BENCHMARK_OPTUNA_STORAGE": str(folder / "optuna.journal"), "PYTHONPATH": path}
    return subprocess.run([sys.executable, *command], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


def cells(store_uri: str, experiment: str = "pmnist-smoke") -> dict:
    return {r.tags["driver"]: r for r in Store(store_uri).find_runs(experiment, kind="cell")}


def config_of(store_uri: str, run_id: str, folder: Path) -> dict:
    return json.loads(Store(store_uri).download(run_id, "config.json", folder).read_text())


def test_readme_example_runs_as_written(tmp_path, store_uri):
    write_readme_modules(tmp_path)
    commands = [line for block in readme_blocks("sh") for line in block.splitlines() if line.startswith("python ")]
    assert len(commands) == 2
    for line in commands:
        done = cli(tmp_path, shlex.split(line)[1:], store_uri)
        assert done.returncode == 0, done.stderr
    runs = cells(store_uri)
    assert {d: r.status for d, r in runs.items()} == {"magnitude": "FINISHED", "mas": "FINISHED"}
    config = config_of(store_uri, runs["magnitude"].id, tmp_path / "a")
    assert config["plugins"] == {"magnitude": {"spec": "my_estimators:WeightMagnitude", "distribution": "",
                                               "version": ""}}
    # a driver observes itself beside the protocol's estimators
    correlations = pd.read_csv(Store(store_uri).download(runs["magnitude"].id, "correlations.csv", tmp_path / "b"))
    paired = set(correlations.query("estimator_a == 'magnitude' or estimator_b == 'magnitude'")
                 [["estimator_a", "estimator_b"]].itertuples(index=False))
    observed = tomllib.loads(SMOKE)["estimators"]["observe"]
    others = {a if b == "magnitude" else b for a, b in paired}
    assert others == set(observed), others ^ set(observed)  # with every other estimator
    tuned = Store(store_uri).find_runs("pmnist-smoke-tuning", kind="trial")
    assert [r.tags["driver"] for r in tuned] == ["magnitude"]


def test_protocol_file_plugin_observed_under_another_driver(tmp_path, store_uri):
    write_readme_modules(tmp_path)
    readme_toml = readme_blocks("toml")[0]  # the estimator plugin's; the second is the factories'
    wanted = tomllib.loads(readme_toml)["estimators"]
    protocol = re.sub(r"\nobserve = \[.*?\]", f"\nobserve = {json.dumps(wanted['observe'])}\n"
                                               f"plugins = {json.dumps(wanted['plugins'])}", SMOKE)
    (tmp_path / "mine.toml").write_text(protocol)
    done = cli(tmp_path, ["-m", "benchmark", "run", "--config", "mine.toml", "--drivers", "mas"], store_uri)
    assert done.returncode == 0, done.stderr
    (run,) = cells(store_uri, "pmnist-mine").values()
    correlations = pd.read_csv(Store(store_uri).download(run.id, "correlations.csv", tmp_path / "c"))
    assert {"magnitude"} <= set(correlations.estimator_a) | set(correlations.estimator_b)
    assert config_of(store_uri, run.id, tmp_path / "d")["estimators"]["plugins"] == wanted["plugins"]


def test_installed_entry_point_is_found_and_its_version_recorded(tmp_path, store_uri):
    site = tmp_path / "site"
    site.mkdir()
    (site / "myplug_est.py").write_text(
        "from estimators import Estimator\n\n\nclass Ones(Estimator):\n    name = 'ones'\n\n"
        "    def importance(self, model, x, y):\n"
        "        return {n: p.detach() * 0 + 1 for n, p in model.named_parameters()}\n")
    info = site / "myplug-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.3\n")
    (info / "top_level.txt").write_text("myplug_est\n")
    (info / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\nones = myplug_est:Ones\n")
    done = cli(tmp_path, ["-m", "benchmark", "run", "--protocol", "smoke", "--drivers", "ones", "--lambda", "ones=1"],
               store_uri, {"PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    (run,) = cells(store_uri).values()
    assert config_of(store_uri, run.id, tmp_path / "e")["plugins"]["ones"] == {
        "spec": "myplug_est:Ones", "distribution": "myplug", "version": "0.3"}


BAD_MODULES = {
    "broken.py": "raise ImportError('no such thing')\n",
    "notanestimator.py": "class Thing:\n    name = 'thing'\n",
    "clash.py": "from estimators import Estimator\n\n\nclass Mas(Estimator):\n    name = 'mas'\n",
    "unnamed.py": "from estimators import Estimator\n\n\nclass Anonymous(Estimator):\n    pass\n",
}


@pytest.mark.parametrize("spec, message", [
    ("broken:Anything", "cannot import broken: ImportError: no such thing"),
    ("nowhere:Thing", "cannot import nowhere: ModuleNotFoundError"),
    ("notanestimator:Thing", "Thing is not a subclass of estimators.Estimator"),
    ("notanestimator:Missing", "module notanestimator has no Missing"),
    ("clash:Mas", "its name 'mas' clashes with a built-in estimator or driver"),
    ("unnamed:Anonymous", "its name '' must be lower-case letters"),
    ("no_colon", "expected module:Class"),
])
def test_bad_plugin_is_one_line_exit_2_before_any_run(tmp_path, untouched_store, monkeypatch, capsys, spec,
                                                      message):
    for name, text in BAD_MODULES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for command in (["run", "--drivers", "mas"], ["tune", "--driver", "mas", "--storage", str(tmp_path / "o.j")]):
        code = main([*command, "--protocol", "smoke", "--estimator-plugin", spec, "--tracking-uri", untouched_store,
                     "--data-dir", DATA_DIR])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"benchmark: error: estimator plugin {spec!r} (--estimator-plugin): ") and message in err


def test_bad_plugin_in_a_protocol_file_names_the_file(tmp_path, untouched_store, capsys):
    mine = tmp_path / "mine.toml"
    mine.write_text(SMOKE.replace("[estimators]\n", '[estimators]\nplugins = ["nowhere:Thing"]\n'))
    assert main(["run", "--config", str(mine), "--tracking-uri", untouched_store, "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert f"{mine}: estimators.plugins" in err and "cannot import nowhere" in err and err.count("\n") == 1


@pytest.mark.parametrize("module, body, problem", [
    ("raising", "raise RuntimeError('out of ideas')", "importance() raised RuntimeError: out of ideas"),
    ("partial", "return {'fc1.weight': model.fc1.weight.detach().abs()}",
     "must return {parameter name: tensor shaped like it}"),
])
def test_a_failing_plugin_fails_its_cell_and_the_sweep_goes_on(tmp_path, store_uri, monkeypatch, module, body,
                                                               problem):
    (tmp_path / f"{module}.py").write_text("from estimators import Estimator\n\n\nclass Boom(Estimator):\n"
                                         "    name = 'boom'\n\n    def importance(self, model, x, y):\n"
                                         f"        {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["run", "--protocol", "smoke", "--drivers", "boom,mas", "--lambda", "boom=1", "--estimator-plugin",
                 f"{module}:Boom", "--tracking-uri", store_uri, "--data-dir", DATA_DIR])
    assert code == 1
    runs = cells(store_uri)
    assert (runs["boom"].status, runs["mas"].status) == ("FAILED", "FINISHED")
    reason = runs["boom"].tags["failure_reason"]
    assert reason.startswith(f"estimator plugin boom ({module}:Boom): ") and problem in reason


def test_settings_added_later_at_their_old_value_do_not_change_the_hash():
    resolved = {"data": {"tasks": 3, "importance_from": "validation"}, "estimators": {"plugins": [], "si_xi": 0.1},
                "driver": "mas", "seed": 0, "lambda_source": "tuned"}
    earlier = {"data": {"tasks": 3}, "estimators": {"si_xi": 0.1}, "driver": "mas", "seed": 0, "lambda_source": "x"}
    assert config_hash(resolved) == config_hash(earlier)
    resolved["data"]["importance_from"] = "train"
    assert config_hash(resolved) != config_hash(earlier)


def test_the_paper_protocols_cells_hash_as_when_they_were_first_recorded():
    """The hash stored by the paper sweeps published in results/ (a rerun of the quick start resumes them)."""
    config = load_config("paper")
    assert config_hash(cell_config(config, "none", 0, Lambda(0.0, "none"), "cpu", "final")) == "1af95b5be06705a3"
    assert config_hash(cell_config(config, "mas", 3, Lambda(4.5, "default"), "cpu", "final")) == "591c02d556077e96"


def protocol_from_readme() -> str:
    """The smoke protocol with README's [model] and [data] factory lines."""
    toml = readme_blocks("toml")[1]
    wanted = tomllib.loads(toml)
    text = SMOKE.replace("[model]\n", f'[model]\nfactory = "{wanted["model"]["factory"]}"\n')
    text = text.replace("[data]\n", f'[data]\nfactory = "{wanted["data"]["factory"]}"\n')
    return re.sub(r"\ntasks = \d+", f"\ntasks = {wanted['data']['tasks']}", text)


def test_readme_model_and_task_sequence_run_as_written(tmp_path, store_uri):
    write_readme_modules(tmp_path)
    (tmp_path / "mine.toml").write_text(protocol_from_readme())
    text = BRING_YOUR_OWN.read_text()
    (command,) = re.findall(r"\n    (python -m benchmark run --config mine\.toml[^\n]*)", text)
    done = cli(tmp_path, shlex.split(command)[1:], store_uri)
    assert done.returncode == 0, done.stderr
    runs = cells(store_uri, "pmnist-mine")
    assert {d: r.status for d, r in runs.items()} == {"none": "FINISHED", "mas": "FINISHED"}
    store = Store(store_uri)
    recorded = json.loads(store.download(runs["mas"].id, "task_sequence.json", tmp_path / "f").read_text())
    assert recorded == {"kind": "mnist-then-negative", "tasks": ["mnist", "1 - mnist"]}
    matrix = pd.read_csv(store.download(runs["mas"].id, "accuracy_matrix.csv", tmp_path / "g"))
    assert matrix.shape == (2, 3) and matrix.task_0.iloc[0] > 0.5  # 2 tasks; the model learnt task 0
    config = config_of(store_uri, runs["mas"].id, tmp_path / "h")
    assert (config["model"]["factory"], config["data"]["factory"]) == ("my_model:narrow_tanh",
                                                                       "my_tasks:mnist_then_negative")
    correlations = pd.read_csv(store.download(runs["mas"].id, "correlations.csv", tmp_path / "i"))
    assert set(correlations.layer.astype(str)) == {"0", "2"}  # the user's model's parameter names


BAD_FACTORIES = {
    "models.py": "from torch import nn\n\n\ndef text(config):\n    return 'a model'\n\n\n"
                 "def wide(config):\n    return nn.Linear(784, 12)\n\n\nNOT_A_FUNCTION = 3\n",
    "sequences.py": "def nothing(data, splits, seed):\n    return object()\n\n\n"
                    "from benchmark.scenario import make_task_sequence\nfrom dataclasses import replace\n\n\n"
                    "def three(data, splits, seed):\n"
                    "    return make_task_sequence(replace(data, factory='', tasks=3), splits, seed)\n",
}


@pytest.mark.parametrize("section, spec, message", [
    ("model", "models:text", "model.factory 'models:text': the model is a str, not a torch.nn.Module"),
    ("model", "models:wide", "must map images [N, 784] to logits [N, 10], not to (2, 12)"),
    ("model", "models:NOT_A_FUNCTION", "model.factory 'models:NOT_A_FUNCTION': NOT_A_FUNCTION is not a function"),
    ("model", "nowhere:f", "model.factory 'nowhere:f': cannot import nowhere"),
    ("data", "sequences:nothing", "data.factory 'sequences:nothing': returned a object without tasks, split"),
    ("data", "sequences:three", "data.factory 'sequences:three': returned 3 tasks, data.tasks says 2"),
])
def test_bad_factory_is_one_line_exit_2_before_anything_is_written(tmp_path, untouched_store, monkeypatch, capsys,
                                                                   section, spec, message):
    for name, text in BAD_FACTORIES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    protocol = re.sub(r"\ntasks = \d+", "\ntasks = 2", SMOKE).replace(f"[{section}]\n",
                                                                       f'[{section}]\nfactory = "{spec}"\n')
    (tmp_path / "bad.toml").write_text(protocol)
    code = main(["run", "--config", str(tmp_path / "bad.toml"), "--drivers", "mas", "--tracking-uri",
                 untouched_store, "--data-dir", DATA_DIR])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
