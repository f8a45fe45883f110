"""The package's shape stays readable: every module imports alone, the import graph (every import, also those
inside functions) has no cycle, no module reaches for another's private names, and tests share helpers only
through tests/helpers/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sdlite"
TESTS = ROOT / "tests"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, tuple[str, ...]]]:
    """(module imported, names taken from it) for every sdlite import in `path`, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sdlite":
            names = tuple(a.name for a in node.names)
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in modules]
            found += [(m, ()) for m in submodules]
            others = tuple(n for n in names if f"{node.module}.{n}" not in modules)
            if others:
                found.append((node.module, others))
        elif isinstance(node, ast.Import):
            found += [(a.name, ()) for a in node.names if a.name.split(".")[0] == "sdlite"]
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m, _ in _imports(path, modules)} - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each a cycle or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "sdlite.sampling.run" in graph and "sdlite.models.loading" in graph["sdlite.sampling.run"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_most_modules_live_in_feature_packages_each_saying_what_it_owns() -> None:
    modules = [m for m in _modules() if not m.endswith("__main__")]
    nested = [m for m in modules if m.count(".") >= 2]
    assert len(nested) > len(modules) / 2, (len(nested), len(modules))
    for package in sorted({m.rsplit(".", 1)[0] for m in nested}):
        init = PACKAGE / package.removeprefix("sdlite.").replace(".", "/") / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{package} has no docstring saying what it owns"
    for name, path in _modules().items():
        assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no docstring"


def test_no_module_imports_a_private_name_of_another() -> None:
    modules = _modules()
    private = [
        (name, imported, n)
        for name, path in modules.items()
        for imported, names in _imports(path, modules)
        for n in names
        if n.startswith("_") and not n.startswith("__") and imported != name
    ]
    assert private == []


def test_every_module_imports_alone() -> None:
    """Each module in a fresh interpreter of its own, so none works only because another was imported first."""
    names = [m for m in _modules() if not m.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        "failed = []\n"
        "for name in sys.argv[1:]:\n"
        "    before = set(sys.modules)\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "    for loaded in set(sys.modules) - before:\n"
        "        if loaded.startswith('sdlite'):\n"
        "            del sys.modules[loaded]\n"
        "print('\\n'.join(failed))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""


def test_tests_share_helpers_only_through_tests_helpers() -> None:
    test_modules = {p.stem for p in TESTS.rglob("test_*.py")}
    crossing = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1] in test_modules:
                crossing.append(f"{path.relative_to(ROOT)} imports {node.module}")
            elif isinstance(node, ast.Import):
                crossing += [f"{path.relative_to(ROOT)} imports {a.name}" for a in node.names if a.name in test_modules]
    assert crossing == []
