"""Your own importance estimator, model or task sequence, without editing the package.

Three ways to bring one, all naming a class as `module:Class`:
    python -m benchmark run --estimator-plugin my_module:MyEstimator …     (repeatable; also on tune)
    [estimators] plugins = ["my_module:MyEstimator"]                       (in a protocol file)
    an installed distribution's entry point in the group `cl_importance_bench.estimators`, e.g. in its
    pyproject.toml:  [project.entry-points."cl_importance_bench.estimators"]  mine = "my_module:MyEstimator"

The contract (README, "Bring your own"): a subclass of `estimators.Estimator` with a class attribute `name` — a
new name, lower-case letters, digits and _ — constructible with no arguments; `importance(model, x, y)` returns
{parameter name: tensor shaped like that parameter} for every parameter of the model. Its name is then an
observable estimator and a driver like a built-in one (with its own shuffled-/layermean- controls), correlated
with every other observed estimator; each run records the plugin's `module:Class` and, when an installed
distribution provides the module, that distribution's name and version.

Models and task sequences are functions named the same way in a protocol file, `[model] factory` and
`[data] factory` (README, "Bring your own"); `function` loads them.
"""

import importlib
import importlib.metadata
import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmark.errors import UsageError
from estimators.names import CONTROL_KINDS, NAMES

if TYPE_CHECKING:
    from estimators import Estimator

ENTRY_POINT_GROUP = "cl_importance_bench.estimators"
NAME = re.compile(r"[a-z][a-z0-9_]*")
RESERVED = {"none", "uniform", "all", "paper", *CONTROL_KINDS}  # driver words of the command line and the controls


@dataclass(frozen=True)
class EstimatorPlugin:
    spec: str  # module:Class
    cls: "type[Estimator]"
    distribution: str = ""  # the installed distribution providing the module, if any
    version: str = ""


_loaded: dict[str, EstimatorPlugin] = {}  # by estimator name, in the order loaded


def estimators() -> "dict[str, type[Estimator]]":
    """Every estimator by name: the built-in ones, then the loaded plugins."""
    from estimators import ESTIMATORS

    return {**ESTIMATORS, **{name: plugin.cls for name, plugin in _loaded.items()}}


def estimator_names() -> tuple[str, ...]:
    """The names of estimators(), without importing a built-in one."""
    return (*NAMES, *_loaded)


def is_plugin(name: str) -> bool:
    return name in _loaded


def provenance() -> dict[str, dict[str, str]]:
    """What a run records of the plugins loaded: {name: {spec, distribution, version}}."""
    return {name: {"spec": p.spec, "distribution": p.distribution, "version": p.version} for name, p in
            _loaded.items()}


def load(spec: str, origin: str = "--estimator-plugin") -> EstimatorPlugin:
    """Import module:Class, check it against the contract and register it; a UsageError naming the plugin
    otherwise. Loading the same spec again is a no-op."""
    def bad(problem: str) -> UsageError:
        return UsageError(f"estimator plugin {spec!r} ({origin}): {problem}")

    from estimators import Estimator

    module_name, class_name, cls = _import(spec, bad, "module:Class")
    if not (inspect.isclass(cls) and issubclass(cls, Estimator)):
        raise bad(f"{class_name} is not a subclass of estimators.Estimator")
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad(f"its name {name!r} must be lower-case letters, digits and _, starting with a letter")
    if name in NAMES or name in RESERVED:
        raise bad(f"its name {name!r} clashes with a built-in estimator or driver")
    if name in _loaded:
        if _loaded[name].cls is cls:
            return _loaded[name]
        raise bad(f"its name {name!r} is taken by plugin {_loaded[name].spec}")
    try:
        cls()
    except Exception as e:
        raise bad(f"{class_name}() fails: {type(e).__name__}: {e}") from None
    distribution, version = _distribution_of(module_name)
    _loaded[name] = EstimatorPlugin(spec, cls, distribution, version)
    return _loaded[name]


def function(spec: str, origin: str):
    """The function module:function names (a model or task-sequence factory); a UsageError naming it otherwise."""
    def bad(problem: str) -> UsageError:
        return UsageError(f"{origin} {spec!r}: {problem}")

    _, name, found = _import(spec, bad, "module:function")
    if not callable(found):
        raise bad(f"{name} is not a function")
    return found


def _import(spec: str, bad, form: str) -> tuple[str, str, object]:
    """(module name, attribute name, the attribute) of module:attribute; bad(problem) is the error to raise,
    form the spec's expected shape for it."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise bad(f"expected {form}")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module may fail in any way while it imports
        raise bad(f"cannot import {module_name}: {type(e).__name__}: {e}") from None
    if not hasattr(module, attribute):
        raise bad(f"module {module_name} has no {attribute}")
    return module_name, attribute, getattr(module, attribute)


def load_installed() -> list[EstimatorPlugin]:
    """Every plugin installed distributions declare in the entry-point group."""
    return [load(ep.value, origin=f"entry point {ep.name} of {ep.dist.name if ep.dist else 'an installed package'}")
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def _distribution_of(module_name: str) -> tuple[str, str]:
    top = module_name.split(".")[0]
    for distribution in importlib.metadata.packages_distributions().get(top, []):
        try:
            return distribution, importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "", ""
