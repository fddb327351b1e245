"""Notebooks a person can use: a cell executed again gives the same result without training again.

- fast: :func:`vfnb.study.train_model` called twice with the same parameters trains
  once (the second call reuses the finished run and says so), prints one line per
  epoch while it trains, and trains anew when a parameter changes; notebook 01's
  setup executed again keeps the models ``training.json`` records;
- slow: the four notebooks executed in a kernel on the smoke parameters, top to
  bottom, then every code cell after the parameters executed once more in the same
  kernel, as a person re-running cells in JupyterLab would: no error, no model
  trained again (checkpoints untouched), epoch lines in the training cells' output.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from vfnb import study
from vfnb.study.runner import notebook_inputs
from vfnb.study.data import StudyData
from vfnb.study.training import unreusable
from vfnb.training.engine import train

ROOT = Path(__file__).resolve().parents[1]

# a tiny cross-entropy run: the SupCon settings are unused by mode ce
SETTINGS = dict(backbone="resnet10", head="linear", feature_dim=8, cube_size=16, batch_per_grade=1,
                epoch_mode="replacement", batches_per_epoch=1, momentum=0.9, weight_decay=0.0, lr_schedule="cosine",
                lr_milestones=[800], lr_gamma=0.1, temperature=0.1, base_temperature=0.1, probe="logreg", seed=0,
                device="cpu", amp="auto", workers=0)
BUDGET = {"ce_epochs": 1, "ce_lr": 0.05}


def _run_and_data(tmp_path, tiny_processed):
    run = study.StudyRun(tmp_path / "run")
    settings = study.StudyParams.from_dict(SETTINGS).training_settings()
    run.record_training_settings(settings)
    return run, StudyData(tiny_processed, "t0", synthetic=False), settings


def test_train_model_again_reuses_the_finished_run(tmp_path, tiny_processed, capsys):
    run, data, settings = _run_and_data(tmp_path, tiny_processed)
    first = study.train_model(run, "ce", data, settings, BUDGET)
    printed = capsys.readouterr().out
    assert "ce (ce) epoch 1/1: loss" in printed  # the epoch line, in the cell's output
    assert "epoch 1/1" in (run.path("run.log")).read_text()  # and in run.log
    stamp = run.checkpoint("ce").stat().st_mtime_ns

    run.record_training_settings(settings)  # notebook 01's setup cell executed again
    assert "ce" in run.training_summary().models
    again = study.train_model(run, "ce", data, settings, BUDGET)
    printed = capsys.readouterr().out
    assert "already trained with these parameters" in printed and "epoch 1/1" not in printed
    assert again == first and run.checkpoint("ce").stat().st_mtime_ns == stamp

    run.write_json("training.json", {"settings": settings.as_dict(), "models": {}})  # the record lost
    rebuilt = study.train_model(run, "ce", data, settings, BUDGET)  # read back from the run folder
    assert rebuilt == dataclasses.replace(first, seconds=None) and "epoch 1/1" not in capsys.readouterr().out

    changed = study.train_model(run, "ce", data, settings, {**BUDGET, "ce_lr": 0.01})
    printed = capsys.readouterr().out
    assert "other parameters (lr 0.05 -> 0.01)" in printed and "epoch 1/1" in printed
    assert changed.source == "trained" and run.checkpoint("ce").stat().st_mtime_ns != stamp


def test_changed_settings_forget_the_recorded_models(tmp_path, tiny_processed):
    run, _, settings = _run_and_data(tmp_path, tiny_processed)
    run.record_trained(study.TrainedModel("ce", str(run.checkpoint("ce"))))
    run.record_training_settings(settings)
    assert set(run.training_summary().models) == {"ce"}
    run.record_training_settings(study.StudyParams.from_dict({**SETTINGS, "seed": 1}).training_settings())
    assert run.training_summary().models == {}


def test_a_run_whose_start_was_written_since_is_not_reused(tmp_path, tiny_processed):
    run, data, settings = _run_and_data(tmp_path, tiny_processed)
    study.train_model(run, "ce", data, settings, BUDGET)
    start = tmp_path / "start.pt"
    start.write_bytes(run.checkpoint("ce").read_bytes())
    params = study.model_training_params("ce", settings.as_dict(), {"epochs": 1, "lr": 0.05}, tiny_processed, "t0",
                                         init_checkpoint=start)
    train(params, tmp_path / "from_start")
    assert unreusable(tmp_path / "from_start", params) is None
    later = (tmp_path / "from_start" / "params.yaml").stat().st_mtime_ns + 10**9
    os.utime(start, ns=(later, later))  # the start trained again
    assert "written again since" in unreusable(tmp_path / "from_start", params)
    assert unreusable(tmp_path / "nothing", params) == ""


# ------------------------------------------------------------------ the notebooks, as a person runs them
def _records(run_dir: Path) -> dict[str, bytes]:
    """The records and tables in the run folder (not run.log, images or checkpoints), by relative path."""
    files = [*run_dir.glob("*.json"), run_dir / "figures" / "index.json", *(run_dir / "runs").rglob("*.csv"),
             *(run_dir / "runs").rglob("*.json")]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(files)}


def _checkpoint_stamps(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in sorted((run_dir / "runs").rglob("*.pt"))}


def _run_twice(name: str, params: dict, run_dir: Path, kernel: str) -> list[dict]:
    """Execute notebook ``name`` top to bottom, then each code cell after the parameters again, in one kernel.

    nbclient raises on a cell's error. Returns one dict per code cell: ``source``, the
    outputs of the first pass (``first``) and of the second (``again``); the run
    folder's records must be the same after both passes.
    """
    from nbclient import NotebookClient
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    source = ROOT / "notebooks" / f"{name}.ipynb"
    nb = parameterize_notebook(load_notebook_node(str(source)), notebook_inputs(run_dir, params), kernel_name=kernel)
    client = NotebookClient(nb, kernel_name=kernel, timeout=600,
                            resources={"metadata": {"path": str(source.parent)}})
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    injected = next(n for n, (_, c) in enumerate(code) if "injected-parameters" in c.metadata.get("tags", []))
    with client.setup_kernel():
        for index, cell in code:
            client.execute_cell(cell, index)
        first, records = [list(c.outputs) for _, c in code], _records(run_dir)
        for index, cell in code[injected + 1:]:
            client.execute_cell(cell, index)
    changed = [k for k, v in _records(run_dir).items() if records.get(k) != v]
    assert not changed, f"{name}: executed again, its cells changed {changed}"
    return [{"source": c.source, "first": f, "again": list(c.outputs)} for (_, c), f in zip(code, first)]


def _printed(cells: list[dict], fragment: str, which: str) -> str:
    """What the code cell holding ``fragment`` printed in pass ``which`` (``first`` or ``again``)."""
    cell = next(c for c in cells if fragment in c["source"])
    return "".join(o.get("text", "") for o in cell[which] if o.get("output_type") == "stream")


@pytest.mark.slow
def test_every_cell_executes_again_without_training_again(tmp_path, smoke_data_dir):
    # smoke parameters; no occlusion and fewer resamples: this test is about executing cells again, the smoke
    # study's test checks what they compute
    overrides = [f"data_dir={smoke_data_dir}", "occlusion_checked=0", "n_boot=10"]
    merged = study.resolve_param_paths(study.merge_params([ROOT / "params" / "smoke.yaml"], overrides), ROOT)
    params = study.validate_study_params(merged).as_dict()  # what the runner hands the notebooks
    run_dir = tmp_path / "run"
    with study.project_kernel() as kernel:
        _run_twice("00_data_exploration", params, run_dir, kernel)

        cells = _run_twice("01_supcon_pretraining", params, run_dir, kernel)
        assert "supcon (supcon) epoch 1/2: loss" in _printed(cells, "study.pretrain(", "first")  # live, in the cell
        again = _printed(cells, "study.pretrain(", "again")
        assert "supcon: already trained with these parameters" in again and "epoch 1/2" not in again
        after_01 = _checkpoint_stamps(run_dir)

        cells = _run_twice("02_finetuning", params, run_dir, kernel)
        first, again = _printed(cells, "study.train_model(", "first"), _printed(cells, "study.train_model(", "again")
        for model, mode in (("supcon_linear", "linear"), ("supcon_finetune", "finetune"), ("ce", "ce")):
            assert f"{model} ({mode}) epoch 1/" in first, model
            assert f"{model}: already trained with these parameters" in again, model
        assert " epoch 1/" not in again
        after_02 = _checkpoint_stamps(run_dir)
        assert {k: after_02[k] for k in after_01} == after_01  # 01's encoder untouched

        _run_twice("03_evaluation", params, run_dir, kernel)
    assert _checkpoint_stamps(run_dir) == after_02  # nothing trained again
    log = (run_dir / "run.log").read_text()
    assert log.count("supcon (supcon) epoch 1/2") == 1 and log.count("ce (ce) epoch 1/2") == 1


def test_a_figure_drawn_again_keeps_its_place_in_the_report(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = study.StudyRun(tmp_path / "run")
    for name in ("a", "b", "a"):
        run.figure(plt.figure(), name, f"figure {name}", show=False)
    assert [f["name"] for f in json.loads((run.path("figures", "index.json")).read_text())] == ["a", "b"]
