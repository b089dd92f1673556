"""python -m benchmark run | report …  — bad input ends in one line on stderr and exit status 2, before the
store is touched."""

import argparse
import dataclasses
import datetime
import os
import shlex
import signal
import sys

from benchmark import plugins
from benchmark.cluster.jobs import RaySettings
from benchmark.config import (
    CURVE_FIRST_SEED,
    DATASETS,
    PROTOCOLS,
    TUNING_FIRST_SEED,
    Config,
    check_chain_runs_here,
    load_config,
    refuse_carried_adam,
)
from benchmark.drivers import CURVE_DRIVERS, PAPER_DRIVERS, drivers, estimator_drivers
from benchmark.errors import UsageError
from benchmark.lambdas import MIN_TUNED_TRIALS, SOURCES

DATA_DIR_ENV = "BENCHMARK_DATA_DIR"
# --executor ray's options, unset (None) unless given: given without --executor ray, they are an error
RAY_OPTIONS = {"ray_address": "address", "ray_cpus": "cpus", "ray_gpus": "gpus", "ray_max_retries": "max_retries",
               "workers": "workers"}  # the option's dest → its RaySettings field


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + error; one line is what we promise
        raise UsageError(message)


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, not {value}")
        return value

    return parse


def float_at_least(minimum: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not minimum <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number ≥ {minimum:g}, not {text}")
        return value

    return parse


def lambda_range(text: str) -> tuple[float, float]:
    """LOW,HIGH: 0 < LOW < HIGH < ∞, for a log-uniform λ."""
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (two numbers, e.g. 1e-3,1e9)") from None
    if not 0 < low < high < float("inf"):
        raise argparse.ArgumentTypeError(f"needs 0 < LOW < HIGH < inf for a log-uniform λ, not {text}")
    return low, high


def penalised_choices() -> str:
    """For messages: every driver but none."""
    return f"{', '.join(estimator_drivers()[1:])}, or a control: uniform, shuffled-<estimator>, layermean-<estimator>"


def parse_drivers(text: str) -> list[str]:
    if text in ("paper", "all"):
        return list(PAPER_DRIVERS if text == "paper" else estimator_drivers())
    chosen = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in drivers()]
    if unknown or not chosen:
        raise UsageError(f"unknown driver {unknown[0] if unknown else text!r} "
                         f"(choose from paper, all, none, {penalised_choices()})")
    return list(dict.fromkeys(chosen))


def parse_lambdas(text: str) -> dict[str, float]:
    """'mas=4.5,fis=41' → {'mas': 4.5, 'fis': 41.0}."""
    lambdas = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--lambda expects estimator=value[,estimator=value…], got {item!r}")
        if name not in drivers() or name == "none":
            raise UsageError(f"--lambda: unknown driver {name!r} (choose from {penalised_choices()})")
        try:
            lam = float(value)
        except ValueError:
            raise UsageError(f"--lambda: {name}={value!r} is not a number") from None
        if not lam >= 0 or lam == float("inf"):
            raise UsageError(f"--lambda: {name}={value} must be a finite number ≥ 0")
        lambdas[name] = lam
    return lambdas


