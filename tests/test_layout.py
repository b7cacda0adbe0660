"""The package's architecture, checked from its source: no import cycles, and each layer imports only below it.

Every import statement counts, including the ones inside functions (the cycles this layout removed,
engine ↔ offload and save ↔ compressed, were both function-level imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import prunellm

SRC = Path(prunellm.__file__).resolve().parent

# What each part of the package may import (besides itself); the parts on top may import anything.
ALLOWED = {
    "errors": set(),
    "hub": set(),
    "outputs": {"errors"},
    "devices": {"errors"},
    "masks": {"errors"},
    "permute": set(),
    "quant": {"errors"},
    "solvers": {"errors", "devices", "masks", "quant"},
    "allocation": {"errors", "devices", "masks", "solvers"},
    "config": {"errors", "masks", "quant", "solvers", "allocation"},
    "data": {"errors", "hub"},
    "runtime": {"errors", "devices", "outputs", "quant"},
    "models": {"errors", "devices", "hub", "runtime"},
    "engine": {"errors", "devices", "masks", "permute", "quant", "solvers", "allocation", "config", "data"},
    "evaluation": {"errors", "data"},
}
TOP = {"__init__", "__main__", "save", "from_disk", "cli", "plot"}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the package under `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its file (function bodies included)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from X import y` imports the module X.y where there is one, else X itself
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def part(module: str) -> str:
    """The part of the package a module belongs to: its first name below `prunellm`."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


def test_the_checker_finds_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (pkg / "c.py").write_text("from . import a\nimport pkg.sub\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.c"] == {"pkg.a", "pkg.sub"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def f():\n    pass\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


def test_no_module_imports_a_module_that_imports_it_back():
    cycle = find_cycle(import_graph(SRC, "prunellm"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_part_imports_only_the_layers_below_it():
    graph = import_graph(SRC, "prunellm")
    unknown = sorted({part(m) for m in graph} - set(ALLOWED) - TOP)
    assert not unknown, f"place the new modules {unknown} in ALLOWED (what they may import) or TOP"
    wrong = sorted(f"{m} imports {t}" for m, targets in graph.items() if part(m) in ALLOWED
                   for t in targets if part(t) != part(m) and part(t) not in ALLOWED[part(m)])
    assert not wrong, "\n".join(wrong)


def test_every_package_says_what_it_holds_and_may_import():
    for init in sorted(SRC.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init} has no docstring"
        if init.parent != SRC:
            assert "import" in doc.lower(), f"{init}'s docstring does not say what the package may import"
