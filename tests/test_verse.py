"""import_verse on a miniature fake VerSe tree written with nibabel."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import yaml

from vfnb.cli import main
from vfnb.data.check import check_dataset
from vfnb.data.original import read_original
from vfnb.data.verse import import_verse, plan_verse_import, read_grade_table
from vfnb.errors import DatasetError, VfnbError
from vfnb.io import save_nifti


def _scan(labels):
    ct = np.full((8, 8, 4 * len(labels) + 2), -50, np.int16)
    seg = np.zeros(ct.shape, np.uint8)
    for i, label in enumerate(labels):
        ct[2:6, 2:6, 1 + 4 * i:4 + 4 * i] = 600
        seg[2:6, 2:6, 1 + 4 * i:4 + 4 * i] = label
    return ct, seg


@pytest.fixture
def verse_root(tmp_path):
    """Two releases under one folder; stems with and without infixes; strays."""
    root = tmp_path / "verse"
    scans = {
        ("dataset-verse19training", "sub-verse004", ""): (19, 20, 21),
        ("dataset-verse19training", "sub-verse010", ""): (20, 21),  # never graded
        ("dataset-01training", "sub-gl003", "_dir-ax"): (18, 19, 20),
        ("dataset-01training", "sub-verse500", "_split-verse251"): (8, 9),
    }
    for (release, subject, infix), labels in scans.items():
        ct, seg = _scan(labels)
        affine = np.diag([0.8, 0.8, 1.5, 1.0])
        save_nifti(root / release / "rawdata" / subject / f"{subject}{infix}_ct.nii.gz", ct, affine)
        save_nifti(root / release / "derivatives" / subject / f"{subject}{infix}_seg-vert_msk.nii.gz", seg, affine)
        (root / release / "derivatives" / subject / f"{subject}{infix}_seg-subreg_ctd.json").write_text("[]")
    # a CT with no mask, and an unrelated nifti
    ct, _ = _scan((20,))
    save_nifti(root / "dataset-01training" / "rawdata" / "sub-gl099" / "sub-gl099_ct.nii.gz", ct, np.eye(4))
    save_nifti(root / "dataset-01training" / "other" / "sub-x_ct.nii.gz", ct, np.eye(4))
    return root


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree_digest(root):
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


WIDE_ROWS = [
    {"verse_ID": "verse004", "T12_fx-g": 0, "L1_fx-g": 2, "L2_fx-g": None, "T1_fx-g": None},
    {"verse_ID": "sub-gl003_dir-ax", "T12_fx-g": 1, "L1_fx-g": 0, "L2_fx-g": None, "T1_fx-g": None},
    {"verse_ID": "500", "T12_fx-g": None, "L1_fx-g": None, "L2_fx-g": None, "T1_fx-g": 3},
    {"verse_ID": "verse777", "T12_fx-g": 1, "L1_fx-g": None, "L2_fx-g": None, "T1_fx-g": None},
]
EXPECTED = {
    "sub-verse004.nii.gz": {19: 0, 20: 2},
    "sub-gl003_dir-ax.nii.gz": {19: 1, 20: 0},
    "sub-verse500_split-verse251.nii.gz": {8: 3},
}


@pytest.mark.parametrize("form", ["csv", "xlsx"])
def test_import_wide_table(verse_root, tmp_path, form, capsys):
    table = tmp_path / f"grades.{form}"
    frame = pd.DataFrame(WIDE_ROWS)
    frame.to_csv(table, index=False) if form == "csv" else frame.to_excel(table, index=False)
    before = _tree_digest(verse_root)
    out = import_verse(verse_root, table, tmp_path / "out")
    assert _tree_digest(verse_root) == before  # inputs untouched
    annotation = yaml.safe_load((out / "annotation.yaml").read_text())
    assert annotation == EXPECTED
    assert _digest(out / "img" / "sub-gl003_dir-ax.nii.gz") == \
        _digest(verse_root / "dataset-01training" / "rawdata" / "sub-gl003" / "sub-gl003_dir-ax_ct.nii.gz")
    assert _digest(out / "seg" / "sub-verse004.nii.gz") == _digest(
        verse_root / "dataset-verse19training" / "derivatives" / "sub-verse004" / "sub-verse004_seg-vert_msk.nii.gz")
    assert sorted(p.name for p in (out / "img").iterdir()) == sorted(EXPECTED)
    assert sorted(c.case_id for c in read_original(out)) == sorted(k[:-7] for k in EXPECTED)
    report = check_dataset(out)
    assert report.ok, report.errors
    err = capsys.readouterr().err
    assert "warning:" in err
    assert "sub-verse010" in err and "no grades" in err  # subject without grades
    assert "'verse777'" in err and "no matching scan" in err  # grades without scan
    assert "sub-gl099_ct.nii.gz" in err and "no label map" in err


def test_import_long_table_with_subject_id_forms(verse_root, tmp_path):
    table = tmp_path / "long.csv"
    table.write_text("subject,level,grade\n4,T12,1\nsub-verse004,20,3\nverse004,L2,\ngl003,T11,2\n")
    out = import_verse(verse_root, table, tmp_path / "out")
    annotation = yaml.safe_load((out / "annotation.yaml").read_text())
    assert annotation == {"sub-verse004.nii.gz": {19: 1, 20: 3}, "sub-gl003_dir-ax.nii.gz": {18: 2}}


def test_subject_id_column_and_number_ids(verse_root, tmp_path):
    table = tmp_path / "w.csv"
    pd.DataFrame([{"subject_ID": 4.0, "L1_fx-g": 1.0}, {"subject_ID": "sub-gl003", "L1_fx-g": 3}]).to_csv(
        table, index=False)
    plan = plan_verse_import(verse_root, table)
    assert plan.grades == {"sub-gl003_dir-ax": {20: 3}, "sub-verse004": {20: 1}}


@pytest.mark.parametrize("text,expected", [
    ("verse_ID,T12_fx-g\nverse004,5\n", "row 2, column T12_fx-g: grade '5' is not an integer 0-3"),
    ("verse_ID,T12_fx-g\nverse004,1.5\n", "grade '1.5'"),
    ("verse_ID,T12_fx-g\nverse004,x\n", "grade 'x'"),
    ("verse_ID,Q9_fx-g\nverse004,1\n", "column 'Q9_fx-g'"),
    ("id,grade\nverse004,1\n", "neither the wide form"),
    ("subject,level,grade\nverse004,Z3,1\n", "row 2: vertebra level 'Z3'"),
    ("subject,level,grade\nverse004,T12,1\nverse004,T12,2\n", "graded 2 here and 1 earlier"),
])
def test_bad_grade_tables_name_the_table(verse_root, tmp_path, text, expected):
    table = tmp_path / "bad.csv"
    table.write_text(text)
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(".", r"\.")) as info:
        import_verse(verse_root, table, tmp_path / "out")
    assert str(table) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_inputs_and_existing_output(verse_root, tmp_path):
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\n4,T12,1\n")
    with pytest.raises(DatasetError, match="nope.csv"):
        import_verse(verse_root, tmp_path / "nope.csv", tmp_path / "out")
    with pytest.raises(DatasetError, match="VerSe folder not found"):
        import_verse(tmp_path / "no_verse", table, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no CT found"):
        import_verse(tmp_path / "empty", table, tmp_path / "out")
    none = tmp_path / "none.csv"
    none.write_text("subject,level,grade\n999,T12,1\n")
    with pytest.raises(DatasetError, match="nothing to import"):
        import_verse(verse_root, none, tmp_path / "out")
    out = import_verse(verse_root, table, tmp_path / "out")
    with pytest.raises(VfnbError, match="already exists"):
        import_verse(verse_root, table, out)
    table.write_text("subject,level,grade\n4,L1,2\n")
    import_verse(verse_root, table, out, overwrite=True)
    assert yaml.safe_load((out / "annotation.yaml").read_text()) == {"sub-verse004.nii.gz": {20: 2}}


def test_ambiguous_number(tmp_path):
    root = tmp_path / "v"
    ct, seg = _scan((20,))
    for subject in ("sub-gl004", "sub-verse004"):
        save_nifti(root / "rawdata" / subject / f"{subject}_ct.nii.gz", ct, np.eye(4))
        save_nifti(root / "derivatives" / subject / f"{subject}_seg-vert_msk.nii.gz", seg, np.eye(4))
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\n4,L1,1\n")
    with pytest.raises(DatasetError, match="several subjects"):
        plan_verse_import(root, table)
    table.write_text("subject,level,grade\ngl004,L1,1\n")
    assert plan_verse_import(root, table).grades == {"sub-gl004": {20: 1}}


def test_cli_import_verse(verse_root, tmp_path, capsys):
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\n4,T12,1\n")
    assert main(["import-verse", str(verse_root), str(table), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert read_grade_table(table)[0][:3] == ("4", 19, 1)