def make_parser() -> Parser:
    parser = Parser(prog="python -m benchmark", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    commands.required = True

    # options every command that trains shares
    training = Parser(add_help=False)
    # no default here: the parsers below share this action, and a default set on one would be every command's
    training.add_argument("--protocol", help=f"shipped protocol: {', '.join(PROTOCOLS)} (default paper; "
                                             "sparsify's: sparsify)")
    training.add_argument("--config", metavar="FILE",
                          help="a protocol file of your own (copy one from benchmark/protocols)")
    training.add_argument("--data-dir", default=None,
                          help=f"folder holding MNIST/raw, FashionMNIST/raw (default ${DATA_DIR_ENV} or ./data)")
    training.add_argument("--dataset", choices=list(DATASETS), default=None,
                          help="permute the pixels of this dataset (default: the protocol's, mnist)")
    training.add_argument("--no-download", action="store_true", help="never try to download the dataset")
    training.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                          help="default: cuda if available")
    training.add_argument("--estimator-plugin", action="append", default=[], metavar="MODULE:CLASS",
                          help="an estimator of your own (repeatable; README, 'Bring your own')")
    cluster = Parser(add_help=False)
    cluster.add_argument("--executor", choices=["local", "ray"], default="local",
                         help="local: in this process (default); ray: as tasks on a Ray cluster (README, 'Running on "
                              "a cluster'; pip install -e '.[ray]')")
    cluster.add_argument("--ray-address", metavar="HOST:PORT", help="the Ray head to join (default: $RAY_ADDRESS, the "
                         "cluster `ray start` runs on this machine, else a new one on this machine)")
    cluster.add_argument("--ray-cpus", type=float_at_least(0), metavar="N", help="CPUs per Ray task (default 1)")
    cluster.add_argument("--ray-gpus", type=float_at_least(0), metavar="N",
                         help="GPUs per Ray task, a fraction to share one; > 0 trains on CUDA (default 0: on CPU)")
    stores = Parser(add_help=False)
    stores.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")
    stores.add_argument("--storage", default=None, help="Optuna storage: a URL (postgresql://…) or a journal file "
                        "(default $BENCHMARK_OPTUNA_STORAGE or mlruns/optuna.journal)")

    run = commands.add_parser("run", parents=[training, stores, cluster],
                              help="train every (driver, seed), record it in MLflow")
    run.add_argument("--drivers", default="paper", help=f"comma list of none, {penalised_choices()}; paper (the "
                     f"default): {', '.join(PAPER_DRIVERS)}; all: every estimator (the others need a λ: --lambda or "
                     "tune)")
    run.add_argument("--seeds", type=int_at_least(1), default=1, help="number of seeds (default 1)")
    run.add_argument("--first-seed", type=int_at_least(0), default=0, help="seeds are first-seed … first-seed+seeds-1")
    run.add_argument("--lambda", dest="lambdas", metavar="DRIVER=VALUE,…",
                     help="λ per driver, e.g. mas=4.5,fis=41: wins over every other source")
    run.add_argument("--lambda-source", choices=SOURCES, default="auto",
                     help="auto (default): a tuned λ from a study of at least --min-tuned-trials complete trials, "
                          "else the protocol's; tuned: every driver's study, however small; protocol: the protocol's")
    run.add_argument("--min-tuned-trials", type=int_at_least(1), default=MIN_TUNED_TRIALS, metavar="N",
                     help=f"with --lambda-source auto, smaller studies are ignored (default {MIN_TUNED_TRIALS})")
    run.add_argument("--log-importances", choices=["final", "all", "none"], default="final",
                     help="which tasks' importances are stored as artifacts (default final)")
    run.add_argument("--parallel", type=int_at_least(1), default=1, metavar="K",
                     help="train up to K cells together, whatever their drivers, stacked in one training step: pays "
                          "on a GPU; on a CPU the same results as one at a time (default 1)")
    run.add_argument("--ray-max-retries", type=int_at_least(0), metavar="N",
                     help="with --executor ray, run a group again up to N times when its worker dies (default "
                          f"{RaySettings().max_retries})")

    tune = commands.add_parser("tune", parents=[training, stores, cluster], help="find λ per driver with Optuna")
    tune.add_argument("--driver", default=None, help=f"one of {penalised_choices()}; or all estimators")
    tune.add_argument("--trials", type=int_at_least(1), default=20,
                      help="trials this command runs per study, split between --workers (default 20)")
    tune.add_argument("--workers", type=int_at_least(1), metavar="N",
                      help="with --executor ray, N Ray tasks share each study's trials (default 1)")
    tune.add_argument("--tuning-seeds", type=int_at_least(1), default=1,
                      help="seeds per trial, from 10000 on: never the seeds run reports (default 1)")
    tune.add_argument("--sampler-seed", type=int, default=None, help="seed of the TPE sampler")
    tune.add_argument("--show", action="store_true", help="print the best λ of every study in the storage")
    tune.add_argument("--no-pruning", action="store_true",
                      help="run every trial to the last task (the median pruner stops most trials near a flat "
                           "optimum; use this to reach a count of complete trials)")
    tune.add_argument("--lambda-range", type=lambda_range, default=None, metavar="LOW,HIGH",
                      help="draw λ log-uniformly from [LOW, HIGH] (default 1e-3,1e5); a study keeps the range its "
                           "first trials used")
    tune.add_argument("--confirm", type=int_at_least(2), metavar="K",
                      help="run no trials: rerun each study's K best λ on the next tuning seed (10000 + "
                           "--tuning-seeds) and record whether its best λ stays the best")

    curve = commands.add_parser("lambda-curve", parents=[training, stores],
                                help="final validation ACC over a λ grid per driver, then test ACC at each best λ")
    curve.add_argument("--drivers", default=",".join(CURVE_DRIVERS),
                       help=f"comma list of penalised drivers (default {','.join(CURVE_DRIVERS)})")
    curve.add_argument("--centers", default="paper-tuned", metavar="PROTOCOL",
                       help="shipped protocol whose λ centre each driver's grid (a control without one: its "
                            "estimator's); --lambda overrides (default paper-tuned)")
    curve.add_argument("--lambda", dest="lambdas", metavar="DRIVER=VALUE,…", help="grid centres of your own")
    curve.add_argument("--points", type=int_at_least(2), default=7, help="λ values per driver (default 7)")
    curve.add_argument("--decades", type=float_at_least(0.1), default=3.0,
                       help="decades the grid spans, centred on the centre in log10 (default 3)")
    curve.add_argument("--seeds", type=int_at_least(1), default=3, help="curve seeds per λ (default 3)")
    curve.add_argument("--test-seeds", type=int_at_least(1), default=5,
                       help="fresh seeds (0 …) run at each complete curve's best λ (default 5)")
    curve.add_argument("--parallel", type=int_at_least(1), default=1, metavar="K",
                       help="train up to K cells stacked, as run --parallel (default 1)")
    curve.add_argument("--out", default="results/lambda-response",
                       help="folder rewritten after every finished curve point (default results/lambda-response)")
    curve.add_argument("--allow-dirty", action="store_true",
                       help="write under results/ from a working tree with uncommitted changes (recorded per run)")
    curve.add_argument("--resume-from", metavar="FOLDER",
                       help="count the cells FOLDER/cells.csv publishes (an earlier computation with the same "
                            "options, e.g. on another machine) as finished")
    curve.add_argument("--publish-only", action="store_true",
                       help="train nothing: write --out from the finished cells (the store's and --resume-from's)")

    sparsify = commands.add_parser("sparsify", parents=[training], help="accuracy as the weights are zeroed in the "
                                   "order of each importance (sparsification curves), into experiment sparsify")
    sparsify.set_defaults(protocol_default="sparsify")
    sparsify.add_argument("--seeds", type=int_at_least(1), help="number of seeds (default 5)")
    sparsify.add_argument("--first-seed", type=int_at_least(0), help="seeds are first-seed … first-seed+seeds-1 "
                          "(default 0)")
    sparsify.add_argument("--from-run", metavar="RUN_ID", help="instead of training: a cell run of `run "
                          "--log-importances all`, after --task, read on each of its tasks up to it")
    sparsify.add_argument("--task", type=int_at_least(0), help="with --from-run: after which task (default its last)")
    sparsify.add_argument("--out", default="sparsify", help="folder for the figure, tables and README (default "
                          "./sparsify)")
    sparsify.add_argument("--allow-dirty", action="store_true",
                          help="write under results/ although the code has uncommitted changes (the README says so)")
    sparsify.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (as for run)")

    report = commands.add_parser("report", help="figures, tables and the paper's claims from a sweep's runs")
    report.add_argument("--experiment", action="append", metavar="NAME",
                        help="report on the latest sweep of this experiment; repeat to put several side by side "
                             "(default: the latest sweep in the store, whatever its experiment)")
    report.add_argument("--sweep", action="append", metavar="RUN_ID",
                        help="a sweep's parent run id instead (repeat to combine sweeps)")
    report.add_argument("--runs", metavar="ID,…", help="cell run ids instead of a sweep")
    report.add_argument("--out", default="report", help="output folder (default ./report)")
    report.add_argument("--param", default="weight", choices=["weight", "bias", "all"],
                        help="which entries of a layer the figures and claims correlate (default weight)")
    report.add_argument("--kind", default="accumulated", choices=["accumulated", "increment"],
                        help="accumulated importances (what the penalty sees, default) or each task's own")
    report.add_argument("--compact", action="store_true",
                        help="PNG figures only, at 72 dpi, correlations_summary.csv gzipped to 6 digits: how results/ "
                             "publishes a report within 5 MB")
    report.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (as for run)")
    report.add_argument("--allow-dirty", action="store_true",
                        help="write under results/ although the code or the runs have uncommitted changes (the "
                             "report says so)")

    # options every command that analyses a sweep's logged runs shares
    analysis = Parser(add_help=False)
    analysis.add_argument("--experiment", metavar="NAME",
                          help="the latest sweep of this experiment (default: the latest sweep in the store)")
    analysis.add_argument("--sweep", metavar="RUN_ID", help="a sweep's parent run id instead")
    analysis.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (as for run)")
    analysis.add_argument("--allow-dirty", action="store_true",
                          help="write under results/ although the code has uncommitted changes")

    predict = commands.add_parser("predict-forgetting", parents=[analysis], help="predicted (½ Σ Ω Δθ²) against "
                                  "actual rise of every old task's test loss, per estimator and layer, from a sweep of "
                                  "`run --log-importances all`")
    predict.add_argument("--out", default="forgetting-prediction",
                         help="output folder (default ./forgetting-prediction)")

    library = commands.add_parser("library-practice", parents=[analysis], help="the libraries' Fisher shortcuts "
                                  "against the exact Fisher, per layer, on the networks a sweep trained")
    library.add_argument("--task", type=int_at_least(0),
                         help="each network after this task, on its importance samples (default the last)")
    library.add_argument("--out", default="library-practice", help="output folder (default ./library-practice)")
    library.add_argument("--data-dir", default=None,
                         help=f"folder holding MNIST/raw, FashionMNIST/raw (default ${DATA_DIR_ENV} or ./data)")
    library.add_argument("--no-download", action="store_true", help="never try to download the dataset")

    verify = commands.add_parser("verify", help="rerun cells of a published results folder here and judge them "
                                 "against its cells.csv")
    verify.add_argument("folder", help="a report folder with cells.csv, e.g. results/smoke-verify")
    verify.add_argument("--cells", default="2", metavar="K | [PROTOCOL/]DRIVER:SEED[@LAMBDA],…",
                        help="how many cells to rerun (the first seed of each driver first; default 2), or which "
                             "(the protocol and λ narrow a name where the folder holds several)")
    verify.add_argument("--tracking-uri", default=None,
                        help="record the reruns in this MLflow store (default: a throwaway one)")
    verify.add_argument("--data-dir", default=None,
                        help=f"folder holding MNIST/raw, FashionMNIST/raw (default ${DATA_DIR_ENV} or ./data)")
    verify.add_argument("--no-download", action="store_true", help="never try to download the dataset")

    compare = commands.add_parser("compare", help="two published results folders paired by seed from their cells.csv: "
                                  "each driver's B − A with its interval, no training")
    compare.add_argument("folder_a", metavar="A", help="a results folder with cells.csv, e.g. results/paper")
    compare.add_argument("folder_b", metavar="B", help="the folder whose difference from A is wanted")
    compare.add_argument("--out", metavar="FILE", help="also write the table, a row per driver and measure, as CSV")
    compare.add_argument("--first-seed", type=int_at_least(0), default=0,
                         help="pair only the seeds from this one on (1: leave out the fresh first cell of an "
                              "adam_state = 'carried' chain, the same in both)")
    return parser


