"""Which module may import which: the dependency directions README's code map promises, read from the source (every
import statement, those inside functions included, since a function-level import closes a cycle just the same)."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "estimators", "tracking")

# (importer prefix, imported prefix): never. A prefix names a module and everything below it.
FORBIDDEN = [
    ("estimators", "benchmark"), ("estimators", "tracking"),  # an estimator is math over a model and data
    ("tracking", "benchmark"), ("tracking", "estimators"),  # the store knows nothing of the experiment
    ("benchmark.report", "estimators"),  # the report reads what runs recorded, never the math that made it
    ("benchmark.report", "benchmark.loop"), ("benchmark.report", "benchmark.sweep"),
    ("benchmark.report", "benchmark.tuning"),
    # compare reads published files alone: no store, no training
    *[("benchmark.compare", high) for high in ("tracking", "estimators", "benchmark.loop", "benchmark.sweep",
                                               "benchmark.tuning")],
    # the low-level modules every layer may use import nothing above them
    *[(low, high) for low in ("benchmark.errors", "benchmark.environment", "benchmark.metrics", "benchmark.progress",
                              "benchmark.config", "benchmark.penalty", "benchmark.evaluation")
      for high in ("benchmark.sweep", "benchmark.tuning", "benchmark.loop", "benchmark.report",
                   "benchmark.cluster", "benchmark.lambda_curve", "benchmark.verify")],
]
# the only importers of the CLI and of MLflow
CLI_IMPORTERS = {"benchmark.__main__"}
# what an estimator may import from outside the project besides the standard library: torch, and numpy for
# fis_sampled's per-task seed (np.random.SeedSequence: another derivation would change every drawn label)
ESTIMATOR_THIRD_PARTY = {"torch", "numpy"}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every module name an import statement of this file names, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(kept + ([base] if base else []))
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
    return named


def project_graph() -> dict[str, set[str]]:
    found = modules()
    graph = {}
    for name, path in found.items():
        edges = set()
        for target in imports(name, path):
            while target and target not in found:  # `from benchmark.x import f` names benchmark.x.f
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_no_import_cycle():
    assert cycles(project_graph()) == []


def test_imports_point_the_allowed_way():
    wrong = [f"{a} imports {b}" for a, edges in project_graph().items() for b in edges
             for low, high in FORBIDDEN if under(a, low) and under(b, high)]
    assert wrong == []


def test_only_the_entry_point_imports_the_cli():
    importers = {a for a, edges in project_graph().items() if "benchmark.cli" in edges}
    assert importers <= CLI_IMPORTERS


def test_only_tracking_imports_mlflow_and_estimators_only_torch():
    found = modules()
    mlflow_users = {name for name, path in found.items()
                    if any(under(m, "mlflow") for m in imports(name, path))}
    assert mlflow_users and all(under(name, "tracking") for name in mlflow_users)
    for name, path in found.items():
        if under(name, "estimators"):
            outside = {m.split(".")[0] for m in imports(name, path)} - set(PACKAGES) - set(sys.stdlib_module_names)
            assert outside <= ESTIMATOR_THIRD_PARTY, f"{name} imports {outside}"


def test_the_checker_sees_a_cycle_and_a_function_level_import(tmp_path):
    """The checker itself can fail: a cycle closed inside a function is found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from benchmark.tuning import tune\n")
    assert "benchmark.tuning" in imports("benchmark.m", module)
