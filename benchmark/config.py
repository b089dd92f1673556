"""Protocols: plain TOML files (benchmark/protocols/*.toml) parsed into one frozen, validated Config."""

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from benchmark import plugins
from benchmark.drivers import drivers
from benchmark.errors import UsageError
from estimators.names import BATCHNORM_MODES, NAMES

PROTOCOL_DIR = Path(__file__).parent / "protocols"
PROTOCOLS = sorted(p.stem for p in PROTOCOL_DIR.glob("*.toml"))
DATASETS = ("mnist", "fashion-mnist")  # whose pixels are permuted: both 60k + 10k grey 28×28 images, 10 classes
DATASET_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}  # as messages and notes write them
MNIST_TRAIN_IMAGES = 60000
SEQUENCES = ("permuted", "rotated", "split", "sequence")  # data.sequence: the kinds of task sequence (scenario.py)
SPLIT_TYPES = ("task", "domain", "class")  # data.split_type: the incremental-learning type of split tasks (scenario.py)
MODEL_KINDS = ("mlp", "conv")  # model.kind (model.py)
SPLIT_CLASSES_PER_TASK = 2  # split-MNIST: classes 0/1, 2/3, … one pair per task
IMAGE_SIDE = 28  # MNIST and Fashion-MNIST: 28×28 grey images
ADAM_STATES = ("fresh", "carried")  # training.adam_state
# Disjoint seed ranges, so that no reported number comes from a seed that also chose a λ: `run` reports seeds below
# TUNING_FIRST_SEED, `tune` trains on TUNING_FIRST_SEED, …, and `lambda-curve` draws its curve on CURVE_FIRST_SEED, …
TUNING_FIRST_SEED, CURVE_FIRST_SEED = 10_000, 20_000
# for a list field whose default is empty, the element type its values must have ("should be like …")
FLOATS, STRINGS = {"like": (0.0,)}, {"like": ("mnist",)}
# The config hash (sweep.config_hash) is how a rerun of a command finds its finished cells. A setting added after
# runs were recorded carries ADDED: it enters the hash only where it differs from its default — the value every
# earlier run had without naming it — so adding a setting never orphans the cells recorded before it. Every setting
# added from now on carries it; removing it from a setting changes the hash of every run, and is not done.
ADDED = {"hash": "only when not its default"}


@dataclass(frozen=True)
class DataConfig:
    # "module:function" of your own, instead of sequence (docs/bring-your-own.md)
    factory: str = field(default="", metadata=ADDED)
    dataset: str = "mnist"
    tasks: int = 10
    train_images: int = 55000
    validation_images: int = 5000
    importance_samples: int = 5000
    # "validation": the first importance_samples validation images (held out); "train": the last
    # importance_samples training images, trained on (the author's code; its protocol has no validation split)
    importance_from: str = field(default="validation", metadata=ADDED)
    test_images: int = 10000
    # permuted: the seed the permutations are drawn from; -1: the run's own. One value for every run gives every
    # seed the same tasks, as the author's cached datasets did (his runs differ in weights and batch order only)
    permutation_seed: int = field(default=-1, metadata=ADDED)
    # the task sequence (benchmark/scenario.py): "permuted" (the paper's), "rotated", "split" or "sequence"
    sequence: str = field(default="permuted", metadata=ADDED)
    # rotated: task t's angle in degrees, counter-clockwise; none given: task 0 at 0°, the others drawn from the
    # seed, uniformly in [0, max_angle)
    angles: tuple[float, ...] = field(default=(), metadata={**FLOATS, **ADDED})
    max_angle: float = field(default=180.0, metadata=ADDED)
    # sequence: task t's; factory: those it reads
    datasets: tuple[str, ...] = field(default=(), metadata={**STRINGS, **ADDED})
    # sequence: task t's rotation (none: 0°)
    rotations: tuple[float, ...] = field(default=(), metadata={**FLOATS, **ADDED})
    # split: "task" (each task its own 2-unit head), "domain" (one 2-unit head, label = digit mod 2) or "class"
    # (one head over every class seen so far); van de Ven et al. 2022's three types (scenario.ImageTasks)
    split_type: str = field(default="task", metadata=ADDED)