def command_line(argv: list[str]) -> str:
    return "python -m benchmark " + shlex.join(argv)


def portable_command(argv: list[str], machine_options: tuple[str, ...]) -> str:
    """The command line without the options that name this machine's places (store, data folder): what a results
    folder prints as the command that regenerates it anywhere."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in machine_options:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in machine_options)):
            kept.append(arg)
    return "python -m benchmark " + shlex.join(kept)


def read_config(args) -> Config:
    """The protocol, after the estimator plugins it may name: installed ones, then --estimator-plugin's."""
    plugins.load_installed()
    for spec in args.estimator_plugin:
        plugins.load(spec)
    protocol = args.protocol or getattr(args, "protocol_default", "paper")
    config = load_config(protocol=None if args.config else protocol, path=args.config)
    if args.dataset:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, dataset=args.dataset))
    return config


def data_dir(args) -> str:
    return args.data_dir or os.environ.get(DATA_DIR_ENV) or "data"


def load_data(config: Config, args, device: str | None = None):
    """The protocol's datasets, each split as it says, on `device` (default: the chosen one): {dataset name:
    splits}."""
    import torch

    from benchmark.scenario import load_splits, make_task_sequence

    if device is None:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available")
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    splits = load_splits(config.data, data_dir(args), not args.no_download, device)
    if config.data.factory:
        make_task_sequence(config.data, splits, seed=0)  # checks what the factory returns, before anything is written
    return splits


