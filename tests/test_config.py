import pytest

from benchmark.config import PROTOCOLS, load_config
from benchmark.errors import UsageError


def test_shipped_protocols_load():
    assert {"paper", "quick", "smoke"} <= set(PROTOCOLS)
    for name in PROTOCOLS:
        assert load_config(name).protocol == name


def test_paper_protocol_is_the_papers_setup():
    c = load_config("paper")
    assert (c.data.tasks, c.data.train_images, c.data.validation_images, c.data.importance_samples) == (
        10, 55000, 5000, 5000)
    assert c.model.hidden == (300, 150) and c.model.leaky_relu_slope == 0.01
    assert (c.training.optimizer, c.training.lr, c.training.batch_size, c.training.epochs) == ("adam", 1e-3, 100, 6)
    assert c.penalty.lambda_ == {"fis": 41.0, "mas": 4.5, "si": 0.25, "sig": 0.1}
    assert (c.estimators.si_xi, c.estimators.si_gradient, c.estimators.si_clip_at_zero) == (0.1, "task", False)


def test_quick_keeps_ten_tasks():
    assert load_config("quick").data.tasks == 10


def test_user_file_named_by_its_stem(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text("[training]\nepochs = 2\nlr = 1\n")
    c = load_config(path=f)
    assert c.protocol == "mine" and c.training.epochs == 2 and c.training.lr == 1.0


@pytest.mark.parametrize("text, message", [
    ("[training]\nepoch = 2\n", "unknown key training.epoch"),
    ("[trainin]\n", "unknown section [trainin]"),
    ("[training]\nepochs = 'two'\n", "training.epochs"),
    ("[training]\nepochs = 0\n", "training.epochs"),
    ("[penalty]\nlambda = { mas = -1 }\n", "penalty.lambda.mas"),
    ("[penalty]\nlambda = { ewc = 1 }\n", "unknown driver 'ewc'"),
    ("[data]\ntrain_images = 58000\n", "must not exceed 60000"),
    ("[data\n", "not valid TOML"),
])
def test_invalid_files_name_the_problem(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(path=f)


def test_unreadable_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read config file"):
        load_config(path=tmp_path / "missing.toml")
