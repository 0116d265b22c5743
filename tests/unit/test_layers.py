"""The import graph follows the data: every import of the monitor's own modules points down.

Layers, bottom first (a module may import its own layer and the ones below it)::

    errors, events, schedule, _yaml,  the error tree, typed events, the APScheduler door, located YAML,
    _version                          the version from the package metadata
    config                            the schema of monitor.yaml and its loader
    backends                          models behind one protocol (hf, openai)
    testing                           the fault-injecting OpenAI-compatible server (over backends)
    evals                             eval sets, scoring, the evaluation loop, results
    store                             the only door to the monitor's own tables
    analysis                          statistics, regression, drift, costs, recommendations
    exporters                         Prometheus collectors, webhooks
    service                           recorded runs, after-job work, the daemon, releases
    api                               the HTTP surface and its JSON views
    demo                              the offline demo (uses service and api, never cli)
    cli                               the command line, the top: nothing imports it

Function-level imports count: a lazy import for start-up time must point down too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "monitor"
LAYERS = [
    {"errors", "events", "schedule", "_yaml", "_version", "__init__", "__main__"},
    {"config"},
    {"backends"},
    {"testing"},
    {"evals"},
    {"store"},
    {"analysis"},
    {"exporters"},
    {"service"},
    {"api"},
    {"demo"},
    {"cli"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
#: ``monitor/__init__.py`` and ``__main__`` are entry points, not layers: they are checked on their own.
ENTRY_POINTS = {"__init__": {"errors", "evals", "_version"}, "__main__": {"cli"}}


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "monitor" or len(parts) == 1:
        return None
    # ``from monitor import __version__`` names an attribute of the package, not a module
    return parts[1] if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").exists() else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "monitor":
                found += [(node.lineno, f"monitor.{alias.name}") for alias in node.names]
    return found


def _module_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _own(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def test_every_top_level_module_has_a_layer() -> None:
    unknown = sorted({_own(p) for p in _module_files()} - set(RANK))
    assert unknown == [], f"give these a layer in LAYERS: {unknown}"


@pytest.mark.parametrize("path", _module_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = _own(path)
    upward = []
    for line, module in _imports(path):
        target = _top(module)
        if target is None or target == own:
            continue
        if own in ENTRY_POINTS:
            if target not in ENTRY_POINTS[own]:
                upward.append(f"line {line}: {module}")
        elif RANK[target] > RANK[own]:
            upward.append(f"line {line}: {module} ({target} is above {own})")
    assert upward == [], f"{path.relative_to(PACKAGE)} imports upward: " + "; ".join(upward)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    names = {}
    for path in _module_files():
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        name = ".".join(["monitor", *parts])
        names[name] = path
    for name, path in names.items():
        deps = set()
        for _line, module in _imports(path):
            while module and module not in names:
                module = module.rpartition(".")[0]
            if module and module != name and module != "monitor":
                deps.add(module)
        graph[name] = deps
    # Tarjan's strongly connected components; a package's __init__ re-exporting its own modules
    # is not a cycle of the data flow, so edges into a parent package from its children are dropped.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"
