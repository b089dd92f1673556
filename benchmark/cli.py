"""python -m benchmark run | report …  — bad input ends in one line on stderr and exit status 2, before the
store is touched."""

import argparse
import os
import shlex
import signal
import sys

from benchmark.config import DRIVERS, PROTOCOLS, Config, load_config
from benchmark.errors import UsageError

DATA_DIR_ENV = "BENCHMARK_DATA_DIR"


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


def parse_drivers(text: str) -> list[str]:
    if text == "all":
        return list(DRIVERS)
    drivers = [d.strip() for d in text.split(",") if d.strip()]
    unknown = [d for d in drivers if d not in DRIVERS]
    if unknown or not drivers:
        raise UsageError(f"unknown driver {unknown[0] if unknown else text!r} (choose from all, {', '.join(DRIVERS)})")
    return list(dict.fromkeys(drivers))


def parse_lambdas(text: str) -> dict[str, float]:
    """'mas=4.5,fis=41' → {'mas': 4.5, 'fis': 41.0}."""
    lambdas = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--lambda expects estimator=value[,estimator=value…], got {item!r}")
        if name not in DRIVERS or name == "none":
            raise UsageError(f"--lambda: unknown estimator {name!r} (choose from {', '.join(DRIVERS[1:])})")
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
    run = commands.add_parser("run", help="train every (driver, seed) and record it in MLflow")
    run.add_argument("--protocol", default="paper", help=f"shipped protocol: {', '.join(PROTOCOLS)} (default paper)")
    run.add_argument("--config", metavar="FILE", help="a protocol file of your own (copy one from benchmark/protocols)")
    run.add_argument("--drivers", default="all", help=f"comma list of {', '.join(DRIVERS)}, or all (default)")
    run.add_argument("--seeds", type=int_at_least(1), default=1, help="number of seeds (default 1)")
    run.add_argument("--first-seed", type=int_at_least(0), default=0, help="seeds are first-seed … first-seed+seeds-1")
    run.add_argument("--lambda", dest="lambdas", metavar="EST=VALUE,…", help="override λ, e.g. mas=4.5,fis=41")
    run.add_argument("--log-importances", choices=["final", "all", "none"], default="final",
                     help="which tasks' importances are stored as artifacts (default final)")
    run.add_argument("--data-dir", default=None,
                     help=f"folder holding MNIST/raw (default ${DATA_DIR_ENV} or ./data)")
    run.add_argument("--no-download", action="store_true", help="never try to download MNIST")
    run.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI "
                     "or sqlite:///mlruns/mlflow.db)")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")

    report = commands.add_parser("report", help="figures, tables and the paper's claims from a sweep's runs")
    report.add_argument("--experiment", default="pmnist-paper",
                        help="report on the latest sweep of this experiment (default pmnist-paper)")
    report.add_argument("--sweep", action="append", metavar="RUN_ID",
                        help="a sweep's parent run id instead (repeat to combine sweeps)")
    report.add_argument("--runs", metavar="ID,…", help="cell run ids instead of a sweep")
    report.add_argument("--out", default="report", help="output folder (default ./report)")
    report.add_argument("--param", default="weight", choices=["weight", "bias", "all"],
                        help="which entries of a layer the figures and claims correlate (default weight)")
    report.add_argument("--kind", default="accumulated", choices=["accumulated", "increment"],
                        help="accumulated importances (what the penalty sees, default) or each task's own")
    report.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (as for run)")
    return parser


def resolve_lambdas(config: Config, args) -> dict:
    from benchmark.experiment import Lambda

    source = "config" if args.config else "default"
    lambdas = {name: Lambda(value, source) for name, value in config.penalty.lambda_.items()}
    if args.lambdas:
        lambdas.update({name: Lambda(value, "user") for name, value in parse_lambdas(args.lambdas).items()})
    return lambdas


def command_run(args) -> int:
    config = load_config(protocol=None if args.config else args.protocol, path=args.config)
    drivers = parse_drivers(args.drivers)
    lambdas = resolve_lambdas(config, args)
    missing = [d for d in drivers if d != "none" and d not in lambdas]
    if missing:
        raise UsageError(f"no λ for driver {missing[0]!r}: add it to [penalty] lambda or pass --lambda")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")

    from benchmark.experiment import run_sweep
    from benchmark.scenario import load_mnist, make_splits
    from tracking import Store, StoreError, resolve_tracking_uri

    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV) or "data"
    splits = make_splits(config.data, load_mnist(data_dir, download=not args.no_download), device)
    try:
        store = Store(resolve_tracking_uri(args.tracking_uri))
    except StoreError as e:
        raise UsageError(str(e)) from None
    command = "python -m benchmark " + shlex.join(sys.argv[1:])
    statuses = run_sweep(store, config, drivers, seeds, lambdas, splits, args.log_importances, command)
    failed = [f"{d}/seed {s}" for (d, s), status in statuses.items() if status != "FINISHED"]
    print(f"{len(statuses) - len(failed)} of {len(statuses)} runs finished in experiment "
          f"pmnist-{config.protocol} of {store.uri}" + (f"; failed: {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def command_report(args) -> int:
    from pathlib import Path

    from benchmark.report import build_report
    from tracking import Store, StoreError, resolve_tracking_uri

    try:
        store = Store(resolve_tracking_uri(args.tracking_uri), must_exist=True)
    except StoreError as e:
        raise UsageError(str(e)) from None
    runs = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else None
    index = build_report(store, Path(args.out), experiment=args.experiment, sweep_ids=args.sweep, run_ids=runs,
                         param=args.param, kind=args.kind, command="python -m benchmark " + shlex.join(sys.argv[1:]))
    print(f"report written to {index}", file=sys.stderr)
    return 0


COMMANDS = {"run": command_run, "report": command_report}


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # a killed sweep marks its runs KILLED, like Ctrl-C
    try:
        args = make_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"benchmark: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmark: interrupted; finished runs are kept, the interrupted one is marked KILLED",
              file=sys.stderr)
        return 130
