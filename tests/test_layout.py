"""The package's layout: no import cycles, package faces that only re-export.

The import graph is read from the source (every ``import`` statement, at module
level or inside a function), so a cycle is caught even where Python would
tolerate it at run time because one side imports late.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vfnb"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """The vfnb modules ``path`` (module ``name``) imports: a submodule when one is named, else the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in known else source)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "vfnb.inference.grading" in graph and "vfnb.inference.command" in graph["vfnb.cli"]
    assert cycles(graph) == []


FACES = ("vfnb.training", "vfnb.models", "vfnb.inference", "vfnb.morphometry")


@pytest.mark.parametrize("face", FACES)
def test_package_faces_only_re_export(face):
    """A package's ``__init__`` defines nothing and imports nothing of its own package eagerly."""
    path = modules()[face]
    tree = ast.parse(path.read_text())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defined == []
    assert imported(path, face, set(modules())) == {"vfnb.lazy"}


@pytest.mark.parametrize("face", FACES)
def test_every_re_exported_name_resolves(face):
    import importlib

    package = importlib.import_module(face)
    for name in package.__all__:
        assert getattr(package, name) is not None, f"{face}.{name}"


@pytest.mark.parametrize("old, name, new", [
    ("vfnb.train", "train", "vfnb.training.engine"),
    ("vfnb.predict", "predict_scan", "vfnb.inference.grading"),
    ("vfnb.config", "TrainConfig", "vfnb.training.config"),
    ("vfnb.losses", "SupConLoss", "vfnb.models.losses"),
])
def test_moved_modules_keep_working_with_a_deprecation_warning(old, name, new):
    import importlib

    alias, target = importlib.import_module(old), importlib.import_module(new)
    with pytest.warns(DeprecationWarning, match=new):
        assert getattr(alias, name) is getattr(target, name)
    with pytest.raises(AttributeError, match="moved to"):
        getattr(alias, "no_such_name")