def ray_options(args) -> RaySettings:
    """--ray-* and --workers, unset ones at their defaults; a UsageError if one is given without --executor ray."""
    given = {name: value for name in RAY_OPTIONS if (value := getattr(args, name, None)) is not None}
    if given and args.executor != "ray":
        raise UsageError(f"--{next(iter(given)).replace('_', '-')} needs --executor ray")
    return RaySettings(**{RAY_OPTIONS[name]: value for name, value in given.items()})


def on_cluster(config: Config, args, settings: RaySettings):
    """For --executor ray, before the store is opened: every check of the cluster options, the data read here only to
    check it is there (each task reads its own) and the cluster joined. Returns (those splits, where the tasks find
    the data and which device they train on)."""
    from benchmark.cluster import head
    from benchmark.cluster.jobs import DataSource

    head.import_ray()
    device = head.task_device(args.device, settings.gpus)
    splits = load_data(config, args, device="cpu")
    head.connect(settings)
    return splits, DataSource(data_dir(args), not args.no_download, device)


def check_model(config: Config) -> None:
    """What the protocol's model and task sequence allow, before any data is read or anything written."""
    from benchmark.model import check_exact

    try:
        check_exact(config.model)
    except ValueError as e:
        m = config.model
        which = f"model.factory {m.factory!r}" if m.factory else f"model.kind = {m.kind!r}"
        raise UsageError(f"{which}: {e}") from None


