"""The house plan, enforced by reading every module's imports with ``ast`` (ARCHITECTURE.md, "Folders").

Data flows one way: config -> model IR -> costs and plans -> runtime -> records. These tests fail when an import
runs back up a layer, closes a circle, lets a module below the entry point read the raw Hydra config, or pulls
pyroute2 or MLflow into the worker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("harness", "hardware", "partitioners", "benchmarks", "notebooks")
# The only modules that read the raw Hydra config: run.py and its config module, and the other entry points (the
# benchmarks compose configs as run.py does; the notebook composes the presets it counts).
ENTRY = {"run", "harness.config", "harness.progress", "notebooks.paper_tables",
         *(f"benchmarks.{p.stem}" for p in (ROOT / "benchmarks").glob("*.py"))}

# Which project modules each room may import (by prefix); every room may import itself and ``harness`` (the root).
ALLOWED = {
    "harness.model": ("harness.model",),
    "hardware": ("harness.model", "hardware"),
    "partitioners": ("harness.model", "partitioners"),
    "harness.worker": ("harness.model", "harness.worker"),
    "harness.network": ("harness.network", "harness.worker.pacer"),
    # the cleanup command also ends the MLflow runs of dead controllers (imported there only)
    "harness.network.__main__": ("harness.network", "harness.controller.stale_runs", "harness.controller.tracking"),
    # the load generator: clock, schedule, dilation arithmetic, verdict; no worker process, no method or strategy
    "harness.loadgen": ("harness.loadgen", "harness.worker.wire", "harness.worker.sealed"),
    "harness.controller": ("harness.model", "harness.worker", "harness.network", "harness.controller", "hardware",
                           "partitioners", "harness.analysis", "harness.loadgen"),
    # reading measurements: pure functions over a run's samples (confidence intervals) and over MLflow's runs
    # table, shared by the run's record, the summary and the notebook
    "harness.analysis": ("harness.analysis",),
    # entry points of their own: anything of the project, but never the notebooks
    "benchmarks": ("benchmarks", "harness", "hardware", "partitioners"),
    # the notebook reads records: the store, the config (presets), never workers, links or methods
    "notebooks": ("notebooks", "harness.config", "harness.controller.tracking", "harness.analysis"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [ROOT / "run.py"] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function (``from a import b`` counts ``a`` and, where
    it is a module, ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = project_modules()
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def room(module: str) -> str | None:
    return next((r for r in sorted(ALLOWED, key=len, reverse=True) if module == r or module.startswith(r + ".")),
                None)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m)))
def test_imports_stay_in_their_layer(module):
    allowed = ALLOWED[room(module)]
    upward = [m for m in GRAPH[module] if m != "harness" and not any(m == a or m.startswith(a + ".")
                                                                     for a in allowed)]
    assert not upward, f"{module} imports {upward}; its room may import only {list(allowed)}"


def test_nothing_imports_a_benchmark_or_the_notebook():
    users = {m: sorted(d for d in deps if d.split(".")[0] in ("benchmarks", "notebooks"))
             for m, deps in GRAPH.items() if m.split(".")[0] not in ("benchmarks", "notebooks")}
    assert not {m: d for m, d in users.items() if d}, "benchmarks and notebooks are leaves: nothing imports them"


def test_no_import_circles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(GRAPH[module]):
            assert state.get(dep) != 1, "import circle: " + " -> ".join(path[path.index(dep):] + [dep]) \
                if dep in path else f"import circle through {dep}"
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("module", sorted(set(MODULES) - ENTRY))
def test_only_the_entry_point_reads_the_raw_config(module):
    raw = [m for m in imports_of(MODULES[module]) if m.split(".")[0] in ("hydra", "omegaconf")]
    assert not raw, f"{module} imports {raw}: below the entry point, code receives the typed Experiment"


def third_party_closure(start: str) -> set[str]:
    seen, todo, outside = set(), [start], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in imports_of(MODULES[module]):
            if imported in MODULES:
                todo.append(imported)
            else:
                outside.add(imported.split(".")[0])
    return outside


def test_the_worker_imports_neither_pyroute2_nor_mlflow():
    outside = third_party_closure("harness.worker.__main__")
    assert not outside & {"pyroute2", "mlflow", "hydra", "omegaconf"}, sorted(outside)


def test_the_notebook_only_reads_calls_and_draws() -> None:
    """Derived figures are computed in harness.analysis (tested, shared with the end-of-run summary); the paper-tables
    notebook reads the store, calls it and draws, with no numeric library of its own."""
    script = ROOT / "notebooks" / "paper_tables.py"
    assert len(script.read_text().splitlines()) < 400, "move derived figures into harness/analysis"
    assert not {"numpy", "scipy"} & {m.split(".")[0] for m in imports_of(script)}
