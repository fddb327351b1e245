"""import_verse on miniature VerSe releases laid out as the organisers publish them.

The fixtures write, with nibabel and gzip, the published structure: BIDS names under
rawdata/ and derivatives/, VerSe 2019 release folders, VerSe 2020 split folders with
dir-/split- entities, the flat names of the older 2019 download; label maps stored as
float32 / float64 / scaled int16 in their own orientation (PIR, LPS), centroid JSON
files with their direction line, the grade spreadsheet with <level>_fx-g and
<level>_fx-s columns.
"""

import gzip
import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from vfnb.cli import main
from vfnb.data.check import check_dataset
from vfnb.data.original import read_original
from vfnb.data.verse import import_verse, plan_verse_import
from vfnb.data.verse_files import find_verse_scans, read_centroids
from vfnb.data.verse_grades import read_grade_table
from vfnb.errors import DatasetError, VfnbError
from vfnb.io import load_nifti

PIR = np.array([[0, 0, 0.9, -7.0], [-0.9, 0, 0, 9.0], [0, -1.2, 0, 30.0], [0, 0, 0, 1]])  # P, I, R
LPS = np.diag([-0.8, -0.8, 1.5, 1.0])


def _write_nifti(path, raw, affine, slope=None, inter=None):
    """A .nii.gz holding ``raw`` exactly as given (dtype, scl_slope / scl_inter), as a scanner's converter writes it."""
    header = nib.Nifti1Header()
    header.set_data_shape(raw.shape)
    header.set_data_dtype(raw.dtype)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    header["scl_slope"] = np.nan if slope is None else slope
    header["scl_inter"] = np.nan if inter is None else inter
    header["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock)
        f.write(b"\x00" * 4)  # no extensions
        f.write(np.asarray(raw).tobytes(order="F"))


def _volumes(labels, axis=1):
    """A CT (int16 HU) and a label map with one block per vertebra, stacked along ``axis``."""
    shape = [14, 14, 12]
    shape[axis] = 5 * len(labels) + 2
    ct = np.full(shape, -60, np.int16)
    seg = np.zeros(shape, np.float32)
    for i, label in enumerate(labels):
        index = [slice(3, 11), slice(3, 11), slice(3, 9)]
        index[axis] = slice(1 + 5 * i, 5 + 5 * i)
        ct[tuple(index)] = 500
        seg[tuple(index)] = label
    return ct, seg


def _centroids(seg, affine, extra=()):
    entries = [{"direction": list(nib.aff2axcodes(affine))}]
    for label in [int(v) for v in np.unique(seg) if v] + list(extra):
        entries.append({"label": label, "X": 5.0, "Y": 7.5, "Z": 6.0})
    return entries


def _bids_scan(release, stem, labels, affine=PIR, mask_dtype=np.float32, extra_centroids=()):
    subject = stem.split("_")[0]
    axis = int(np.argmax(np.abs(affine[2, :3])))  # stack the vertebrae along the body axis, C1 end superior
    ct, seg = _volumes(labels if affine[2, axis] < 0 else labels[::-1], axis=axis)
    _write_nifti(release / "rawdata" / subject / f"{stem}_ct.nii.gz", ct, affine)
    _write_nifti(release / "derivatives" / subject / f"{stem}_seg-vert_msk.nii.gz", seg.astype(mask_dtype), affine)
    (release / "derivatives" / subject / f"{stem}_seg-subreg_ctd.json").write_text(
        json.dumps(_centroids(seg, affine, extra_centroids)))
    (release / "derivatives" / subject / f"{stem}_seg-vert_snp.png").write_bytes(b"\x89PNG\r\n\x1a\n")


def _tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _annotation(out):
    return yaml.safe_load((out / "annotation.yaml").read_text())


# ---------------------------------------------------------------- VerSe 2019
@pytest.fixture
def verse19(tmp_path):
    """Two VerSe 2019 release folders as unzipped: dataset-verse19training, dataset-verse19validation."""
    root = tmp_path / "verse19"
    training, validation = root / "dataset-verse19training", root / "dataset-verse19validation"
    _bids_scan(training, "sub-verse004", (19, 20, 21))  # T12, L1, L2; float32 mask in PIR
    _bids_scan(training, "sub-verse010", (20, 21), mask_dtype=np.float64)  # nobody graded it
    _bids_scan(validation, "sub-verse012", (18, 19), affine=LPS)
    return root


def _verse19_table(path):
    """The grade spreadsheet as distributed: verse_ID numbers, <level>_fx-g and _fx-s columns, more columns."""
    rows = [
        {"verse_ID": 4, "sex": "F", "age": 71, "T11_fx-g": None, "T11_fx-s": None, "T12_fx-g": 0, "T12_fx-s": None,
         "L1_fx-g": 2, "L1_fx-s": 1, "L2_fx-g": 0, "L2_fx-s": None},
        {"verse_ID": 12, "sex": "M", "age": 65, "T11_fx-g": 1, "T11_fx-s": 2, "T12_fx-g": 3, "T12_fx-s": 3,
         "L1_fx-g": None, "L1_fx-s": None, "L2_fx-g": None, "L2_fx-s": None},
    ]
    frame = pd.DataFrame(rows)
    frame.to_excel(path, index=False) if path.suffix == ".xlsx" else frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("form", ["xlsx", "csv"])
def test_imports_the_published_2019_release(verse19, tmp_path, form, capsys):
    table = _verse19_table(tmp_path / f"fracture_grading.{form}")
    before = _tree_digest(verse19)
    out = import_verse(verse19, table, tmp_path / "out")
    assert _tree_digest(verse19) == before  # nothing in the release is modified
    assert _annotation(out) == {"sub-verse004.nii.gz": {19: 0, 20: 2, 21: 0}, "sub-verse012.nii.gz": {18: 1, 19: 3}}
    source = verse19 / "dataset-verse19training"
    ct_in = source / "rawdata" / "sub-verse004" / "sub-verse004_ct.nii.gz"
    assert (out / "img" / "sub-verse004.nii.gz").read_bytes() == ct_in.read_bytes()  # CT copied byte for byte
    seg, affine, header = load_nifti(out / "seg" / "sub-verse004.nii.gz")
    assert seg.dtype == np.uint8  # float32 on disk -> integer labels
    assert np.allclose(affine, PIR) and nib.aff2axcodes(affine) == ("P", "I", "R")  # orientation kept
    expected, _, _ = load_nifti(source / "derivatives" / "sub-verse004" / "sub-verse004_seg-vert_msk.nii.gz")
    assert np.array_equal(seg, expected.astype(np.uint8)) and sorted(np.unique(seg)) == [0, 19, 20, 21]
    lps, lps_affine, _ = load_nifti(out / "seg" / "sub-verse012.nii.gz")
    assert np.allclose(lps_affine, LPS)
    assert sorted(c.case_id for c in read_original(out)) == ["sub-verse004", "sub-verse012"]
    report = check_dataset(out)
    assert report.ok, report.errors
    err = capsys.readouterr().err
    assert "found 2 split folders with rawdata/ and derivatives/" in err and "dataset-verse19training, dataset-verse19validation" in err
    assert "sub-verse010" in err and "no grades" in err  # the extra scan is a warning, not imported
    assert not (out / "img" / "sub-verse010.nii.gz").exists()


def test_centroid_file_is_read_and_cross_checked(tmp_path, capsys):
    release = tmp_path / "v"
    _bids_scan(release, "sub-verse020", (20, 21), extra_centroids=(22,))
    direction, centroids = read_centroids(release / "derivatives" / "sub-verse020" / "sub-verse020_seg-subreg_ctd.json")
    assert direction == ("P", "I", "R") and sorted(centroids) == [20, 21, 22]
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nsub-verse020,L1,1\n")
    import_verse(release, table, tmp_path / "out")
    err = capsys.readouterr().err
    assert "sub-verse020_seg-subreg_ctd.json: centroids for L3 (22), absent from the label map" in err
    assert "found one release folder (v: rawdata/, derivatives/)" in err


# ---------------------------------------------------------------- VerSe 2020
@pytest.fixture
def verse20(tmp_path):
    """VerSe 2020 as published: 01_training / 02_validation / 03_test, scans told apart by dir- and split-."""
    root = tmp_path / "verse20"
    _bids_scan(root / "01_training", "sub-gl003_dir-ax", (18, 19, 20))
    _bids_scan(root / "01_training", "sub-verse506_split-verse290", (19, 20))
    _bids_scan(root / "01_training", "sub-verse506_split-verse291", (21, 22), mask_dtype=np.float64)
    _bids_scan(root / "02_validation", "sub-verse600", (8, 9), affine=LPS)
    _bids_scan(root / "03_test", "sub-gl090_dir-sag", (23, 24))
    _bids_scan(root / "03_test", "sub-gl090_dir-ax", (23, 24))
    return root


def test_2020_split_folders_and_entities(verse20, tmp_path, capsys):
    table = tmp_path / "g.csv"
    pd.DataFrame([
        {"subject_ID": "sub-gl003", "T11_fx-g": 1, "T12_fx-g": 0, "L1_fx-g": 0},  # gl003: one scan
        {"subject_ID": "verse290", "T12_fx-g": 2, "L1_fx-g": 3},  # the scan id kept in split-verse290
        {"subject_ID": "sub-verse506_split-verse291", "L2_fx-g": 0, "L3_fx-g": 1},
        {"subject_ID": "600", "T1_fx-g": 0, "T2_fx-g": 0},
        {"subject_ID": "sub-gl090_dir-sag", "L4_fx-g": 2, "L5_fx-g": 0},
    ]).to_csv(table, index=False)
    out = import_verse(verse20, table, tmp_path / "out")
    assert _annotation(out) == {
        "sub-gl003_dir-ax.nii.gz": {18: 1, 19: 0, 20: 0},
        "sub-gl090_dir-sag.nii.gz": {23: 2, 24: 0},
        "sub-verse506_split-verse290.nii.gz": {19: 2, 20: 3},
        "sub-verse506_split-verse291.nii.gz": {21: 0, 22: 1},
        "sub-verse600.nii.gz": {8: 0, 9: 0},
    }
    err = capsys.readouterr().err
    assert "found 3 split folders with rawdata/ and derivatives/ (01_training, 02_validation, 03_test)" in err
    assert "sub-gl090_dir-ax" in err and "no grades" in err


@pytest.mark.parametrize("written", ["verse506", "sub-verse506", "gl090", "506"])
def test_an_id_fitting_several_scans_is_refused_never_guessed(verse20, tmp_path, written):
    table = tmp_path / "g.csv"
    table.write_text(f"subject,level,grade\n{written},L1,1\n")
    with pytest.raises(DatasetError, match=f"row 2: id '{written}' fits 2 scans") as info:
        import_verse(verse20, table, tmp_path / "out")
    assert "write its full id" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_one_split_folder_and_missing_subjects(verse20, tmp_path, capsys):
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nverse290,L1,1\nverse600,T1,2\nverse600,T2,0\n")
    split = verse20 / "01_training"
    with pytest.raises(DatasetError, match=r"'verse600' has grades \(T1, T2\) but no scan below") as info:
        import_verse(split, table, tmp_path / "out")
    assert "row 3" in str(info.value) and "--allow-missing" in str(info.value)
    assert not (tmp_path / "out").exists()
    out = import_verse(split, table, tmp_path / "out", allow_missing=True)
    assert _annotation(out) == {"sub-verse506_split-verse290.nii.gz": {20: 1}}
    err = capsys.readouterr().err
    assert "found one split folder (01_training: rawdata/, derivatives/)" in err
    assert "'verse600' has grades (T1, T2) but no scan" in err and "skipped: --allow-missing" in err


# ---------------------------------------------------------------- flat 2019 names
def test_flat_2019_names(tmp_path):
    root = tmp_path / "miccai19"
    ct, seg = _volumes((20, 21))
    _write_nifti(root / "verse007.nii.gz", ct, LPS)
    _write_nifti(root / "verse007_seg.nii.gz", seg, LPS)
    (root / "verse007_ctd.json").write_text(json.dumps(_centroids(seg, LPS)))
    _write_nifti(root / "scan1.nii.gz", ct, LPS)  # a NIfTI with a short name but no _seg beside it: not a scan
    tree = find_verse_scans(root)
    assert [s.stem for s in tree.scans] == ["sub-verse007"] and tree.scans[0].centroids_path.name == "verse007_ctd.json"
    assert "flat VerSe 2019 names" in tree.layout and not tree.warnings
    table = tmp_path / "g.csv"
    table.write_text("verse_ID,L1_fx-g,L2_fx-g\n7,1,0\n")
    out = import_verse(root, table, tmp_path / "out")
    assert _annotation(out) == {"sub-verse007.nii.gz": {20: 1, 21: 0}}


# ---------------------------------------------------------------- label maps
def test_scaled_and_float64_masks_become_integer_labels(tmp_path):
    release = tmp_path / "v"
    ct, seg = _volumes((20, 19), axis=2)  # LPS: the third axis runs superior, L1 below T12
    _write_nifti(release / "rawdata" / "sub-verse030" / "sub-verse030_ct.nii.gz", ct.astype(np.float32), LPS)
    # stored as int16 twice the label, scl_slope 0.5
    _write_nifti(release / "derivatives" / "sub-verse030" / "sub-verse030_seg-vert_msk.nii.gz",
                 (seg * 2).astype(np.int16), LPS, slope=0.5, inter=0.0)
    # stored as float64 label - 1, scl_inter 1 (background stored as -1)
    _write_nifti(release / "rawdata" / "sub-verse031" / "sub-verse031_ct.nii.gz", ct, LPS)
    _write_nifti(release / "derivatives" / "sub-verse031" / "sub-verse031_seg-vert_msk.nii.gz",
                 seg.astype(np.float64) - 1, LPS, slope=1.0, inter=1.0)
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nverse030,T12,1\nverse031,L1,2\n")
    out = import_verse(release, table, tmp_path / "out")
    for stem in ("sub-verse030", "sub-verse031"):
        labels, affine, header = load_nifti(out / "seg" / f"{stem}.nii.gz")
        assert labels.dtype == np.uint8 and np.array_equal(labels, seg.astype(np.uint8))
        assert header.get_slope_inter() in ((None, None), (1.0, 0.0))
    assert check_dataset(out).ok


def test_non_integer_or_out_of_range_masks_are_refused(tmp_path):
    release = tmp_path / "v"
    ct, seg = _volumes((19, 20))
    seg[5, 3, 4] = 19.5  # interpolated, e.g. resampled with order > 0
    _write_nifti(release / "rawdata" / "sub-verse040" / "sub-verse040_ct.nii.gz", ct, PIR)
    mask = release / "derivatives" / "sub-verse040" / "sub-verse040_seg-vert_msk.nii.gz"
    _write_nifti(mask, seg, PIR)
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nverse040,T12,1\n")
    with pytest.raises(DatasetError, match=r"non-integer value 19\.5 at voxel \(5, 3, 4\)") as info:
        import_verse(release, table, tmp_path / "out")
    assert str(mask) in str(info.value)
    assert not (tmp_path / "out").exists()
    seg[5, 3, 4] = 45  # a subregion label in the vertebra map
    _write_nifti(mask, seg, PIR)
    with pytest.raises(DatasetError, match="holds the value 45"):
        import_verse(release, table, tmp_path / "out")


def test_mask_off_the_ct_grid_is_refused(tmp_path):
    release = tmp_path / "v"
    ct, seg = _volumes((19, 20))
    _write_nifti(release / "rawdata" / "sub-verse041" / "sub-verse041_ct.nii.gz", ct, PIR)
    shifted = PIR.copy()
    shifted[:3, 3] += 0.4
    _write_nifti(release / "derivatives" / "sub-verse041" / "sub-verse041_seg-vert_msk.nii.gz", seg, shifted)
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nverse041,T12,1\n")
    with pytest.raises(DatasetError, match="is not on the voxel grid of its CT sub-verse041_ct.nii.gz"):
        import_verse(release, table, tmp_path / "out")


# ---------------------------------------------------------------- grades against the label map
def test_grade_for_a_level_absent_from_the_mask(verse19, tmp_path, capsys):
    table = tmp_path / "g.csv"
    table.write_text("verse_ID,T10_fx-g,L1_fx-g,T12_fx-g,L3_fx-g\nverse004,2,1,,\nverse012,,,0,1\n")
    with pytest.raises(DatasetError, match=r"row 2, column T10_fx-g: sub-verse004 T10 \(17\) is graded 2 but "
                                           r"absent from the label map sub-verse004_seg-vert_msk\.nii\.gz") as info:
        import_verse(verse19, table, tmp_path / "out")
    assert str(info.value).startswith("2 problems:")  # every scan's problems at once
    assert "row 3, column L3_fx-g: sub-verse012 L3 (22) is graded 1 but absent" in str(info.value)
    assert not (tmp_path / "out").exists()
    out = import_verse(verse19, table, tmp_path / "out", allow_missing=True)
    assert _annotation(out) == {"sub-verse004.nii.gz": {20: 1}, "sub-verse012.nii.gz": {19: 0}}
    assert "grade dropped: --allow-missing" in capsys.readouterr().err


def test_text_in_a_grade_cell(verse19, tmp_path):
    table = tmp_path / "g.csv"
    table.write_text("verse_ID,T10_fx-g,L1_fx-g\n4,x,1\n12,-,\n")  # marks where the scan has no such vertebra
    plan = plan_verse_import(verse19, table)
    assert plan.grades["sub-verse004"][17][0] is None
    out = import_verse(verse19, table, tmp_path / "out")
    assert _annotation(out) == {"sub-verse004.nii.gz": {20: 1}}  # sub-verse012: only a mark, nothing to import
    table.write_text("verse_ID,L1_fx-g,L2_fx-g\n4,1,x\n")  # a mark where the vertebra is in the label map
    with pytest.raises(DatasetError, match=r"column L2_fx-g: sub-verse004 L2 \(21\) is in the label map but its "
                                           r"grade is 'x'"):
        import_verse(verse19, table, tmp_path / "out2")


# ---------------------------------------------------------------- grade tables
@pytest.mark.parametrize("text,expected", [
    ("verse_ID,T12_fx-g\nverse004,5\n", "row 2, column T12_fx-g: grade '5' is not an integer 0-3"),
    ("verse_ID,T12_fx-g\nverse004,1.5\n", "grade '1.5'"),
    ("verse_ID,Q9_fx-g\nverse004,1\n", "column 'Q9_fx-g'"),
    ("id,grade\nverse004,1\n", "neither the wide form"),
    ("verse_ID,T12_fx-s\nverse004,1\n", "neither the wide form"),  # shape columns only
    ("verse_ID,T12_fx-g\n,1\n", "row 2: grades in T12_fx-g but no id"),
    ("subject,level,grade\nverse004,Z3,1\n", "row 2: vertebra level 'Z3'"),
    ("subject,level,grade\nverse004,T12,1\nverse004,T12,2\n", "T12 graded '2' here and '1' at"),
])
def test_bad_grade_tables_name_the_table(verse19, tmp_path, text, expected):
    table = tmp_path / "bad.csv"
    table.write_text(text)
    with pytest.raises(DatasetError, match=expected.replace("(", r"\(").replace(".", r"\.")) as info:
        import_verse(verse19, table, tmp_path / "out")
    assert str(table) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unreadable_tables(verse19, tmp_path):
    corrupt = tmp_path / "grades.xlsx"
    corrupt.write_bytes(b"PK\x03\x04 not really a workbook")
    with pytest.raises(DatasetError, match="grades.xlsx: cannot read the grade table"):
        import_verse(verse19, corrupt, tmp_path / "out")
    with pytest.raises(DatasetError, match="nope.csv: grade table not found"):
        import_verse(verse19, tmp_path / "nope.csv", tmp_path / "out")
    workbook = tmp_path / "two_sheets.xlsx"
    with pd.ExcelWriter(workbook) as writer:  # the grades on the second sheet, a title sheet first
        pd.DataFrame({"notes": ["VerSe fracture grading"]}).to_excel(writer, sheet_name="readme", index=False)
        pd.DataFrame({"verse_ID": [4], "L1_fx-g": [3]}).to_excel(writer, sheet_name="grades", index=False)
    assert [(e.key, e.label, e.grade) for e in read_grade_table(workbook)] == [("4", 20, 3)]


def test_long_table_id_forms(verse19, tmp_path):
    table = tmp_path / "long.csv"
    table.write_text("subject,level,grade\n4,T12,1\nsub-verse004,20,3\nverse004,L2,\n12.0,T11,2\n"
                     "sub-verse012_ct.nii.gz,19,0\n")
    plan = plan_verse_import(verse19, table)
    assert {s: {l: g for l, (g, _) in v.items()} for s, v in plan.grades.items()} == {
        "sub-verse004": {19: 1, 20: 3}, "sub-verse012": {18: 2, 19: 0}}


def test_a_number_shared_by_two_subjects_is_refused(tmp_path):
    root = tmp_path / "v"
    for stem in ("sub-gl004", "sub-verse004"):
        _bids_scan(root, stem, (20,))
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\n4,L1,1\n")
    with pytest.raises(DatasetError, match=r"id '4' fits 2 scans \(sub-gl004, sub-verse004\)"):
        plan_verse_import(root, table)
    table.write_text("subject,level,grade\ngl004,L1,1\n")
    assert list(plan_verse_import(root, table).grades) == ["sub-gl004"]


# ---------------------------------------------------------------- hostile and odd trees
def test_symlinks_out_of_the_release_are_refused(tmp_path):
    release, elsewhere = tmp_path / "v", tmp_path / "elsewhere"
    _bids_scan(release, "sub-verse050", (20,))
    _bids_scan(elsewhere, "sub-verse051", (20,))
    link = release / "rawdata" / "sub-verse051"
    link.mkdir(parents=True)
    (link / "sub-verse051_ct.nii.gz").symlink_to(elsewhere / "rawdata" / "sub-verse051" / "sub-verse051_ct.nii.gz")
    with pytest.raises(DatasetError, match="sub-verse051_ct.nii.gz: symbolic link to .*outside the VerSe folder"):
        find_verse_scans(release)
    (link / "sub-verse051_ct.nii.gz").unlink()
    os.rmdir(link)
    (release / "derivatives" / "sub-verse051").symlink_to(elsewhere / "derivatives" / "sub-verse051")
    with pytest.raises(DatasetError, match="symbolic link to the folder .*outside the VerSe folder"):
        find_verse_scans(release)
    (release / "derivatives" / "sub-verse051").unlink()
    inside = release / "rawdata" / "sub-verse050" / "sub-verse050_ct.nii.gz"
    (release / "copy").symlink_to(release / "rawdata")  # a link that stays inside is not followed twice
    assert [s.ct_path for s in find_verse_scans(release).scans] == [inside]


def test_odd_names_are_skipped_with_a_warning(tmp_path):
    release = tmp_path / "v"
    _bids_scan(release, "sub-verse060", (20,))
    ct, _ = _volumes((20,))
    _write_nifti(release / "rawdata" / "sub-verse0..61" / "sub-verse0..61_ct.nii.gz", ct, LPS)
    _write_nifti(release / "rawdata" / "sub-verse062" / "sub-verse099_ct.nii.gz", ct, LPS)  # wrong subject folder
    _write_nifti(release / "rawdata" / "sub-verse063" / "sub-verse063_ct.nii.gz", ct, LPS)  # no label map
    tree = find_verse_scans(release)
    assert [s.stem for s in tree.scans] == ["sub-verse060"]
    text = "\n".join(tree.warnings)
    assert "sub-verse0..61_ct.nii.gz: not read as a VerSe CT" in text
    assert "sub-verse099_ct.nii.gz: in the subject folder sub-verse062" in text
    assert "sub-verse063_ct.nii.gz: no label map" in text


def test_huge_header_is_refused_naming_the_file(tmp_path):
    release = tmp_path / "v"
    _bids_scan(release, "sub-verse070", (20,))
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    mask = release / "derivatives" / "sub-verse070" / "sub-verse070_seg-vert_msk.nii.gz"
    with gzip.open(mask, "wb") as f:
        f.write(header.binaryblock + b"\x00" * 4)  # claims 238 GB of voxels, holds none
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nverse070,L1,1\n")
    with pytest.raises(DatasetError, match=r"sub-verse070_seg-vert_msk\.nii\.gz: header claims a 4000x4000x4000"):
        import_verse(release, table, tmp_path / "out")


def test_one_scan_in_two_releases(tmp_path, capsys):
    root = tmp_path / "all"
    _bids_scan(root / "dataset-verse19training", "sub-verse004", (20, 21))
    _bids_scan(root / "01_training", "sub-verse004", (20, 21))  # VerSe 2020 repeats the 2019 scans
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nverse004,L1,1\n")
    out = import_verse(root, table, tmp_path / "out")
    assert _annotation(out) == {"sub-verse004.nii.gz": {20: 1}}
    assert "identical files; read once" in capsys.readouterr().err
    _bids_scan(root / "01_training", "sub-verse004", (20, 22))
    with pytest.raises(DatasetError, match="two different scans are named sub-verse004"):
        find_verse_scans(root)


def test_missing_inputs_outputs_inside_inputs_and_existing_output(verse19, tmp_path):
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\n4,T12,1\n")
    with pytest.raises(DatasetError, match="VerSe folder not found"):
        import_verse(tmp_path / "no_verse", table, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no VerSe scan found"):
        import_verse(tmp_path / "empty", table, tmp_path / "out")
    with pytest.raises(DatasetError, match="no VerSe scan found"):  # rawdata/ alone: no label maps
        import_verse(verse19 / "dataset-verse19training" / "rawdata", table, tmp_path / "out")
    with pytest.raises(DatasetError, match="lies inside the input VERSE_ROOT"):
        import_verse(verse19, table, verse19 / "imported")
    none = tmp_path / "none.csv"
    none.write_text("subject,level,grade\n999,T12,1\n")
    with pytest.raises(DatasetError, match="nothing to import"):
        import_verse(verse19, none, tmp_path / "out", allow_missing=True)
    out = import_verse(verse19, table, tmp_path / "out")
    with pytest.raises(VfnbError, match="already exists"):
        import_verse(verse19, table, out)
    table.write_text("subject,level,grade\n4,L1,2\n")
    import_verse(verse19, table, out, overwrite=True)
    assert _annotation(out) == {"sub-verse004.nii.gz": {20: 2}}


def test_cli_import_verse(verse20, tmp_path, capsys):
    table = tmp_path / "g.csv"
    table.write_text("subject,level,grade\nverse290,L1,1\nverse600,T1,0\n")
    split = str(verse20 / "01_training")
    assert main(["import-verse", split, str(table), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["import-verse", split, str(table), str(tmp_path / "out"), "--allow-missing"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "Traceback" not in captured.err


def test_integer_check_runs_over_every_slab():
    from vfnb.data.verse import SLAB, integer_labels

    data = np.zeros((6, 5, 2 * SLAB + 6), np.float64)
    data[..., 3] = 20.0
    assert integer_labels(data, "m.nii.gz").dtype == np.uint8
    data[2, 1, 2 * SLAB + 4] = 20.25  # in the last slab
    with pytest.raises(DatasetError, match=rf"m\.nii\.gz: label map holds the non-integer value 20\.25 at voxel "
                                           rf"\(2, 1, {2 * SLAB + 4}\)"):
        integer_labels(data, "m.nii.gz")
    data[2, 1, 2 * SLAB + 4] = -1.0
    with pytest.raises(DatasetError, match="holds the value -1"):
        integer_labels(data, "m.nii.gz")