def open_store(args, must_exist: bool = False):
    from tracking import Store, StoreError, resolve_tracking_uri

    try:
        return Store(resolve_tracking_uri(args.tracking_uri), must_exist=must_exist)
    except StoreError as e:
        raise UsageError(str(e)) from None


def resolve_lambdas(config: Config, drivers: list[str], args) -> tuple[dict, list[str]]:
    """λ per penalised driver (benchmark.lambdas), and the lines that say where each came from."""
    user = parse_lambdas(args.lambdas) if args.lambdas else {}  # bad λ is reported before any storage is opened
    from benchmark.lambdas import provenance, resolve_lambdas
    from benchmark.tuning import open_storage, resolve_storage

    storage = None if args.lambda_source == "protocol" else open_storage(resolve_storage(args.storage), create=False)
    lambdas, notes = resolve_lambdas(config, drivers, user, args.lambda_source, storage, from_file=bool(args.config),
                                     min_tuned_trials=args.min_tuned_trials)
    return lambdas, [provenance(driver, lam, config.protocol) for driver, lam in lambdas.items()] + \
        [f"note: {note}" for note in notes]


def command_run(args) -> int:
    if args.first_seed + args.seeds > TUNING_FIRST_SEED:
        raise UsageError(f"--first-seed/--seeds: run reports seeds below {TUNING_FIRST_SEED}, not "
                         f"{args.first_seed + args.seeds - 1}; from {TUNING_FIRST_SEED} on they are tune's and "
                         "lambda-curve's")
    options = ray_options(args)
    config = read_config(args)
    check_chain_runs_here(config, args.parallel, ray=args.executor == "ray")
    chosen = parse_drivers(args.drivers)
    lambdas, provenance = resolve_lambdas(config, chosen, args)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    check_model(config)
    from benchmark.environment import experiment_name  # after the checks of the input: these import torch
    from benchmark.sweep import run_here, run_sweep

    if args.executor == "ray":
        from benchmark.cluster.head import RayExecutor

        splits, data = on_cluster(config, args, options)
        executor, device = RayExecutor(data, options), data.device
    else:
        splits, device, executor = load_data(config, args), None, run_here
    store = open_store(args)
    print("\n".join(provenance), file=sys.stderr)  # after every check of the input, before the first cell
    statuses, reused = run_sweep(store, config, chosen, seeds, lambdas, splits, args.log_importances,
                                 command_line(args.argv), args.parallel, executor, device)
    failed = [f"{d}/seed {s}" for (d, s), status in statuses.items() if status != "FINISHED"]
    print(f"{len(statuses) - len(failed)} of {len(statuses)} runs finished in experiment "
          f"{experiment_name(config)} of {store.uri}" + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; resumed: {len(reused)} were already finished with the same configuration" if reused else ""),
          file=sys.stderr)
    return 1 if failed else 0


