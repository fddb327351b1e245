"""The study notebooks are committed clean, and their parameters are documented.

- no outputs and no execution counts in ``notebooks/*.ipynb``;
- each starts with a markdown title and has exactly one ``parameters``-tagged cell
  holding only ``name = <literal>`` assignments: ``run_dir`` and ``study_params``
  (every study parameter in one object, parsed by the next cell);
- every field of :class:`vfnb.study.StudyParams` appears, with a comment, in
  ``params/default.yaml`` with the same default, and default.yaml has no other key;
  every field is read by some notebook (or by the runner itself: ``RUNNER_PARAMS``);
- every other parameter file only uses known keys and passes the study's checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from vfnb.io import load_yaml
from vfnb.study import NOTEBOOKS, RUNNER_PARAMS, StudyParams, merge_params, notebook_parameters

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
    assert notebook_parameters(path) == {"run_dir": StudyParams().run_dir, "study_params": {}}
    setup = nb.cells[nb.cells.index(tagged[0]) + 1].source
    assert "p = study.StudyParams.from_json(study_params)" in setup, "the setup cell parses the parameters"
    assert "globals()" not in "".join(c.source for c in nb.cells), "parameters are read from p, not the namespace"


def test_default_yaml_agrees_with_the_dataclass():
    """The dataclass owns the defaults; default.yaml, the file users read, lists each with a comment."""
    defaults = load_yaml(DEFAULTS)
    fields = StudyParams().as_dict()
    assert list(defaults) and set(defaults) == set(fields), "default.yaml lists every field, and only those"
    assert defaults == StudyParams().as_dict()
    assert list(defaults) == list(StudyParams().as_dict()), "default.yaml lists the fields in the dataclass's order"
    lines = DEFAULTS.read_text(encoding="utf-8").splitlines()
    for name in defaults:
        line = next(l for l in lines if l.startswith(f"{name}:"))
        assert "#" in line and line.split("#", 1)[1].strip(), f"{DEFAULTS.name}: {name!r} has no comment"


def test_every_parameter_is_read_somewhere():
    """A field nobody reads is a parameter that does nothing: notebooks read ``p.<name>``, the study code the rest."""
    sources = [nbformat.read(str(path), as_version=4) for path in NOTEBOOK_PATHS]
    notebooks = "\n".join(c.source for nb in sources for c in nb.cells)
    code = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "vfnb" / "study").glob("*.py")
                     if p.name != "parameters.py")
    from vfnb.study import MODELS, TrainingSettings

    indirect = set(TrainingSettings.keys()) | {k for spec in MODELS.values() for k in spec.budget.values()}
    unread = [name for name in StudyParams().as_dict() if f"p.{name}" not in notebooks and name not in indirect
              and name not in RUNNER_PARAMS and f'"{name}"' not in code]
    assert unread == [], f"parameters nothing reads: {unread}"


@pytest.mark.parametrize("name", ["smoke.yaml", "paper.yaml", "external_validation.yaml"])
def test_parameter_files_use_known_keys(name):
    merged = merge_params([ROOT / "params" / name])
    assert set(merged) == set(load_yaml(DEFAULTS))
    from vfnb.study import validate_study_params

    assert isinstance(validate_study_params(merged), StudyParams)  # what `vfnb study` checks before notebook 00


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
