"""The shape of the code: no import cycle among the project's modules, no oversized file in whisperkit/.

Imports are read with `ast`, not by importing: every ``import`` and ``from ... import`` statement
counts wherever it stands (module level, inside a function, under ``if TYPE_CHECKING:``), because a
function-local or type-only import hides a cycle without removing it.  Loading a plugin by name
(entry points, ``importlib.import_module``) is not an import edge: that is how plugins are meant to
be found.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the installed package name of each top-level folder (pyproject.toml's [tool.setuptools.package-dir])
PACKAGE_DIRS = {"whisperkit": "whisperkit", "backends": "whisperkit.backends",
                "conformance": "whisperkit.conformance", "bench": "whisperkit.bench"}
MAX_LINES = 600


def module_files(root: Path, package_dirs: dict[str, str]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__) for every .py file under the folders."""
    modules = {}
    for folder, package in package_dirs.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([package, *parts])] = (path, is_package)
    return modules


def _internal(name: str, modules) -> str | None:
    """The longest prefix of a dotted name that is one of our modules (``a.b.c`` may name ``a.b``'s attribute)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the modules it imports (ours only), relative imports resolved."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")
                    if node.level > 1:
                        base_parts = base_parts[:-(node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import sub` imports the submodule when there is one, else pkg itself
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                internal = _internal(target, modules)
                if internal is not None and internal != name:
                    edges.add(internal)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(component, graph) for component in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle found in the component {component}")  # cannot happen for an SCC


def test_no_import_cycle():
    """Run in a process of its own: CPython 3.11 keeps the AST constructor's recursion depth per interpreter
    (python/cpython#106905), and `ast.parse` here, while a thread another test left running built ASTs too,
    failed once with "SystemError: AST constructor recursion depth mismatch"."""
    import json
    import subprocess
    import sys
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import test_structure as t; "
            "print(json.dumps(t.find_cycles(t.import_graph(t.module_files(t.ROOT, t.PACKAGE_DIRS)))))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    cycles = json.loads(out.stdout.strip().splitlines()[-1])
    assert not cycles, "import cycles (one per group of modules that import each other):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_no_python_file_in_whisperkit_is_over_600_lines():
    too_long = {}
    for path in sorted((ROOT / "whisperkit").rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            too_long[str(path.relative_to(ROOT))] = n
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"


def test_the_walk_sees_hidden_and_relative_cycles(tmp_path):
    """The checker itself: a cycle closed by a function-local import, one closed by a TYPE_CHECKING
    import, and one across the package-dir mapping through relative imports are all reported."""
    pkg = tmp_path / "pkg"
    plugins = tmp_path / "plugins"
    pkg.mkdir()
    plugins.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import g\n    return g\n")  # a -> b -> a, hidden in f
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n")
    (pkg / "d.py").write_text("import pkg.c\n")  # c -> d -> c, hidden behind TYPE_CHECKING
    (pkg / "e.py").write_text("from .plugins import one\n")
    (plugins / "__init__.py").write_text("")
    (plugins / "one.py").write_text("from ..e import x\n")  # pkg.e -> pkg.plugins.one -> pkg.e
    (pkg / "clean.py").write_text("import os\nfrom . import a\n")
    modules = module_files(tmp_path, {"pkg": "pkg", "plugins": "pkg.plugins"})
    graph = import_graph(modules)
    assert graph["pkg.clean"] == {"pkg.a"}
    cycles = {tuple(c) for c in find_cycles(graph)}
    assert cycles == {("pkg.a", "pkg.b", "pkg.a"), ("pkg.c", "pkg.d", "pkg.c"),
                      ("pkg.e", "pkg.plugins.one", "pkg.e")}