def command_tune(args) -> int:
    from benchmark import tuning

    storage_url = tuning.resolve_storage(args.storage)
    if args.show:
        storage = tuning.open_storage(storage_url, create=False)
        rows = tuning.study_summaries(storage) if storage is not None else []
        if not rows:
            print(f"no study in {tuning.redact(storage_url)}")
        for r in rows:
            best = "no completed trial" if r["best_lambda"] is None else \
                f"best λ {r['best_lambda']:.4g} (validation ACC {r['best_value']:.4f})"
            drawn = "" if r["lambda_range"] is None else f" over [{r['lambda_range'][0]:g}, {r['lambda_range'][1]:g}]"
            print(f"{r['study']}: {best}{drawn}; trials complete {r['complete']}, pruned {r['pruned']}, "
                  f"failed {r['failed']}, running {r['running']}"
                  + (f"; {r['confirmation'].line()}" if r["confirmation"] else ""))
        return 0
    if args.driver is None:
        raise UsageError("tune needs --driver (or --show)")
    config = read_config(args)  # first: it loads the plugins, whose names are drivers
    to_tune = list(estimator_drivers()[1:]) if args.driver == "all" else [args.driver]
    if to_tune[0] not in drivers()[1:]:
        raise UsageError(f"unknown driver {args.driver!r} to tune (choose from all, {penalised_choices()})")
    if not config.data.validation_images:
        raise UsageError(f"tune: protocol {config.protocol} has no validation split (data.validation_images = 0): "
                         "tuning on it would read the test set; tune on a protocol with one (e.g. paper)")
    refuse_carried_adam(config, "tune")
    options = ray_options(args)
    check_model(config)
    storage = tuning.open_storage(storage_url)
    seeds = list(range(TUNING_FIRST_SEED, TUNING_FIRST_SEED + args.tuning_seeds))
    if args.confirm:
        if args.executor == "ray":
            raise UsageError("tune --confirm runs in this process: drop --executor ray")
        candidates = {driver: tuning.best_trials(storage, driver, config, args.confirm) for driver in to_tune}
        splits, store = load_data(config, args), open_store(args)
        for driver, (study, complete) in candidates.items():
            result = tuning.confirm(store, study, complete, config, driver, seeds[-1] + 1, splits,
                                    command_line(args.argv))
            print(f"{study.study_name}: {result.line()}")
        return 0
    wanted_range = args.lambda_range or tuning.LAMBDA_RANGE
    for driver in to_tune:
        tuning.check_range(storage, driver, config, wanted_range)
    if args.executor == "ray":
        from benchmark.cluster.head import RayTuner

        _, data = on_cluster(config, args, options)
        tuner = RayTuner(data, options)
    else:
        tuner = tuning.tune_here(load_data(config, args))
    store = open_store(args)
    failures = tuner(tuning.Studies(store, storage, storage_url, config, to_tune, args.trials, seeds,
                                    command_line(args.argv), args.sampler_seed, not args.no_pruning, wanted_range))
    for driver in to_tune:
        print_study(tuning.load_study(storage, driver, config), storage_url)
    for failure in failures:
        print(f"failed Ray task: {failure}", file=sys.stderr)
    return 1 if failures else 0


def print_study(study, storage_url: str) -> None:
    from benchmark.tuning import redact

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = f"best λ {study.best_params['lambda']:.4g} (validation ACC {study.best_value:.4f})" if complete \
        else "no completed trial yet"
    print(f"{study.study_name}: {best} after {len(study.trials)} trials in {redact(storage_url)}", file=sys.stderr)


