"""Bad input: one line on stderr, exit status 2, nothing written to the store."""

import os
import subprocess
import sys

import pytest

from benchmark.cli import main
from tests.conftest import DATA_DIR


@pytest.mark.parametrize("args, message", [
    (["run", "--drivers", "ewc"], "unknown driver 'ewc'"),
    (["run", "--drivers", "mas,foo"], "unknown driver 'foo'"),
    (["run", "--protocol", "huge"], "unknown protocol 'huge'"),
    (["run", "--seeds", "0"], "argument --seeds: must be ≥ 1, not 0"),
    (["run", "--seeds", "many"], "argument --seeds: 'many' is not an integer"),
    (["run", "--first-seed", "-1"], "argument --first-seed: must be ≥ 0, not -1"),
    (["run", "--lambda", "mas=-1"], "--lambda: mas=-1 must be a finite number ≥ 0"),
    (["run", "--lambda", "mas=abc"], "--lambda: mas='abc' is not a number"),
    (["run", "--lambda", "ewc=1"], "--lambda: unknown driver 'ewc'"),
    (["run", "--lambda", "mas4.5"], "--lambda expects estimator=value"),
    (["run", "--config", "/nonexistent/protocol.toml"], "cannot read config file /nonexistent/protocol.toml"),
    (["run", "--log-importances", "some"], "argument --log-importances: invalid choice"),
    (["walk"], "argument COMMAND: invalid choice: 'walk'"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_input(args, message, untouched_store, capsys):
    assert main([*args, "--tracking-uri", untouched_store] if args and args[0] == "run" else args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("benchmark: error: ") and message in err, err


def test_invalid_config_names_the_key(untouched_store, tmp_path, capsys):
    f = tmp_path / "mine.toml"
    f.write_text("[training]\nlearning_rate = 0.1\n")
    assert main(["run", "--config", str(f), "--tracking-uri", untouched_store]) == 2
    assert "unknown key training.learning_rate" in capsys.readouterr().err


def test_missing_mnist_without_download(untouched_store, tmp_path, capsys):
    assert main(["run", "--protocol", "smoke", "--data-dir", str(tmp_path / "nothing"), "--no-download",
                 "--tracking-uri", untouched_store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MNIST not found: put the four MNIST idx files in" in err


def test_unwritable_store(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"  # its folder would be a file
    assert main(["run", "--protocol", "smoke", "--tracking-uri", uri, "--data-dir", DATA_DIR]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot open tracking store" in err


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-m", "benchmark", "run", "--drivers", "ewc"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "benchmark: error: unknown driver 'ewc' (choose from paper, all, none, fis, mas, si, sig, fis_exact, "
        "fis_sampled, fis_batched, abs_fisher, sos, fis_maxpred, fis_pweighted, or a control: uniform, "
        "shuffled-<estimator>, layermean-<estimator>)"]
    assert not (tmp_path / "mlflow.db").exists()


def test_a_published_command_leaves_out_this_machines_places():
    from benchmark.cli import portable_command

    argv = ["lambda-curve", "--seeds", "3", "--tracking-uri", "sqlite:////home/me/m.db", "--data-dir=/data",
            "--out", "results/lambda-response"]
    assert portable_command(argv, ("--tracking-uri", "--data-dir")) == \
        "python -m benchmark lambda-curve --seeds 3 --out results/lambda-response"


@pytest.mark.parametrize(("argv", "protocol"), [
    (["run"], "paper"), (["tune", "--driver", "mas"], "paper"), (["lambda-curve"], "paper"),
    (["sparsify"], "sparsify"), (["run", "--protocol", "smoke"], "smoke"),
    (["sparsify", "--protocol", "smoke"], "smoke"),
])
def test_each_command_reads_its_own_default_protocol(argv, protocol):
    # sparsify's default once leaked into every command sharing the --protocol option: `run` trained sparsify
    from benchmark.cli import make_parser, read_config

    for _ in range(2):  # the parser built twice: nothing one build sets may leak into the next
        args = make_parser().parse_args(argv)
        assert read_config(args).protocol == protocol
