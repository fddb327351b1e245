"""Sweeps: aggregation against hand-computed values, resume, failures, locks, refusals, --only.

No study is run: the sweep's runner takes the function that runs one study as a
parameter, and these tests pass one that writes a small metrics.json and training
histories with chosen numbers.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vfnb import cli
from vfnb.errors import ParamsError
from vfnb.evaluate import HEADLINE_METRICS
from vfnb.sweep import SweepError, load_sweep, mean_interval, run_sweep

T_975_2DOF = 4.302653  # t quantile 0.975 for 2 degrees of freedom (tables)

# chosen test-set numbers per seed; every other headline metric is 0.5
ROC_AUC = {"supcon_linear": [0.80, 0.85, 0.90], "supcon_finetune": [0.95, 0.93, 0.99], "ce": [0.90, 0.92, 0.97]}
# validation probe macro-F1 of the SupCon run per seed, epochs 1 and 2 (24 batches per epoch)
SUPCON_F1 = [[0.20, 0.40], [0.30, 0.50], [0.25, 0.60]]


def fake_study(calls: list | None = None, fail_seeds=()):
    """A stand-in for run_study: writes metrics.json and two training histories into ``out``."""

    def run_one(params_files, overrides, out, progress=True):
        seed = yaml.safe_load(Path(params_files[-1]).read_text())["seed"]
        if calls is not None:
            calls.append(seed)
        if seed in fail_seeds:
            raise RuntimeError(f"notebook 01 failed for seed {seed}")
        out = Path(out)
        models = {m: {"title": m, "metrics": {k: {"value": ROC_AUC[m][seed] if k == "roc_auc" else 0.5,
                                                  "ci_low": 0.0, "ci_high": 1.0, "n_valid": 1000}
                                              for k in HEADLINE_METRICS}} for m in ROC_AUC}
        (out / "runs" / "supcon").mkdir(parents=True)
        (out / "runs" / "ce").mkdir(parents=True)
        # supcon: no steps recorded -> epoch x batches_per_epoch; val_probe_* preferred to val_*
        (out / "runs" / "supcon" / "params.yaml").write_text("batches_per_epoch: 24\n")
        (out / "runs" / "supcon" / "history.json").write_text(json.dumps(
            [{"epoch": e + 1, "val_probe_macro_f1": f1, "val_macro_f1": 0.0, "val_fracture_auc": 0.7}
             for e, f1 in enumerate(SUPCON_F1[seed])]))
        (out / "runs" / "ce" / "history.json").write_text(json.dumps(
            [{"epoch": e + 1, "steps": 24 * (e + 1), "val_macro_f1": 0.4, "val_fracture_auc": 0.9} for e in range(2)]))
        (out / "metrics.json").write_text(json.dumps(
            {"dataset": {"name": "SynthSpine", "synthetic": True}, "models": models}))
        (out / "provenance.json").write_text(json.dumps({"params": {"supcon_augmentation": "weak", "cube_size": 32}}))
        (out / "index.html").write_text("<html></html>")
        return out

    return run_one


def sweep_file(tmp_path: Path, text: str = "grid: {seed: [0, 1, 2]}\n", name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text("study_params: []\noverrides: {supcon_epochs: 1, supcon_warmup_epochs: 0}\n" + text)
    return path


def test_aggregate_against_hand_computed_values_and_report(tmp_path):
    out = tmp_path / "sw"
    result = run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study())
    assert result.ok and result.ran == ["seed-0", "seed-1", "seed-2"]
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["runs_finished"] == 3 and doc["synthetic"] is True

    linear = doc["models"]["supcon_linear"]["metrics"]["roc_auc"]
    half = T_975_2DOF * 0.05 / math.sqrt(3)  # sd of (0.80, 0.85, 0.90) is 0.05
    assert linear["n"] == 3 and linear["mean"] == pytest.approx(0.85) and linear["sd"] == pytest.approx(0.05)
    assert linear["ci_low"] == pytest.approx(0.85 - half, abs=1e-6)
    assert linear["ci_high"] == pytest.approx(0.85 + half, abs=1e-6)
    assert (linear["min"], linear["max"]) == (0.80, 0.90)

    # paired: linear - ce = (-0.10, -0.07, -0.07): mean -0.08, sd sqrt(0.0006 / 2)
    diff = doc["paired"]["supcon_linear - ce"]["metrics"]["roc_auc"]
    sd = math.sqrt(0.0006 / 2)
    assert diff["mean"] == pytest.approx(-0.08) and diff["sd"] == pytest.approx(sd)
    assert diff["ci_high"] == pytest.approx(-0.08 + T_975_2DOF * sd / math.sqrt(3), abs=1e-6)
    assert (diff["n"], diff["wins"]) == (3, 0)
    finetune = doc["paired"]["supcon_finetune - ce"]["metrics"]["roc_auc"]
    assert finetune["mean"] == pytest.approx((0.05 + 0.01 + 0.02) / 3) and finetune["wins"] == 3
    assert doc["paired"]["supcon_finetune - ce"]["metrics"]["macro_f1"]["ties"] == 3  # 0.5 - 0.5

    # budget curve: steps from batches_per_epoch, the probe's macro-F1, mean and min-max across seeds
    assert doc["budget_curves"]["x"] == "optimizer steps"
    at_48 = doc["budget_curves"]["curves"]["supcon"]["macro_f1"][1]
    assert at_48["x"] == 48 and at_48["mean"] == pytest.approx(0.5) and (at_48["min"], at_48["max"]) == (0.4, 0.6)

    page = (out / "index.html").read_text()
    assert f"0.85 [{0.85 - half:.2f}, {0.85 + half:.2f}]" in page
    assert "won 0/3" in page and "won 3/3" in page
    assert "synthetic" in page and "not the per-run bootstrap" in page
    assert "href='runs/seed-1/index.html'" in page
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")  # self-contained
    assert (out / "figures" / "budget_curves.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert f"0.85 [{0.85 - half:.2f}, {0.85 + half:.2f}]" in summary and "(runs/seed-2/index.html)" in summary
    # the answer: per metric, the verdict follows the paired interval (roc: entirely below 0; macro-F1: all ties)
    verdicts = {row["metric"]: row["verdict"] for row in doc["answer"]["table"]}
    assert verdicts["fracture AUC"] == "cross-entropy higher (SupCon won 0/3)"
    assert verdicts["macro-F1"].startswith("no difference these runs can tell")
    assert "Over 3 training runs" in doc["answer"]["text"] and doc["answer"]["text"] in page
    # the recipe's deviations from the paper, read from the runs' provenance
    assert {d["key"] for d in doc["recipe_deviations"]} == {"supcon_augmentation", "cube_size"}
    assert "supcon_augmentation" in page and "| supcon_augmentation | augmentation during SupCon" in summary
    # every run got the sweep's overrides and its grid value
    assert yaml.safe_load((out / "params" / "seed-2.yaml").read_text()) == {"supcon_epochs": 1, "supcon_warmup_epochs": 0,
                                                                                 "seed": 2}


def test_one_run_gives_na_intervals_not_nan(tmp_path):
    assert mean_interval([0.7])["ci_low"] is None and mean_interval([])["mean"] is None
    # with few runs the t-interval is wide: clipped to what the quantity can take
    wide = mean_interval([0.2, 0.9], bounds=(0.0, 1.0))
    assert (wide["ci_low"], wide["ci_high"]) == (0.0, 1.0) and wide["mean"] == pytest.approx(0.55)
    assert mean_interval([0.2, 0.9])["ci_low"] < 0
    out = tmp_path / "sw"
    run_sweep([sweep_file(tmp_path, "grid: {seed: [1]}\n")], out=out, progress=False, run_one=fake_study())
    page = (out / "index.html").read_text()
    assert "0.85 [n/a]" in page and not re.search(r"\bnan\b", page, re.IGNORECASE)
    assert json.loads((out / "sweep.json").read_text())["models"]["ce"]["metrics"]["roc_auc"]["sd"] is None


def test_resume_never_redoes_a_finished_run(tmp_path):
    out = tmp_path / "sw"
    point = tmp_path / "point.yaml"
    point.write_text("seed: 1\n")
    fake_study()([point], (), out / "runs" / "seed-1")
    finished = out / "runs" / "seed-1" / "metrics.json"
    before = (finished.read_bytes(), finished.stat().st_mtime_ns)
    calls = []
    result = run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(calls))
    assert calls == [0, 2] and result.skipped == ["seed-1"]
    assert (finished.read_bytes(), finished.stat().st_mtime_ns) == before
    assert not (out / "params" / "seed-1.yaml").exists()
    assert json.loads((out / "sweep.json").read_text())["runs_finished"] == 3


def test_a_failing_run_does_not_stop_the_others(tmp_path):
    out = tmp_path / "sw"
    calls = []
    result = run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(calls, fail_seeds={1}))
    assert calls == [0, 1, 2] and result.ran == ["seed-0", "seed-2"] and not result.ok
    assert "seed-1" in result.failed and "notebook 01 failed" in result.failed["seed-1"]
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["runs_finished"] == 2 and doc["runs_missing"] == ["seed-1"] and "seed-1" in doc["runs_failed"]
    assert "2 of 3 planned runs finished" in (out / "index.html").read_text()


def test_a_second_sweep_into_the_same_folder_refuses_and_stale_locks_are_taken_over(tmp_path):
    out = tmp_path / "sw"
    out.mkdir()
    lock = out / "sweep.lock"
    lock.write_text(f"{os.getppid()} {socket.gethostname()} 2026-01-01T00:00:00+00:00\n")  # a live process
    calls = []
    with pytest.raises(SweepError, match=rf"sweep .*: another vfnb run \(process {os.getppid()}, since 2026-01-01"
                                         r".*\(lock .*sweep\.lock\)"):
        run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(calls))
    assert calls == []
    # a lock held from another machine sharing the folder is refused: its process cannot be checked here
    lock.write_text("999999999 another-host 2026-01-01T00:00:00+00:00\n")
    with pytest.raises(SweepError, match=r"process 999999999 on another-host"):
        run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(calls))
    assert calls == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))  # an older sweep's lock format
    assert run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(calls)).ok
    assert calls == [0, 1, 2] and not lock.exists()


@pytest.mark.parametrize("text, message", [
    ("grid: {sede: [0, 1]}\n", r"sweep\.yaml: grid: unknown parameter 'sede' \(did you mean 'seed'\?\)"),
    ("grid: {}\n", r"sweep\.yaml: 'grid' is empty"),
    ("grid: {seed: []}\n", r"sweep\.yaml: grid key 'seed' has no values"),
    ("grid: {supcon_epochs: [1, 2]}\n", r"sweep\.yaml: grid key 'supcon_epochs' is also in overrides"),
    ("grid: {seed: [0]}\nseeds: 3\n", r"sweep\.yaml: unknown sweep key 'seeds'"),
    ("grid: {tag: ['../../etc']}\n", r"sweep\.yaml: grid key 'tag': value '\.\./\.\./etc' does not make a safe folder"),
    ("grid: {tag: [a/b]}\n", r"safe folder name"),
    ("grid: {tag: ['..']}\n", r"safe folder name"),
    ("grid: {seed: [1, 1.0]}\n", r"runs 'seed-1' and 'seed-1.0' are the same study"),
    ("grid: {seed: [0, -1]}\n", r"sweep\.yaml: grid value seed=-1 \(run seed--1\): parameter 'seed'"),
    ("grid: {n_boot: [10, 0]}\n", r"grid value n_boot=0 .*: parameter 'n_boot' = 0 is invalid"),
])
def test_bad_sweep_files_are_refused_naming_file_and_key(tmp_path, text, message):
    with pytest.raises((SweepError, ParamsError), match=message):
        load_sweep([sweep_file(tmp_path, text)])


def test_a_grid_key_fixed_by_an_option_is_refused_naming_the_option(tmp_path):
    with pytest.raises(SweepError, match=r"grid key 'seed' is also in overrides \(-p seed=3\)"):
        load_sweep([sweep_file(tmp_path)], ["seed=3"])
    assert load_sweep([sweep_file(tmp_path)], ["ce_epochs=2"]).overrides == {"supcon_epochs": 1, "supcon_warmup_epochs": 0,
                                                                        "ce_epochs": 2}


def test_grid_product_and_run_names(tmp_path):
    plan = load_sweep([sweep_file(tmp_path, "grid: {seed: [0, 1], tag: [synth-f0, synth-f1]}\n")])
    assert [n for n, _ in plan.points] == ["seed-0_tag-synth-f0", "seed-0_tag-synth-f1",
                                           "seed-1_tag-synth-f0", "seed-1_tag-synth-f1"]


def test_only_runs_one_point_then_aggregate_only_writes_the_report(tmp_path):
    out = tmp_path / "sw"
    calls = []
    result = run_sweep([sweep_file(tmp_path)], out=out, only=["seed=2"], progress=False, run_one=fake_study(calls))
    assert calls == [2] and result.ran == ["seed-2"] and not (out / "sweep.json").exists()
    with pytest.raises(SweepError, match=r"--only seed=7: 7 is not among"):
        run_sweep([sweep_file(tmp_path)], out=out, only=["seed=7"], progress=False, run_one=fake_study(calls))
    run_sweep([sweep_file(tmp_path)], out=out, aggregate_only=True, progress=False, run_one=fake_study(calls))
    assert calls == [2]
    assert "1 of 3 planned runs finished" in (out / "summary.md").read_text()


def test_cli_error_is_one_line_and_exit_2(tmp_path, capsys):
    bad = sweep_file(tmp_path, "grid: {sede: [0]}\n")
    assert cli.main(["sweep", "--params", str(bad), "--out", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sweep.yaml" in err and "'sede'" in err and "Traceback" not in err
    assert not (tmp_path / "sw").exists()


def test_resuming_with_another_plan_over_finished_runs_is_refused(tmp_path):
    out = tmp_path / "sw"
    assert run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(), only=["seed=0"]).ok
    changed = tmp_path / "changed.yaml"
    changed.write_text("study_params: []\noverrides: {supcon_epochs: 2, supcon_warmup_epochs: 0}\ngrid: {seed: [0, 1, 2]}\n")
    calls: list = []
    with pytest.raises(SweepError, match=r"plan.json: the finished runs \(seed-0\) were made with overrides"):
        run_sweep([changed], out=out, progress=False, run_one=fake_study(calls))
    assert calls == []  # nothing ran, nothing was mixed
    # the same plan resumes
    assert run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(calls)).ran == ["seed-1", "seed-2"]


def test_an_edited_study_file_under_finished_runs_is_refused(tmp_path):
    """Same sweep file, but the study file it names changed between runs: the runs would mix two recipes."""
    study_file = tmp_path / "my_study.yaml"
    study_file.write_text("temperature: 0.07\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"study_params: [{study_file}]\noverrides: {{supcon_epochs: 1, supcon_warmup_epochs: 0}}\ngrid: {{seed: [0, 1]}}\n")
    out = tmp_path / "sw"
    assert run_sweep([sweep], out=out, progress=False, run_one=fake_study(), only=["seed=0"]).ok
    study_file.write_text("temperature: 0.1\n")
    calls: list = []
    with pytest.raises(SweepError, match=r"study parameter temperature = 0.07, but this sweep asks 0.1"):
        run_sweep([sweep], out=out, progress=False, run_one=fake_study(calls))
    assert calls == []
    study_file.write_text("temperature: 0.07\n")  # back as it was: the sweep resumes
    assert run_sweep([sweep], out=out, progress=False, run_one=fake_study(calls)).ran == ["seed-1"]


def test_a_plan_recorded_before_study_parameters_were_kept_still_resumes(tmp_path):
    out = tmp_path / "sw"
    assert run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(), only=["seed=0"]).ok
    plan = json.loads((out / "plan.json").read_text())
    del plan["study"]  # as an older vfnb wrote it
    (out / "plan.json").write_text(json.dumps(plan))
    calls: list = []
    assert run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study(calls)).ran == ["seed-1", "seed-2"]
    assert "study" in json.loads((out / "plan.json").read_text())