def command_lambda_curve(args) -> int:
    from pathlib import Path

    from benchmark.environment import CELLS_FILE
    from benchmark.lambda_curve import run_lambda_curve
    from estimators.names import base_estimator

    config = read_config(args)
    chosen = [d for d in parse_drivers(args.drivers) if d != "none"]
    if not chosen:
        raise UsageError("lambda-curve: --drivers names no penalised driver")
    if not config.data.validation_images:
        raise UsageError(f"lambda-curve: protocol {config.protocol} has no validation split (data.validation_images "
                         "= 0): its curve would be read on the test set")
    refuse_carried_adam(config, "lambda-curve")
    if args.centers not in PROTOCOLS:
        raise UsageError(f"--centers: unknown protocol {args.centers!r} (choose from {', '.join(PROTOCOLS)})")
    centers = dict(load_config(protocol=args.centers).penalty.lambda_)
    centers.update(parse_lambdas(args.lambdas) if args.lambdas else {})
    for driver in chosen:
        if driver not in centers and base_estimator(driver) in centers:
            centers[driver] = centers[base_estimator(driver)]
    missing = [d for d in chosen if not centers.get(d, 0) > 0]
    if missing:
        raise UsageError(f"lambda-curve: no λ > 0 to centre {missing[0]}'s grid on (give one: --lambda "
                         f"{missing[0]}=VALUE)")
    resume_from = Path(args.resume_from) if args.resume_from else None
    if resume_from is not None and not (resume_from / CELLS_FILE).is_file():
        raise UsageError(f"--resume-from: no {CELLS_FILE} in {resume_from}")
    check_model(config)
    refuse_dirty_results(args.out, args.allow_dirty)
    splits = load_data(config, args)
    store = open_store(args)
    seeds = list(range(CURVE_FIRST_SEED, CURVE_FIRST_SEED + args.seeds))
    # the command that regenerates the folder: neither this machine's places nor how this invocation resumed
    command = portable_command([a for a in args.argv if a != "--publish-only"],
                               ("--tracking-uri", "--data-dir", "--resume-from"))
    best = run_lambda_curve(store, config, chosen, centers, args.points, args.decades, seeds,
                            list(range(args.test_seeds)), splits, command, Path(args.out), args.parallel,
                            resume_from, train=not args.publish_only)
    for _, row in best.iterrows():
        print(f"{row.driver}: best λ {row.best_lambda:g} (validation ACC {row.val_ACC:.4f}, {row.curve_seeds} "
              f"seeds{'' if row.complete else ', curve incomplete'}{', at the grid edge' if row.at_edge else ''})",
              file=sys.stderr)
    return 0


def command_sparsify(args) -> int:
    from pathlib import Path

    if args.from_run is None and args.task is not None:
        raise UsageError("--task needs --from-run")
    given = [flag for flag, value in (("--seeds", args.seeds), ("--first-seed", args.first_seed),
                                      ("--config", args.config), ("--dataset", args.dataset)) if value is not None]
    if args.from_run is not None and (given or args.protocol is not None):
        raise UsageError(f"--from-run takes the run's own protocol and seed: drop {(given or ['--protocol'])[0]}")
    refuse_dirty_results(args.out, args.allow_dirty)
    from benchmark import sparsify  # after the checks of the input: it imports torch
    from benchmark.model import make_model

    if args.from_run is None:
        config = read_config(args)
        sparsify.check_model(make_model(config.model))
        first = args.first_seed or 0
        seeds = list(range(first, first + (args.seeds or sparsify.DEFAULT_SEEDS)))
        splits = load_data(config, args)
        store = open_store(args)
        sparsify.sparsify_trained(store, config, seeds, splits, command_line(args.argv), Path(args.out))
    else:
        store = open_store(args, must_exist=True)
        logged = sparsify.read_logged_run(store, args.from_run, args.task)
        sparsify.check_model(make_model(logged.config.model))
        sparsify.sparsify_logged(store, logged, load_data(logged.config, args), command_line(args.argv),
                                  Path(args.out))
    print(f"sparsification curves in experiment {sparsify.EXPERIMENT} of {store.uri}; summary in {args.out}/README.md",
          file=sys.stderr)
    return 0