@dataclass(frozen=True)
class ModelConfig:
    # "module:function" of your own, instead of kind (docs/bring-your-own.md)
    factory: str = field(default="", metadata=ADDED)
    # "mlp": the paper's; "conv": the author's convolutional network (benchmark/model.py)
    kind: str = field(default="mlp", metadata=ADDED)
    hidden: tuple[int, ...] = (300, 150)  # mlp
    leaky_relu_slope: float = 0.01  # both
    # conv: block i is Conv2d(channels[i], kernels[i]) → BatchNorm (if batch_norm) → leakyReLU → max-pool of
    # window pools[i] (1: none); then one Linear layer to the classes
    channels: tuple[int, ...] = field(default=(64, 128, 256), metadata=ADDED)
    kernels: tuple[int, ...] = field(default=(5, 3, 3), metadata=ADDED)
    pools: tuple[int, ...] = field(default=(2, 1, 1), metadata=ADDED)
    batch_norm: bool = field(default=True, metadata=ADDED)


@dataclass(frozen=True)
class TrainingConfig:
    optimizer: str = "adam"
    lr: float = 0.001
    batch_size: int = 100
    epochs: int = 6
    # where each cell's Adam starts: "fresh" (zero moments, step 0); "carried": a sweep runs each driver's seeds
    # as one chain, in seed order, each cell starting from the Adam state the previous one ended with — the paper
    # author's script keeps one Adam across its runs (its reset() re-initialises weights and importances only)
    adam_state: str = field(default="fresh", metadata=ADDED)
    # > 0: each task trains this many optimiser steps instead of `epochs` passes — passes over the task's shuffled
    # images, the last cut short (van de Ven et al.'s protocols count iterations: 2000 a split-MNIST task)
    iterations: int = field(default=0, metadata=ADDED)


@dataclass(frozen=True)
class PenaltyConfig:
    # λ per driver; `lambda` in the TOML file (a Python keyword, hence the underscore)
    lambda_: dict[str, float] = field(default_factory=lambda: {"fis": 41.0, "mas": 4.5, "si": 0.25, "sig": 0.1})


@dataclass(frozen=True)
class EstimatorConfig:
    # which estimators observe every run (a driver is always observed); the paper protocol keeps to its four:
    # the five more cost a paper cell 15% over the bare loop (README, "Performance")
    observe: tuple[str, ...] = NAMES
    batch_size: int = 1000
    si_xi: float = 0.1
    si_gradient: str = "task"
    si_clip_at_zero: bool = False
    # SI's Ω_task bounded from above at this, as Avalanche (0.001); 0: no bound
    si_clamp_max: float = field(default=0.0, metadata=ADDED)
    fis_batched_batch_size: int = 100  # the minibatch whose mean-loss gradient fis_batched squares
    # "train": fis_batched with BatchNorm normalising by each minibatch's statistics, as PyCIL and FACIL
    fis_batched_batchnorm: str = field(default="eval", metadata=ADDED)
    # your own, "module:Class" (benchmark/plugins.py)
    plugins: tuple[str, ...] = field(default=(), metadata={**STRINGS, **ADDED})
    # across tasks: "sum" (the paper), "online": Ω ← γ Ω + Ω_task (Schwarz et al. 2018), or "blend":
    # Ω ← α Ω + (1 − α) Ω_task from Ω = 0 (FACIL's EWC and MAS, Avalanche's MAS)
    accumulation: str = "sum"
    online_gamma: float = 0.9
    blend_alpha: float = field(default=0.5, metadata=ADDED)


@dataclass(frozen=True)
class AnalysisConfig:
    top_k_percent: float = 10.0  # correlations.csv's top-k overlap: Jaccard of each pair's k% most important


@dataclass(frozen=True)
class Config:
    protocol: str
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    penalty: PenaltyConfig
    estimators: EstimatorConfig
    analysis: AnalysisConfig = AnalysisConfig()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["penalty"] = {"lambda": d["penalty"].pop("lambda_")}
        for section in ("data", "model"):
            d[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in d[section].items()}
        d["estimators"]["observe"] = list(d["estimators"]["observe"])
        d["estimators"]["plugins"] = list(d["estimators"]["plugins"])
        return d


SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig, "penalty": PenaltyConfig,
            "estimators": EstimatorConfig, "analysis": AnalysisConfig}


def added_settings() -> dict[tuple[str, str], object]:
    """(section, key) → default, as a resolved config writes it (lists, not tuples), of every setting marked
    ADDED: what the config hash leaves out where a run has that value."""
    return {(section, f.name): json.loads(json.dumps(f.default))
            for section, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.metadata.get("hash")}


def load_config(protocol: str | None = None, path: str | Path | None = None) -> Config:
    """Read a protocol by name (from benchmark/protocols) or a config file; the file's stem names it."""
    if path is None:
        if protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
        path = PROTOCOL_DIR / f"{protocol}.toml"
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from None
    return parse_config(raw, protocol or path.stem, source=str(path))


