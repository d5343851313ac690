"""The package structure: no import cycles anywhere in the project, and protocols/, models/ and benchmarks/
are libraries (importing every one of their modules pulls no Hydra, OmegaConf or MLflow;
protocols/ no torch)."""
from __future__ import annotations

import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import PROJECT_ROOT

PACKAGES = ("protocols", "models", "benchmarks", "pipeline")


def project_modules(packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` (walked with pkgutil) and its source file."""
    found: dict[str, Path] = {}
    for package in packages:
        found[package] = PROJECT_ROOT / package / "__init__.py"
        for info in pkgutil.walk_packages([str(PROJECT_ROOT / package)], prefix=f"{package}."):
            spec = importlib.util.find_spec(info.name)
            assert spec is not None and spec.origin, info.name
            found[info.name] = Path(spec.origin)
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges module → project module it imports, at any depth of its source (function-level too)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by depth-first search (each reported once per entry point)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_cycle_detector_finds_a_planted_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    modules = project_modules()
    assert {"protocols.session", "protocols.parties", "pipeline.tasks.glue", "pipeline.tasks.lm"} <= set(modules)
    graph = import_graph(modules)
    assert "protocols.spec" in graph["protocols.parties"]            # the graph sees real imports
    assert cycles(graph) == []


def _import_in_subprocess(modules: list[str], watched: set[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {watched!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return [m for m in out.stdout.strip().split(",") if m]


def test_libraries_do_not_import_hydra_omegaconf_mlflow() -> None:
    libraries = sorted(project_modules(("protocols", "models", "benchmarks")))
    assert len(libraries) > 20
    assert _import_in_subprocess(libraries, {"hydra", "omegaconf", "mlflow"}) == []


def test_protocols_do_not_import_torch() -> None:
    assert _import_in_subprocess(sorted(project_modules(("protocols",))), {"torch"}) == []


def test_every_pipeline_module_imports() -> None:
    assert "hydra" in _import_in_subprocess(sorted(project_modules(("pipeline",))), {"hydra"})
