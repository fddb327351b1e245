"""``vfnb predict --label-map``: grade and levels maps on the CT's grid, and their Slicer / ITK-SNAP colour tables."""

import copy
import re

import numpy as np
import pandas as pd
import pytest
import torch

from vfnb.cli import main
from vfnb.errors import VfnbError
from vfnb.inference.exports import (NOT_ASSESSABLE_CODE, NOT_GRADED_CODE, LabelMapFiles, grade_map, vertebra_codes)
from vfnb.io import load_nifti, save_nifti
from vfnb.levels import GRADE_COLORS, NOT_ASSESSABLE_COLOR, NOT_GRADED_COLOR, level_name
from vfnb.models.checkpoints import save_checkpoint
from vfnb.models.networks import ModelInput, build_model

# caudal to cranial: sacrum (never graded), L2, a flattened L1, T12, and T11 cut by the top of the scan
STACK = ((26, 0, 8), (21, 10, 22), (20, 26, 34), (19, 38, 50), (18, 54, 64))
SHAPE = (36, 36, 64)


def spine_scan(lps=False):
    """``(ct int16, label map uint8, affine)`` of a small stacked spine, 1 x 1 x 1.5 mm, RAS or LPS storage."""
    rng = np.random.default_rng(3)
    ct = np.full(SHAPE, -80, np.int16)
    seg = np.zeros(SHAPE, np.uint8)
    for label, z0, z1 in STACK:
        ct[10:26, 8:28, z0:z1] = 300 + rng.integers(-30, 30, size=(16, 20, z1 - z0))
        seg[10:26, 8:28, z0:z1] = label
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [-18.0, -20.0, 100.0]
    if lps:  # the same world content stored with the first two axes reversed
        ct, seg = ct[::-1, ::-1].copy(), seg[::-1, ::-1].copy()
        flipped = np.diag([-1.0, -1.0, 1.5, 1.0])
        flipped[:3, 3] = affine[:3, 3] + [SHAPE[0] - 1, SHAPE[1] - 1, 0.0]
        affine = flipped
    return ct, seg, affine


def write_spine(folder, lps=False):
    ct, seg, affine = spine_scan(lps)
    folder.mkdir(parents=True, exist_ok=True)
    return save_nifti(folder / "ct.nii.gz", ct, affine), save_nifti(folder / "seg.nii.gz", seg, affine)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny network whose grades differ between vertebrae (a scaled classifier), 16^3 cubes."""
    torch.manual_seed(0)
    net = build_model("resnet10", block_inplanes=[4, 8, 8, 16])
    with torch.no_grad():
        net.classifier.weight.mul_(50.0)
    net.input_spec = ModelInput(cube_size=16, patch_size=24)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", copy.deepcopy(net.eval()),
                           params={"cube_size": 16})


def predict(ct, seg, out_map, csv, *extra):
    return main(["predict", "--ct", str(ct), "--seg", str(seg), "--device", "cpu", "--out", str(csv),
                 "--label-map", str(out_map), *extra])


# ---------------------------------------------------------------- reading the two formats as documented
SLICER_LINE = re.compile(r"^(\d+) (\S+) (\d+) (\d+) (\d+) (\d+)$")
ITKSNAP_LINE = re.compile(r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+"([^"]*)"\s*$')


def read_slicer(path):
    """``{index: (name, (r, g, b, a))}`` of a Slicer ``.ctbl``: header lines start with #, every other line parses."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Color table file")
    table = {}
    for line in lines:
        if line.startswith("#"):
            continue
        match = SLICER_LINE.match(line)
        assert match, line
        index, name, *rgba = match.groups()
        assert all(0 <= int(c) <= 255 for c in rgba)
        table[int(index)] = (name, tuple(int(c) for c in rgba))
    return table


def read_itksnap(path):
    """``{index: (label, (r, g, b), alpha, visible)}`` of an ITK-SNAP label description."""
    text = path.read_text()
    assert "# ITK-SnAP Label Description File" in text
    table = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = ITKSNAP_LINE.match(line)
        assert match, line
        index, r, g, b, alpha, vis, _, label = match.groups()
        assert 0.0 <= float(alpha) <= 1.0
        table[int(index)] = (label, (int(r), int(g), int(b)), float(alpha), int(vis))
    return table


def rgb(hex_colour):
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def expected_code(row):
    return NOT_ASSESSABLE_CODE if pd.isna(row["pred"]) else int(row["pred"]) + 1