def refuse_dirty_results(out: str, allow_dirty: bool) -> bool:
    """Whether `out` lies in results/; a UsageError there if the working tree is dirty and that is not allowed."""
    from benchmark.environment import git_dirty, inside_results

    for_results = inside_results(out)
    if for_results and not allow_dirty and git_dirty() == "True":
        raise UsageError(f"--out {out}: results/ publishes runs of committed code, and the working tree has "
                         "uncommitted changes (git status); commit them, or pass --allow-dirty")
    return for_results


def command_report(args) -> int:
    from pathlib import Path

    from benchmark.report import build_report
    from benchmark.report.collect import latest_sweep

    for_results = refuse_dirty_results(args.out, args.allow_dirty)
    store = open_store(args, must_exist=True)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    sweeps = args.sweep
    if not sweeps and not runs:
        sweeps = []
        for experiment in args.experiment or [None]:
            latest = latest_sweep(store, experiment)
            started = datetime.datetime.fromtimestamp(latest.start_time / 1000, tz=datetime.timezone.utc)
            print(f"report: the latest sweep {'of experiment ' + experiment if experiment else 'in the store'}: "
                  f"{latest.id} (experiment {latest.experiment}, started {started:%Y-%m-%d %H:%M} UTC, drivers "
                  f"{latest.tags.get('drivers', '?')}, seeds {latest.tags.get('seeds', '?')}); another: --experiment "
                  "NAME or --sweep RUN_ID", file=sys.stderr)
            sweeps.append(latest.id)
    index = build_report(store, Path(args.out), sweep_ids=sweeps, run_ids=runs, param=args.param, kind=args.kind,
                         command=command_line(args.argv), compact=args.compact,
                         for_results=for_results, allow_dirty=args.allow_dirty)
    print(f"report written to {index}", file=sys.stderr)
    return 0


def analysed_sweep(args):
    """For the commands that analyse a sweep's logged runs: (the store, the sweep read back) — --sweep, or the
    latest sweep of --experiment (of the whole store without) — after the check of --out."""
    from benchmark.report.collect import latest_sweep, load_sweep

    refuse_dirty_results(args.out, args.allow_dirty)
    store = open_store(args, must_exist=True)
    return store, load_sweep(store, [args.sweep or latest_sweep(store, args.experiment).id], None)


def command_predict_forgetting(args) -> int:
    from pathlib import Path

    from benchmark.forgetting_prediction import write

    store, sweep = analysed_sweep(args)
    readme = write(store, sweep, Path(args.out), portable_command(args.argv, ("--tracking-uri",)))
    print(f"written to {readme}", file=sys.stderr)
    return 0


def command_library_practice(args) -> int:
    from pathlib import Path

    from benchmark.library_practice import write

    store, sweep = analysed_sweep(args)
    command = portable_command(args.argv, ("--tracking-uri", "--data-dir"))
    readme = write(store, sweep, args.task, Path(args.out), command, data_dir(args), not args.no_download)
    print(f"written to {readme}", file=sys.stderr)
    return 0


def command_verify(args) -> int:
    from pathlib import Path

    from benchmark.verify import verify

    return verify(Path(args.folder), args.cells, args.tracking_uri, data_dir(args), not args.no_download)


def command_compare(args) -> int:
    from pathlib import Path

    from benchmark.compare import compare, markdown

    table, differing = compare(Path(args.folder_a), Path(args.folder_b), args.first_seed)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.6g")
    print(markdown(table, differing))
    return 0


COMMANDS = {"run": command_run, "tune": command_tune, "lambda-curve": command_lambda_curve, "report": command_report,
            "sparsify": command_sparsify, "predict-forgetting": command_predict_forgetting,
            "library-practice": command_library_practice,
            "verify": command_verify, "compare": command_compare}


def main(argv: list[str] | None = None) -> int:
    from tracking import interrupt

    # Ctrl-C and SIGTERM become KeyboardInterrupt (runs end KILLED), held while a store call is in progress
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        args = make_parser().parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else list(argv)  # what the results it writes say made them
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmark: interrupted; finished runs are kept, the interrupted one is marked KILLED",
              file=sys.stderr)
        return 130
