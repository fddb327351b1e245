"""`vfnb predict` over folders: every gradable scan graded, failures named per scan, runs resumed, names unique."""

import gzip

import pandas as pd
import pytest

from test_predict import synthetic_scan
from vfnb.cli import main
from vfnb.inference import command
from vfnb.inference.folder_run import progress_folder
from vfnb.io import save_nifti


def _folders(tmp_path, names=("a", "b", "c")):
    ct, seg, affine = synthetic_scan()
    for sub in ("img", "seg"):
        (tmp_path / sub).mkdir(exist_ok=True)
    for name in names:
        save_nifti(tmp_path / "img" / f"{name}.nii.gz", ct, affine)
        save_nifti(tmp_path / "seg" / f"{name}.nii.gz", seg, affine)
    return tmp_path / "img", tmp_path / "seg"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _predict(img, seg, out, *more):
    return main(["predict", "--ct", str(img), "--seg", str(seg), "--out", str(out), *more])


def test_a_broken_scan_is_a_row_of_the_table_and_the_others_are_graded(tmp_path, capsys):
    img, seg = _folders(tmp_path)
    _truncate(img / "b.nii.gz")
    out, reports = tmp_path / "grades.csv", tmp_path / "reports"
    assert _predict(img, seg, out, "--report", str(reports)) == 1
    err = capsys.readouterr().err
    assert "1 of 3 scan(s) could not be graded (b: " in err and "--resume" in err and "Traceback" not in err
    table = pd.read_csv(out)
    assert list(table["scan"].unique()) == ["a", "b", "c"]
    failed = table[table["scan"] == "b"]
    assert len(failed) == 1 and "b.nii.gz" in failed["error"].iloc[0] and failed["level"].isna().all()
    assert table[table["scan"] != "b"]["error"].isna().all() and len(table[table["scan"] == "c"]) == 3
    assert sorted(p.name for p in reports.iterdir()) == ["a.html", "c.html", "index.html"]
    index = (reports / "index.html").read_text()
    assert "href='a.html'" in index and "href='c.html'" in index and "href='b.html'" not in index
    assert "not graded: " in index and "b.nii.gz" in index
    # the corrected rerun grades only b
    ct, _, affine = synthetic_scan()
    save_nifti(img / "b.nii.gz", ct, affine)
    assert _predict(img, seg, out, "--report", str(reports), "--resume") == 0
    err = capsys.readouterr().err
    assert "a: finished in an earlier run, kept" in err and "c: finished in an earlier run, kept" in err
    assert "[2/3] b: 3 vertebrae graded" in err
    again = pd.read_csv(out)
    assert len(again) == 9 and again["error"].isna().all() and not progress_folder(out).exists()
    numbers = table.select_dtypes("number").columns
    pd.testing.assert_frame_equal(again[again["scan"] == "a"][numbers], table[table["scan"] == "a"][numbers],
                                  check_dtype=False)


def test_a_stopped_run_resumes_and_is_not_taken_for_finished(tmp_path, monkeypatch, capsys):
    img, seg = _folders(tmp_path)
    out = tmp_path / "grades.csv"
    real = command.grade_scan

    def stop_at_c(ct, *args, **kwargs):
        if "c.nii" in str(ct):
            raise KeyboardInterrupt
        return real(ct, *args, **kwargs)

    monkeypatch.setattr(command, "grade_scan", stop_at_c)
    with pytest.raises(KeyboardInterrupt):
        command.predict_command(img, seg, None, out)
    assert not out.exists() and sorted(p.name for p in progress_folder(out).iterdir()) == ["a.csv", "b.csv", "run.json"]
    monkeypatch.setattr(command, "grade_scan", real)
    assert _predict(img, seg, out) == 2
    assert "did not finish" in capsys.readouterr().err
    assert _predict(img, seg, out, "--resume", "--checkpoint", str(tmp_path / "other.pt")) == 2  # not the same run
    assert _predict(img, seg, out, "--resume") == 0
    assert "[3/3] c: 3 vertebrae graded" in capsys.readouterr().err
    assert len(pd.read_csv(out)) == 9


def test_resume_with_other_inputs_is_refused(tmp_path, capsys):
    img, seg = _folders(tmp_path)
    _truncate(img / "c.nii.gz")
    out = tmp_path / "grades.csv"
    assert _predict(img, seg, out) == 1
    capsys.readouterr()
    assert _predict(img, seg, out, "--resume", "--report", str(tmp_path / "r")) == 2
    assert "the previous run had report False, this one True" in capsys.readouterr().err


def test_two_ct_files_with_one_scan_name_are_refused(tmp_path, capsys):
    img, seg = _folders(tmp_path, names=("a",))
    (img / "a.nii").write_bytes(gzip.decompress((img / "a.nii.gz").read_bytes()))
    (seg / "a.nii").write_bytes(gzip.decompress((seg / "a.nii.gz").read_bytes()))
    assert _predict(img, seg, tmp_path / "g.csv") == 2
    assert "a.nii and a.nii.gz share the scan name 'a'" in capsys.readouterr().err
    assert not (tmp_path / "g.csv").exists()


def test_a_scan_named_index_is_refused_when_reports_are_asked_for(tmp_path, capsys):
    img, seg = _folders(tmp_path, names=("index",))
    assert _predict(img, seg, tmp_path / "g.csv", "--report", str(tmp_path / "r")) == 2
    assert "a scan named 'index'" in capsys.readouterr().err


def test_predict_says_what_it_does_before_the_slow_part_and_after_each_scan(tmp_path, capsys):
    img, seg = _folders(tmp_path, names=("a",))
    assert main(["predict", "--ct", str(img / "a.nii.gz"), "--seg", str(seg / "a.nii.gz"),
                 "--out", str(tmp_path / "g.csv")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"vfnb predict: reading {img / 'a.nii.gz'}") and "a: 3 vertebrae graded" in lines