def parse_config(raw: dict, protocol: str, source: str = "config") -> Config:
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise UsageError(f"{source}: unknown section [{sorted(unknown)[0]}]")
    sections = {name: _parse_section(raw.get(name, {}), cls, name, source) for name, cls in SECTIONS.items()}
    config = Config(protocol=protocol, **sections)
    for spec in config.estimators.plugins:  # before validation: their names are valid estimators
        plugins.load(spec, origin=f"{source}: estimators.plugins")
    _validate(config, source)
    return config


def _parse_section(raw, cls, section: str, source: str):
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: [{section}] must be a table")
    fields = {f.name.rstrip("_"): f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise UsageError(f"{source}: unknown key {section}.{key}")
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = f.metadata.get("like", default)
        values[f.name] = _coerce(value, default, f"{section}.{key}", source)
    return cls(**values)


def _coerce(value, default, key: str, source: str):
    """Check value against the type of the field's default (TOML gives ints where floats are meant)."""
    bad = UsageError(f"{source}: {key} = {value!r} should be like {default!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(default, tuple):
        kind = type(default[0])
        if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise bad
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise bad
        return {k: _coerce(v, 0.0, f"{key}.{k}", source) for k, v in value.items()}
    raise AssertionError(f"no rule for {key}")


def _validate(c: Config, source: str) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(f"{source}: {message}")

    d = c.data
    need(d.dataset in DATASETS, f"data.dataset = {d.dataset!r}: choose from {', '.join(DATASETS)}")
    need(d.tasks >= 1, "data.tasks must be at least 1")
    need(d.importance_from in ("validation", "train"), "data.importance_from must be 'validation' or 'train'")
    need(d.train_images >= 1 and d.validation_images >= (1 if d.importance_from == "validation" else 0),
         "data.train_images must be ≥ 1, data.validation_images ≥ 1 (≥ 0 with importance_from = 'train')")
    need(d.train_images + d.validation_images <= MNIST_TRAIN_IMAGES,
         f"data.train_images + data.validation_images must not exceed {MNIST_TRAIN_IMAGES}")
    importance_pool = d.validation_images if d.importance_from == "validation" else d.train_images
    need(1 <= d.importance_samples <= importance_pool,
         f"data.importance_samples must be between 1 and data.{d.importance_from}_images")
    need(1 <= d.test_images <= 10000, "data.test_images must be between 1 and 10000")
    need(d.permutation_seed >= -1, "data.permutation_seed must be ≥ 0, or -1 for the run's seed")
    need(d.permutation_seed == -1 or d.sequence == "permuted",
         "data.permutation_seed is for data.sequence = 'permuted'")
    _validate_sequence(d, need)
    need(len(c.model.hidden) >= 1 and all(h >= 1 for h in c.model.hidden), "model.hidden must be positive sizes")
    need(c.model.leaky_relu_slope >= 0, "model.leaky_relu_slope must be ≥ 0")
    _validate_model(c.model, need)
    t = c.training
    need(t.optimizer in ("adam", "sgd"), f"training.optimizer = {t.optimizer!r}: choose 'adam' or 'sgd'")
    need(t.lr > 0, "training.lr must be > 0")
    need(t.batch_size >= 1 and t.epochs >= 1, "training.batch_size and training.epochs must be ≥ 1")
    need(t.iterations >= 0, "training.iterations must be ≥ 0 (0: train by epochs)")
    need(t.adam_state in ADAM_STATES,
         f"training.adam_state = {t.adam_state!r}: choose from {', '.join(map(repr, ADAM_STATES))}")
    need(t.adam_state == "fresh" or t.optimizer == "adam",
         f"training.adam_state = {t.adam_state!r} needs training.optimizer = 'adam'")
    for name, lam in c.penalty.lambda_.items():
        need(name in drivers() and name != "none", f"penalty.lambda has unknown driver {name!r}")
        need(lam >= 0, f"penalty.lambda.{name} = {lam} must be ≥ 0")
    e = c.estimators
    unknown = [name for name in e.observe if name not in plugins.estimator_names()]
    need(not unknown, f"estimators.observe: unknown estimator {unknown[0]!r}" if unknown else "")
    need(e.batch_size >= 1, "estimators.batch_size must be ≥ 1")
    need(e.si_xi > 0, "estimators.si_xi must be > 0")
    need(e.si_gradient in ("task", "total"), "estimators.si_gradient must be 'task' or 'total'")
    need(e.si_clamp_max >= 0, "estimators.si_clamp_max must be > 0, or 0 for no bound")
    need(e.fis_batched_batch_size >= 1, "estimators.fis_batched_batch_size must be ≥ 1")
    need(e.fis_batched_batchnorm in BATCHNORM_MODES, "estimators.fis_batched_batchnorm must be 'eval' or 'train'")
    need(e.accumulation in ("sum", "online", "blend"), "estimators.accumulation must be 'sum', 'online' or 'blend'")
    need(0 < e.online_gamma <= 1, "estimators.online_gamma must be in (0, 1]")
    # α = 1 would keep Ω at its start, 0: no penalty ever
    need(0 <= e.blend_alpha < 1, "estimators.blend_alpha must be in [0, 1)")
    need(0 < c.analysis.top_k_percent <= 100, "analysis.top_k_percent must be in (0, 100]")


def refuse_carried_adam(config: Config, command: str) -> None:
    """For the commands that train a cell apart from its seed's chain (tune, lambda-curve, verify): a UsageError
    if the protocol carries Adam's state from seed to seed, which only `run`'s chains give."""
    if config.training.adam_state == "carried":
        raise UsageError(f"{command}: protocol {config.protocol} has training.adam_state = 'carried', whose cells "
                         "depend on the seeds before them; only `run` trains such chains")


def check_chain_runs_here(config: Config, parallel: int, ray: bool) -> None:
    """`run` with training.adam_state = "carried" trains each driver's seeds as one chain, one cell after the other
    in this process: a UsageError with --parallel K > 1 or --executor ray."""
    if config.training.adam_state == "carried" and (parallel > 1 or ray):
        raise UsageError(f"training.adam_state = 'carried' trains each driver's seeds as one chain, one cell after "
                         f"the other in this process: drop {'--parallel' if parallel > 1 else '--executor ray'}")


def _validate_sequence(d: DataConfig, need) -> None:
    need(d.sequence in SEQUENCES, f"data.sequence = {d.sequence!r}: choose from {', '.join(SEQUENCES)}")
    need(d.split_type in SPLIT_TYPES, f"data.split_type = {d.split_type!r}: choose from {', '.join(SPLIT_TYPES)}")
    need(d.split_type == "task" or d.sequence == "split" and not d.factory,
         f"data.split_type = {d.split_type!r} is for data.sequence = 'split'")
    need(not d.angles or d.sequence == "rotated", "data.angles is for data.sequence = 'rotated'")
    need(not d.rotations or d.sequence == "sequence", "data.rotations is for data.sequence = 'sequence'")
    need(not d.datasets or d.sequence == "sequence" or d.factory,
         "data.datasets is for data.sequence = 'sequence' or a data.factory")
    unknown = [name for name in d.datasets if name not in DATASETS]
    need(not unknown, f"data.datasets: unknown dataset {unknown[0]!r} (choose from {', '.join(DATASETS)})"
         if unknown else "")
    if d.factory:  # the factory's sequence replaces the kinds below
        return
    if d.sequence == "rotated":
        need(not d.angles or len(d.angles) == d.tasks, "data.angles must give one angle per task (data.tasks)")
        need(d.max_angle > 0, "data.max_angle must be > 0")
    if d.sequence == "split":
        pairs = 10 // SPLIT_CLASSES_PER_TASK
        need(d.tasks <= pairs, f"data.tasks must be at most {pairs} for split (one pair of classes per task)")
    if d.sequence == "sequence":
        need(len(d.datasets) == d.tasks, "data.datasets must name one dataset per task (data.tasks)")
        need(not d.rotations or len(d.rotations) == d.tasks,
             "data.rotations must give one angle per task (data.tasks), or none")


def _validate_model(m: ModelConfig, need) -> None:
    need(m.kind in MODEL_KINDS, f"model.kind = {m.kind!r}: choose from {', '.join(MODEL_KINDS)}")
    if m.kind != "conv" or m.factory:
        return
    need(len(m.channels) >= 1 and len(m.channels) == len(m.kernels) == len(m.pools),
         "model.channels, model.kernels and model.pools must be equally long, one entry per block")
    need(all(v >= 1 for v in (*m.channels, *m.kernels, *m.pools)),
         "model.channels, model.kernels and model.pools must be ≥ 1")
    side = IMAGE_SIDE
    for kernel, pool in zip(m.kernels, m.pools):
        side = (side - kernel + 1) // pool
        need(side >= 1, f"model: the blocks shrink a {IMAGE_SIDE}×{IMAGE_SIDE} image to nothing "
                        "(smaller kernels or pools)")
