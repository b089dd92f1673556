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
    ("[training]\niterations = -1\n", "training.iterations must be ≥ 0"),
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


def test_each_estimator_takes_its_options_from_the_protocol():
    # read from each constructor's signature: <name>_<parameter>, else <parameter>, and the run's seed
    import dataclasses

    from benchmark.loop import estimator_options
    from estimators import ESTIMATORS

    config = load_config("smoke")
    config = dataclasses.replace(config, estimators=dataclasses.replace(
        config.estimators, batch_size=250, si_xi=0.3, si_clamp_max=0.001, fis_batched_batchnorm="train"))
    expected = {
        "fis": {"batch_size": 250}, "mas": {"batch_size": 250}, "sig": {"batch_size": 250},
        "si": {"xi": 0.3, "gradient": "task", "clip_at_zero": False, "clamp_max": 0.001},
        "fis_exact": {"batch_size": 250}, "fis_sampled": {"seed": 7, "batch_size": 250},
        "fis_batched": {"batch_size": 100, "batchnorm": "train"}, "abs_fisher": {"batch_size": 250}, "sos": {},
        "fis_maxpred": {"batch_size": 250}, "fis_pweighted": {"batch_size": 250},
    }
    assert {name: estimator_options(name, cls, config, seed=7) for name, cls in ESTIMATORS.items()} == expected


def test_iterations_cut_the_last_pass_short():
    import dataclasses

    from benchmark.loop import passes

    config = load_config("smoke")
    starts = range(0, 1000, 100)  # 10 steps a pass
    by_epochs = passes(starts, config)
    assert by_epochs == [starts] * config.training.epochs
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, iterations=25))
    assert [len(p) for p in passes(starts, config)] == [10, 10, 5]
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, iterations=20))
    assert [len(p) for p in passes(starts, config)] == [10, 10]


@pytest.mark.parametrize("split_type", ["task", "domain", "class"])
def test_van_de_ven_split_protocols_say_what_their_paper_says(split_type):
    config = load_config(f"vdv-split-{split_type}")
    assert (config.data.sequence, config.data.split_type, config.data.tasks) == ("split", split_type, 5)
    assert config.model.hidden == (400, 400) and config.model.leaky_relu_slope == 0.0
    t = config.training
    assert (t.optimizer, t.lr, t.batch_size, t.iterations) == ("adam", 0.001, 128, 2000)


def test_conv_tuning_is_conv_with_a_validation_split():
    conv, tuning = load_config("conv").to_dict(), load_config("conv-tuning").to_dict()
    assert conv["data"].pop("validation_images") == 0 and tuning["data"].pop("validation_images") == 5000
    assert conv["data"].pop("train_images") == 60000 and tuning["data"].pop("train_images") == 55000
    conv.pop("protocol"), tuning.pop("protocol")
    assert conv == tuning
