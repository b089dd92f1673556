"""Results anyone can re-check: the environment fingerprint every run records, cells.csv and the regenerating
command every report publishes, `verify` rerunning published cells (real smoke runs, real MLflow stores), and the
refusal to publish dirty code under results/."""

import math
import shutil
import subprocess

import pandas as pd
import pytest

from benchmark import environment
from benchmark.cli import main
from benchmark.environment import CELLS_FILE, FINGERPRINT_KEYS, fingerprint_hash, git_dirty, isa_level, library_versions
from benchmark.verify import prediction_interval
from tests.conftest import DATA_DIR
from tracking import Store

SMOKE = ["--protocol", "smoke", "--drivers", "none,mas", "--seeds", "2", "--data-dir", DATA_DIR]


@pytest.fixture(scope="module")
def published(initialised_store, tmp_path_factory):
    """A small published folder: the smoke protocol, none and mas on seeds 0 and 1, reported like results/."""
    root = tmp_path_factory.mktemp("published")
    shutil.copy(initialised_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert main(["run", *SMOKE, "--tracking-uri", uri]) == 0
    assert main(["report", "--out", str(root / "folder"), "--compact", "--tracking-uri", uri]) == 0
    return uri, root / "folder"


def copy_of(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def verify(folder, store_uri, *options) -> int:
    return main(["verify", str(folder), "--tracking-uri", store_uri, "--data-dir", DATA_DIR, *options])


@pytest.mark.slow
def test_every_run_records_the_fingerprint_and_the_folder_publishes_it(published):
    uri, folder = published
    store = Store(uri)
    cells = pd.read_csv(folder / CELLS_FILE, dtype=str)
    assert len(cells) == 4 and {"driver", "seed", "lambda", "lambda_source", "ACC", "BWT", "forgetting", "val_ACC",
                                "pearson_fis_mas", "cpu", "isa", "threads", "torch", "git_commit", "git_dirty",
                                "fingerprint", "run_id"} <= set(cells.columns)
    for run in [*store.find_runs("pmnist-smoke", kind="cell"), *store.find_runs("pmnist-smoke", kind="sweep")]:
        assert all(key in run.tags for key in FINGERPRINT_KEYS if key != "cuda_version" and "cudnn" not in key
                   and "tf32" not in key)
        assert run.tags["fingerprint"] == fingerprint_hash(run.tags)
        assert run.tags["git_dirty"] in ("True", "False")
    by_run = {r.id: r for r in store.find_runs("pmnist-smoke", kind="cell")}
    for cell in cells.itertuples():
        run = by_run[cell.run_id]
        assert (cell.driver, cell.seed, cell.threads, cell.fingerprint) == \
            (run.tags["driver"], run.tags["seed"], run.tags["threads"], run.tags["fingerprint"])
        assert float(cell.ACC) == run.metrics["ACC"] and float(cell.val_ACC) == run.metrics["val_ACC"]


@pytest.mark.slow
def test_the_report_names_its_commit_and_a_pinned_regenerating_command(published):
    _, folder = published
    commit = pd.read_csv(folder / CELLS_FILE, dtype=str).git_commit.iloc[0]
    readme = (folder / "README.md").read_text()
    assert readme.index("## Regenerate") < readme.index("## Summary")
    assert f"Runs made at commit {commit}" in readme
    assert ("python -m benchmark run --protocol smoke --drivers none,mas --seeds 2 --lambda-source protocol"
            in readme)
    assert f"python -m benchmark report --experiment pmnist-smoke --out {folder} --compact" in readme
    assert f"python -m benchmark verify {folder}" in readme


@pytest.mark.slow
def test_verify_reruns_two_cells_bit_identical_here(published, capsys):
    _, folder = published
    # the throwaway store, as a user would run it
    assert main(["verify", str(folder), "--cells", "2", "--data-dir", DATA_DIR]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["mas seed 0", "none seed 0"]
    assert all(", identical, and its 9 other values too (same fingerprint)" in line for line in lines)


@pytest.mark.slow
def test_a_tampered_value_fails(published, tmp_path, capsys):
    uri, folder = published  # the store holding the published runs: verify reruns the cell all the same
    copy = copy_of(folder, tmp_path)
    cells = pd.read_csv(copy / CELLS_FILE, dtype=str)
    cells.loc[0, "ACC"] = str(float(cells.loc[0, "ACC"]) + 0.001)
    cells.to_csv(copy / CELLS_FILE, index=False)
    assert verify(copy, uri, "--cells", "1") == 1
    assert "mas seed 0: ACC" in (out := capsys.readouterr().out) and "ACC DIFFER although the fingerprint" in out


@pytest.mark.slow
@pytest.mark.parametrize("published_acc, status, verdict", [(None, 0, "inside"), (0.9, 1, "OUTSIDE")])
def test_another_environment_is_judged_by_the_prediction_interval(published, store_uri, tmp_path, capsys,
                                                                  published_acc, status, verdict):
    _, folder = published
    copy = copy_of(folder, tmp_path)
    cells = pd.read_csv(copy / CELLS_FILE, dtype=str)
    cells["threads"], cells["fingerprint"] = "64", "another machine"
    mas = cells.driver == "mas"
    if published_acc is None:  # the rerun differs from its published ACC, inside the seeds' spread
        cells.loc[mas & (cells.seed == "0"), "ACC"] = str(float(cells.loc[mas & (cells.seed == "0"), "ACC"].iloc[0])
                                                          + 1e-6)
    else:  # every published seed far from what this code gives
        cells.loc[mas, "ACC"] = [str(published_acc), str(published_acc + 1e-4)]
    cells.to_csv(copy / CELLS_FILE, index=False)
    assert verify(copy, store_uri, "--cells", "mas:0") == status
    line = capsys.readouterr().out.strip()
    assert line.startswith("mas seed 0: ACC") and f"{verdict} the 99.50% prediction interval" in line
    assert line.endswith("(fingerprint differs: threads)")


@pytest.mark.slow
def test_bad_input_is_one_line_and_status_2(published, tmp_path, capsys, untouched_store):
    _, folder = published
    assert verify(tmp_path / "nowhere", untouched_store) == 2
    assert "no results folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert verify(tmp_path / "empty", untouched_store) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"has no {CELLS_FILE}" in err
    copy = copy_of(folder, tmp_path)
    cells = pd.read_csv(copy / CELLS_FILE, dtype=str).assign(protocol="mine")
    cells.to_csv(copy / CELLS_FILE, index=False)
    assert verify(copy, untouched_store) == 2
    err = capsys.readouterr().err
    assert "protocol 'mine' is not shipped" in err and "has no mine.toml" in err
    assert verify(folder, untouched_store, "--cells", "sig:0") == 2
    assert "no cell 'sig:0'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_protocol_file_in_the_folder_is_the_cells_protocol(published, store_uri, tmp_path, capsys):
    _, folder = published
    copy = copy_of(folder, tmp_path)
    shutil.copy(environment.REPO_ROOT / "benchmark/protocols/smoke.toml", copy / "my-smoke.toml")
    pd.read_csv(copy / CELLS_FILE, dtype=str).assign(protocol="my-smoke").to_csv(copy / CELLS_FILE, index=False)
    assert verify(copy, store_uri, "--cells", "none:1") == 0
    assert "none seed 1: ACC" in capsys.readouterr().out


@pytest.mark.slow
def test_results_refuse_a_dirty_tree_and_dirty_runs(published, tmp_path, monkeypatch, capsys):
    uri, _ = published
    results = tmp_path / "results"
    monkeypatch.setattr(environment, "RESULTS_DIR", results)
    monkeypatch.setattr(environment, "git_dirty", lambda: "True")
    report = ["report", "--out", str(results / "smoke"), "--tracking-uri", uri]
    assert main(report) == 2
    assert "uncommitted changes" in capsys.readouterr().err and not results.exists()

    # the code clean now, but a run was recorded from a dirty tree (one cell: a quick report)
    monkeypatch.setattr(environment, "git_dirty", lambda: "False")
    copy = tmp_path / "store" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy(uri.removeprefix("sqlite:///"), copy)
    store = Store(f"sqlite:///{copy}")
    cell = store.find_runs("pmnist-smoke", kind="cell", driver="mas", seed="0")[0]
    store.open_run(cell.id).set_tags({"git_dirty": "True"})
    report = ["report", "--runs", cell.id, "--out", str(results / "smoke"), "--tracking-uri", f"sqlite:///{copy}"]
    assert main(report) == 2
    assert "1 of the 1 runs were made from a working tree with uncommitted changes" in capsys.readouterr().err
    assert not results.exists()
    assert main([*report, "--allow-dirty"]) == 0
    readme = (results / "smoke" / "README.md").read_text()
    assert "written with --allow-dirty" in readme and "1 of the 1 runs were made from a working tree" in readme


def test_isa_level_is_the_highest_flag():
    assert isa_level("fpu sse4_1 sse4_2 avx avx2 fma") == "AVX2"
    assert isa_level("sse4_2 avx avx2 avx512f avx512bw avx512_vnni") == "AVX-512"
    assert isa_level("avx2 avx512f amx_bf16 amx_tile amx_int8") == "AMX"
    assert isa_level("fp asimd evtstrm sve") == "SVE"
    assert isa_level("fpu vme") == "unknown"


def test_library_versions_from_torchs_build_configuration():
    shown = ("PyTorch built with:\n  - GCC 13.3\n  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product "
             "Build 20240605 for Intel(R) 64 architecture applications\n  - Intel(R) MKL-DNN v3.12.0 (Git Hash "
             "80afa71)\n  - OpenMP 201511\n")
    assert library_versions(shown) == {"mkl": "2024.2", "onednn": "3.12.0"}
    assert library_versions("PyTorch built with:\n  - GCC 13.3\n") == {"mkl": "none", "onednn": "none"}


def test_the_fingerprint_hash_reads_what_determines_the_floats():
    tags = {"cpu": "AMD EPYC", "isa": "AVX2", "threads": "2", "torch": "2.14.1", "git_commit": "abc"}
    assert fingerprint_hash(tags) == fingerprint_hash({**tags, "git_commit": "def", "git_dirty": "True"})
    assert fingerprint_hash(tags) != fingerprint_hash({**tags, "threads": "1"})
    assert len(fingerprint_hash(tags)) == 16


def test_git_dirty_ignores_the_benchmarks_outputs(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "code")
    assert git_dirty(tmp_path) == "False"
    for output in ("mlruns/mlflow.db", "report/index.html", "results/new/cells.csv"):
        (tmp_path / output).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / output).write_text("")
    assert git_dirty(tmp_path) == "False"
    (tmp_path / "results/new/mine.toml").write_text("")  # a protocol file: an input
    assert git_dirty(tmp_path) == "True"
    (tmp_path / "results/new/mine.toml").unlink()
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) == "True"
    assert git_dirty(tmp_path / "results") == "True"  # from anywhere in the checkout
    assert git_dirty(tmp_path.parent) == "unknown"  # not a checkout


def test_an_unstaged_change_to_a_tracked_output_is_not_dirty(tmp_path):
    # `git status --porcelain` starts such a line with a space (" D mlruns/.gitignore"): stripping the output once
    # shifted its path by a character, and a deleted output file made the whole tree "dirty"
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    for path in ("code.py", "mlruns/.gitignore", "results/old/README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x\n")
    git("add", ".")
    git("commit", "-qm", "code and outputs")
    (tmp_path / "mlruns/.gitignore").unlink()
    assert git_dirty(tmp_path) == "False"
    (tmp_path / "results/old/README.md").write_text("y\n")
    assert git_dirty(tmp_path) == "False"
    (tmp_path / "code.py").write_text("y\n")
    assert git_dirty(tmp_path) == "True"


def test_prediction_interval_by_hand():
    # values 1, 2, 3, 4: mean 2.5, sd √(5/3); t_{0.975, 3} = 3.182446305284263
    half = 3.182446305284263 * math.sqrt(5 / 3) * math.sqrt(1 + 1 / 4)
    low, high = prediction_interval([1.0, 2.0, 3.0, 4.0])
    assert low == pytest.approx(2.5 - half, rel=1e-12) and high == pytest.approx(2.5 + half, rel=1e-12)
    assert prediction_interval([1.0, 2.0, float("nan")], 0.95) == pytest.approx(
        (1.5 - 12.706204736174698 * math.sqrt(0.5) * math.sqrt(1.5), 1.5 + 12.706204736174698 * math.sqrt(0.5)
         * math.sqrt(1.5)))
    assert prediction_interval([0.5]) is None


def test_the_regenerating_command_logs_what_the_runs_logged(tmp_path):
    from benchmark.report.cells import regenerating_commands

    cells = pd.DataFrame([{"protocol": "smoke", "dataset": "mnist", "driver": d, "seed": s, "lambda": 4.5 if d == "mas"
                           else 0.0, "lambda_source": "default" if d == "mas" else "none",
                           "config": {"log_importances": "all"}} for d in ("none", "mas") for s in (0, 1)])
    commands, notes = regenerating_commands(cells, ["none", "mas"], {"smoke": "pmnist-smoke"}, tmp_path / "out", "")
    assert commands[0] == ("python -m benchmark run --protocol smoke --drivers none,mas --seeds 2 --lambda-source "
                           "protocol --log-importances all") and not notes
    cells["config"] = [{"log_importances": "final"}] * len(cells)
    commands, _ = regenerating_commands(cells, ["none", "mas"], {"smoke": "pmnist-smoke"}, tmp_path / "out", "")
    assert commands[0].endswith("--lambda-source protocol")


def test_cells_named_by_protocol_and_lambda_where_a_folder_holds_several():
    from benchmark.errors import UsageError
    from benchmark.verify import cell_names, choose

    cells = pd.DataFrame({"protocol": ["author", "author", "held-out", "paper", "paper"],
                          "driver": ["mas", "si", "mas", "mas", "mas"], "seed": [0, 0, 0, 20000, 20000],
                          "lambda": [4.5, 0.5, 4.5, 1.046, 3.307], "run_id": list("abcde")})
    assert list(choose(cells, "mas:0").run_id) == ["a", "c"]
    assert list(choose(cells, "held-out/mas:0").run_id) == ["c"]
    assert list(choose(cells, "mas:20000@3.307").run_id) == ["e"]
    assert list(choose(cells, "paper/mas:20000@1.046, si:0").run_id) == ["d", "b"]
    assert cell_names(cells) == ["author/mas:0", "author/si:0", "held-out/mas:0", "paper/mas:20000@1.046",
                                 "paper/mas:20000@3.307"]
    for spec, says in (("mas:20000@9.9", "no cell 'mas:20000@9.9'"), ("mas:0@x", "λ 'x' in 'mas:0@x' is not"),
                       ("paper/mas:0", "no cell 'paper/mas:0'")):
        with pytest.raises(UsageError, match=says):
            choose(cells, spec)