# ---------------------------------------------------------------- the maps
@pytest.mark.parametrize("grader", ["heights", "network"])
def test_maps_lie_on_the_ct_grid_and_code_each_level_by_its_grade_in_ras_and_lps(tmp_path, checkpoint, grader):
    maps = {}
    network = ["--checkpoint", str(checkpoint)] if grader == "network" else []
    for storage in ("ras", "lps"):
        ct, seg = write_spine(tmp_path / storage, lps=storage == "lps")
        out = tmp_path / storage / "out" / "grades.nii.gz"
        assert predict(ct, seg, out, tmp_path / storage / "t.csv", *network) == 0
        table = pd.read_csv(tmp_path / storage / "t.csv")
        ct_data, ct_affine, _ = load_nifti(ct)
        labels, _, _ = load_nifti(seg)
        files = LabelMapFiles.beside(out)
        grades, grades_affine, _ = load_nifti(files.grades)
        levels, levels_affine, _ = load_nifti(files.levels)
        assert grades.shape == levels.shape == ct_data.shape and grades.dtype == np.uint8
        np.testing.assert_array_equal(grades_affine, ct_affine)
        np.testing.assert_array_equal(levels_affine, ct_affine)
        np.testing.assert_array_equal(levels, labels)  # the levels map keeps the input's labels
        np.testing.assert_array_equal(grades == 0, labels == 0)
        assert len(table) == 4 and table["pred"].notna().sum() >= 3
        assert table.loc[table["label"] == 18, "pred"].isna().all()  # T11, cut by the scan's top: no grade
        for _, row in table.iterrows():
            assert set(np.unique(grades[labels == row["label"]])) == {expected_code(row)}, row["level"]
        assert set(np.unique(grades[labels == 26])) == {NOT_GRADED_CODE}
        # the levels map names each level with the table's grade, in that grade's colour
        named = read_slicer(files.levels_slicer)
        for _, row in table.iterrows():
            name, colour = named[int(row["label"])]
            grade = None if pd.isna(row["pred"]) else int(row["pred"])
            assert name.startswith(f"{row['level']}_(")
            assert ("not_assessable" in name) if grade is None else (f"grade_{grade}_" in name)
            assert colour[:3] == rgb(NOT_ASSESSABLE_COLOR if grade is None else GRADE_COLORS[grade])
        if grader == "heights":  # the flattened L1 is graded apart from its neighbours: no map of one grade passes
            assert table.set_index("level")["pred"].to_dict() == {"T11": pytest.approx(np.nan, nan_ok=True),
                                                                  "T12": 0, "L1": 2, "L2": 0}
        maps[storage] = (grades, table)
    # the same world content stored LPS-style: the same grade at every world point
    np.testing.assert_array_equal(maps["lps"][0], maps["ras"][0][::-1, ::-1])
    pd.testing.assert_series_equal(maps["lps"][1]["pred"], maps["ras"][1]["pred"])


def test_colour_tables_parse_and_carry_the_palette_for_every_code_used(tmp_path):
    ct, seg = write_spine(tmp_path)  # graded from heights: no checkpoint needed
    out = tmp_path / "maps" / "x.nii"
    assert predict(ct, seg, out, tmp_path / "t.csv") == 0
    files = LabelMapFiles.beside(out)
    assert files.grades_slicer.name == "x.ctbl" and files.grades_itksnap.name == "x.label.txt"
    assert files.levels.name == "x_levels.nii" and files.levels_itksnap.name == "x_levels.label.txt"
    palette = {**{g + 1: GRADE_COLORS[g] for g in GRADE_COLORS}, NOT_ASSESSABLE_CODE: NOT_ASSESSABLE_COLOR,
               NOT_GRADED_CODE: NOT_GRADED_COLOR}

    slicer, snap = read_slicer(files.grades_slicer), read_itksnap(files.grades_itksnap)
    assert sorted(slicer) == sorted(snap) == list(range(7))
    assert slicer[0][1][3] == 0 and snap[0][2] == 0.0 and snap[0][3] == 0  # background transparent, hidden
    for code, colour in palette.items():
        assert slicer[code][1] == (*rgb(colour), 255) and snap[code][1] == rgb(colour) and snap[code][2] == 1.0
        assert slicer[code][0] == snap[code][0].replace(" ", "_")  # one name, Slicer's without spaces
    assert [snap[g + 1][0] for g in range(4)] == ["grade 0 normal", "grade 1 mild", "grade 2 moderate",
                                                   "grade 3 severe"]

    for nifti, slicer_path, snap_path in ((files.grades, files.grades_slicer, files.grades_itksnap),
                                          (files.levels, files.levels_slicer, files.levels_itksnap)):
        used = set(np.unique(load_nifti(nifti)[0]).tolist())
        assert used <= set(read_slicer(slicer_path)) and used <= set(read_itksnap(snap_path))
    levels = read_itksnap(files.levels_itksnap)
    assert sorted(levels) == [0, 18, 19, 20, 21, 26]
    assert levels[26][0] == "S1 (not graded)" and levels[26][1] == rgb(NOT_GRADED_COLOR)
    assert levels[18][0] == "T11 (not assessable)" and levels[18][1] == rgb(NOT_ASSESSABLE_COLOR)
    assert levels[21][0].startswith(level_name(21) + " (grade ")


