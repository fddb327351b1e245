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


# ------------------------------------------------------------------ imports without side effects
HEAVY = ("torch", "matplotlib", "monai")
THIRD_PARTY = ("numpy", "pandas", "scipy", "sklearn", "nibabel", "yaml", "torch", "monai", "matplotlib.figure",
               "seaborn", "umap", "tqdm", "tqdm.auto", "papermill", "nbformat", "nbconvert", "bleach")


def run_child(code: str, env: dict) -> dict:
    """Run ``code`` in a fresh Python; it prints one JSON line last, returned parsed."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_command_parser_imports_no_heavy_library(subprocess_env):
    """``vfnb --help`` (building the parser) pays for neither torch, nor Matplotlib, nor MONAI."""
    loaded = run_child(
        "import json, sys\n"
        "from vfnb.cli import build_parser, main\n"
        "parser = build_parser()\n"
        "help_text = parser.format_help()\n"
        "for sub in ('check', 'predict', 'study', 'sweep'):\n"
        "    try:\n"
        "        parser.parse_args([sub, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n", subprocess_env)
    assert loaded == []


def test_vfnb_check_imports_no_heavy_library(tiny_processed, subprocess_env):
    """Checking a dataset (real NIfTI files; the function and ``vfnb check``) loads nothing of the network or figures."""
    loaded = run_child(
        "import json, sys\n"
        "from vfnb.data.check import check_dataset\n"
        f"report = check_dataset({str(tiny_processed)!r})\n"
        "assert report.ok, report.errors\n"
        "from vfnb.cli import main\n"
        f"assert main(['check', {str(tiny_processed)!r}]) == 0\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n", subprocess_env)
    assert loaded == []


def test_importing_every_module_leaves_warning_filters_and_backend_alone(subprocess_env):
    """Importing a vfnb module changes no global state: warning filters and Matplotlib's backend are the caller's."""
    names = sorted(n for n in modules() if n != "vfnb.__main__")
    changed = run_child(
        "import importlib, json, warnings\n"
        "import matplotlib\n"
        # the libraries vfnb uses, imported first: filters they install themselves are not vfnb's
        f"for lib in {THIRD_PARTY!r}:\n"
        "    try:\n"
        "        importlib.import_module(lib)\n"
        "    except ImportError:\n"
        "        pass\n"
        "before = (list(warnings.filters), matplotlib.rcParams._get_backend_or_none())\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "after = (list(warnings.filters), matplotlib.rcParams._get_backend_or_none())\n"
        "print(json.dumps({'filters': [str(f) for f in after[0] if f not in before[0]],\n"
        "                  'backend': [before[1], after[1]]}))\n", subprocess_env)
    assert changed["filters"] == [], changed
    assert changed["backend"][0] == changed["backend"][1], changed


def test_every_figure_and_the_scan_report_share_one_grade_palette():
    """One palette object, ordered normal -> severe: the figures' and the per-scan report's."""
    from vfnb import levels, plots
    from vfnb.inference import report
    from vfnb.plots import embedding, exploration

    for module in (plots, embedding, exploration, report):
        assert module.GRADE_COLORS is levels.GRADE_COLORS, module.__name__
    assert sorted(levels.GRADE_COLORS) == list(levels.GRADES)


def test_warning_filters_come_from_entry_points_not_from_objects(tmp_path):
    """A ``StudyRun`` leaves the filters alone; the entry points' one call installs them."""
    import warnings

    from vfnb.entry import setup_entry_point
    from vfnb.study.run import StudyRun

    with warnings.catch_warnings():
        before = list(warnings.filters)
        StudyRun(tmp_path / "run")
        assert warnings.filters == before
        setup_entry_point()
        assert any(f[1] is not None and f[1].pattern == "IProgress not found" for f in warnings.filters)
    notebooks = sorted((PACKAGE.parent / "notebooks").glob("*.ipynb"))
    assert notebooks and all("setup_entry_point()" in p.read_text() for p in notebooks)


def test_backbone_kwargs_reach_the_network_from_training_and_from_the_study():
    """Training and the study's untrained reference build through one factory, ``backbone_kwargs`` included."""
    from vfnb.study.training import initial_model
    from vfnb.training.config import TrainConfig
    from vfnb.training.engine import build_network

    kwargs = {"block_inplanes": [4, 4, 4, 8]}
    trained = build_network(TrainConfig(backbone="resnet10", feature_dim=16, seed=3, backbone_kwargs=kwargs))
    shown = initial_model({"backbone": "resnet10", "head": "linear", "feature_dim": 16, "seed": 3,
                           "backbone_kwargs": kwargs})
    for model in (trained, shown):
        assert model.model_args["block_inplanes"] == [4, 4, 4, 8]
    # the same seed gives the same weights on both paths
    for (name, a), (_, b) in zip(trained.state_dict().items(), shown.state_dict().items()):
        assert a.shape == b.shape and bool((a == b).all()), name
