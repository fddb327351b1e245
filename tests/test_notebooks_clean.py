"""The study notebooks are committed clean, and their parameters are documented.

- no outputs and no execution counts in ``notebooks/*.ipynb``;
- each starts with a markdown title and has exactly one ``parameters``-tagged cell
  holding only ``name = <literal>`` assignments;
- every parameter appears, with a comment, in ``params/default.yaml`` and has the
  same default there; every key of default.yaml is used by some notebook (or by the
  runner itself: ``RUNNER_PARAMS``);
- every other parameter file only uses keys default.yaml declares.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from vfnb.io import load_yaml
from vfnb.study import NOTEBOOKS, RUNNER_PARAMS, merge_params, notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_PATHS = [ROOT / "notebooks" / f"{name}.ipynb" for name in NOTEBOOKS]
DEFAULTS = ROOT / "params" / "default.yaml"


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_has_no_outputs(path):
    nb = nbformat.read(str(path), as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} carries outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} carries an execution count"
        assert "papermill" not in cell.metadata, f"{path.name} cell {i} carries papermill metadata"
    assert "papermill" not in nb.metadata


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "starts with a title"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    tree = ast.parse(tagged[0].source)
    for node in tree.body:  # literal-only assignments, checked independently of notebook_parameters
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ast.literal_eval(node.value)
    assert "run_dir" in notebook_parameters(path)


def test_every_parameter_is_documented_in_default_yaml():
    defaults = load_yaml(DEFAULTS)
    lines = DEFAULTS.read_text(encoding="utf-8").splitlines()
    used = set()
    for path in NOTEBOOK_PATHS:
        for name, value in notebook_parameters(path).items():
            used.add(name)
            assert name in defaults, f"{path.name}: parameter {name!r} missing from {DEFAULTS.name}"
            assert defaults[name] == value, f"{path.name}: default of {name!r} is {value!r}, {DEFAULTS.name} says {defaults[name]!r}"
            line = next(l for l in lines if l.startswith(f"{name}:"))
            assert "#" in line and line.split("#", 1)[1].strip(), f"{DEFAULTS.name}: {name!r} has no comment"
    for name in RUNNER_PARAMS:  # read by the runner, documented all the same
        line = next(l for l in lines if l.startswith(f"{name}:"))
        assert "#" in line and line.split("#", 1)[1].strip(), f"{DEFAULTS.name}: {name!r} has no comment"
    unused = set(defaults) - used - set(RUNNER_PARAMS)
    assert unused == set(), f"keys of {DEFAULTS.name} no notebook uses: {unused}"


@pytest.mark.parametrize("name", ["smoke.yaml", "paper.yaml", "external_validation.yaml"])
def test_parameter_files_use_known_keys(name):
    merged = merge_params([ROOT / "params" / name])
    assert set(merged) == set(load_yaml(DEFAULTS))
    from vfnb.study import validate_study_params

    validate_study_params(merged)  # what `vfnb study` checks before notebook 00


def test_notebook_parameters_refuses_non_literals(tmp_path):
    from vfnb.errors import ParamsError

    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("a = 1\nb = a + 1", metadata={"tags": ["parameters"]}))
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(ParamsError, match="'b'.*not a literal"):
        notebook_parameters(path)
    nb.cells.append(nbformat.v4.new_code_cell("c = 2", metadata={"tags": ["parameters"]}))
    nbformat.write(nb, str(path))
    with pytest.raises(ParamsError, match="exactly one cell tagged 'parameters', found 2"):
        notebook_parameters(path)


def test_notebooks_name_the_projects_kernel():
    """Opened in JupyterLab, each notebook asks for the kernel `make install` registers (the project's .venv)."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        spec = nbformat.read(path, as_version=4).metadata.get("kernelspec", {})
        assert spec.get("name") == "vfnb" and spec.get("display_name") == "vfnb (.venv)", path.name