def test_codes_for_a_table_with_missing_and_ungraded_vertebrae():
    table = pd.DataFrame({"label": [19, 20, 21], "pred": pd.array([3, None, 1], dtype="Int64")})
    # 22 (L3) was left out of grading (too small for a patch), 26 and 27 are never graded
    codes = vertebra_codes(table, [19, 20, 21, 22, 26, 27])
    assert codes == {19: 4, 20: NOT_ASSESSABLE_CODE, 21: 2, 22: NOT_ASSESSABLE_CODE, 26: NOT_GRADED_CODE,
                     27: NOT_GRADED_CODE}
    labels = np.array([[0, 19, 20], [21, 22, 26]], np.uint8)
    np.testing.assert_array_equal(grade_map(labels, codes), [[0, 4, 5], [2, 5, 6]])


# ---------------------------------------------------------------- refusals
def test_outputs_refuse_to_overwrite_and_never_land_on_an_input(tmp_path, capsys):
    ct, seg = write_spine(tmp_path / "in")
    seg_bytes = seg.read_bytes()
    out = tmp_path / "grades.nii.gz"
    assert predict(ct, seg, out, tmp_path / "a.csv") == 0
    capsys.readouterr()
    assert predict(ct, seg, out, tmp_path / "b.csv") == 2
    assert "already exists" in capsys.readouterr().err and not (tmp_path / "b.csv").exists()
    assert predict(ct, seg, out, tmp_path / "b.csv", "--overwrite") == 0
    capsys.readouterr()

    for target in (seg, ct):
        assert predict(ct, seg, target, tmp_path / "c.csv", "--overwrite") == 2
        assert "input" in capsys.readouterr().err
    # a companion file landing on the label map: x.nii.gz writes x_levels.nii.gz beside it
    levels_named = tmp_path / "in2" / "spine_levels.nii.gz"
    ct2, _ = write_spine(tmp_path / "in2")
    (tmp_path / "in2" / "seg.nii.gz").rename(levels_named)
    assert predict(ct2, levels_named, tmp_path / "in2" / "spine.nii.gz", tmp_path / "d.csv", "--overwrite") == 2
    err = capsys.readouterr().err
    assert "spine_levels.nii.gz" in err and "input" in err
    assert seg.read_bytes() == seg_bytes and levels_named.is_file()

    assert predict(ct, seg, tmp_path / "grades.txt", tmp_path / "e.csv") == 2
    assert "expected the path of a NIfTI file" in capsys.readouterr().err
    with pytest.raises(VfnbError, match="NIfTI"):
        LabelMapFiles.beside(tmp_path / ".nii.gz")


def test_folders_of_scans_get_one_set_of_maps_each(tmp_path, capsys):
    for name, lps in (("a", False), ("b", True)):
        ct, seg, affine = spine_scan(lps)
        save_nifti(tmp_path / "img" / f"{name}.nii.gz", ct, affine)
        save_nifti(tmp_path / "seg" / f"{name}.nii.gz", seg, affine)
    out = tmp_path / "maps"
    assert predict(tmp_path / "img", tmp_path / "seg", out, tmp_path / "t.csv") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{suffix}" for n in ("a", "b") for suffix in (".nii.gz", ".ctbl", ".label.txt", "_levels.nii.gz",
                                                          "_levels.ctbl", "_levels.label.txt"))
    a, b = load_nifti(out / "a.nii.gz")[0], load_nifti(out / "b.nii.gz")[0]
    np.testing.assert_array_equal(b, a[::-1, ::-1])
    capsys.readouterr()
    assert predict(tmp_path / "img", tmp_path / "seg", tmp_path / "img" / "maps", tmp_path / "u.csv") == 2
    assert "input --ct" in capsys.readouterr().err and not (tmp_path / "img" / "maps").exists()
