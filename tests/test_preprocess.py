"""Pre-processing (STUDY §1.2): geometry of per-vertebra patches and the dataset command.

The test "vertebra" is defined in world space (RAS mm) and rasterised into source
grids with different headers (RAS, LPS, permuted axes, 5-degree oblique), all with
anisotropic 0.8 x 0.8 x 2.5 mm voxels and a non-identity origin, so every grid
holds the same anatomy and the patches can be checked against the truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vfnb.cli import main as cli_main
from vfnb.data.preprocess import (PAD_HU, PATCH_COLUMNS, extract_patches, extract_patches_from_arrays,
                                  preprocess_dataset)
from vfnb.errors import DatasetError, ParamsError, VfnbError
from vfnb.io import atomic_write_yaml, load_nifti, save_nifti

SIZE = 32
CENTRE = np.array([15.0, -40.0, 120.0])  # world position (RAS mm) of the L1 body centre
HALF = np.array([20.0, 16.0, 10.0])  # L1 body: 40 mm wide (X), 32 mm deep (Y), 20 mm tall (Z)
T12_Z = (12.5, 27.5)  # T12 body, relative Z range (mm) above L1
SPACING = (0.8, 0.8, 2.5)
RAS_SHAPE = (80, 70, 24)  # covers CENTRE +- (32, 28, 30) mm
RAS_BOX = ((15, 65), (15, 55), (8, 16))  # L1 voxel box in the RAS grid (faces on voxel boundaries)


def _ras_affine():
    affine = np.diag(list(SPACING) + [1.0])
    # first voxel centre half a voxel inside the field of view, so box faces fall on cell boundaries
    affine[:3, 3] = CENTRE - np.array([32.0, 28.0, 30.0]) + np.array(SPACING) / 2
    return affine


def world_truth(points):
    """Anatomy at world points ``[3, ...]`` (RAS mm): ``(HU, label)``.

    Bone is brighter anteriorly (+Y) and superiorly (+Z); soft tissue brightens
    towards patient left (+X), so a flipped or swapped axis changes the values.
    """
    d = np.asarray(points, dtype=np.float64) - CENTRE.reshape((3,) + (1,) * (np.ndim(points) - 1))
    l1 = (np.abs(d[0]) < HALF[0]) & (np.abs(d[1]) < HALF[1]) & (np.abs(d[2]) < HALF[2])
    t12 = (np.abs(d[0]) < HALF[0]) & (np.abs(d[1]) < HALF[1]) & (d[2] > T12_Z[0]) & (d[2] < T12_Z[1])
    label = np.where(l1, 20, np.where(t12, 19, 0)).astype(np.uint8)
    hu = np.where(label > 0, 400.0 + 12.0 * d[1] + 10.0 * d[2], 40.0 + 2.0 * d[0])
    return hu, label


def _grid_affine(kind):
    """Affine and shape of one source grid covering the same field of view."""
    ras, shape = _ras_affine(), RAS_SHAPE
    if kind == "ras":
        return ras, shape
    if kind == "lps":  # flip array axes 0 and 1: x and y run right->left, anterior->posterior
        flip = np.eye(4)
        flip[0, 0], flip[1, 1] = -1, -1
        flip[0, 3], flip[1, 3] = shape[0] - 1, shape[1] - 1
        return ras @ flip, shape
    if kind == "permuted":  # array axes (Z, X, Y), Z running superior->inferior
        perm = np.zeros((4, 4))
        perm[0, 1] = perm[1, 2] = 1.0  # source axis 1 -> x index, axis 2 -> y index
        perm[2, 0], perm[2, 3] = -1.0, shape[2] - 1  # source axis 0 -> reversed z index
        perm[3, 3] = 1.0
        return ras @ perm, (shape[2], shape[0], shape[1])
    if kind == "oblique":  # rotate the scanner frame 5 degrees about Z, then 4 about X, around the body
        a, b = np.deg2rad(5.0), np.deg2rad(4.0)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        rot = np.eye(4)
        rot[:3, :3] = rx @ rz
        rot[:3, 3] = CENTRE - rot[:3, :3] @ CENTRE
        return rot @ ras, shape
    raise ValueError(kind)


def make_scan(kind):
    """``(ct int16, label map uint8, affine)`` of the test anatomy on grid ``kind``."""
    affine, shape = _grid_affine(kind)
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = (affine[:3, :3] @ index + affine[:3, 3:]).reshape((3,) + tuple(shape))
    hu, label = world_truth(world)
    return np.round(hu).astype(np.int16), label, affine


def write_scan(root, case_id, kind):
    ct, seg, affine = make_scan(kind)
    save_nifti(Path(root) / "img" / f"{case_id}.nii.gz", ct, affine)
    save_nifti(Path(root) / "seg" / f"{case_id}.nii.gz", seg, affine)
    return Path(root) / "img" / f"{case_id}.nii.gz", Path(root) / "seg" / f"{case_id}.nii.gz"


def patch_world(patch):
    """World coordinates ``[3, X, Y, Z]`` of the patch voxel centres."""
    index = np.indices(patch.image.shape, dtype=np.float64).reshape(3, -1)
    return (patch.affine[:3, :3] @ index + patch.affine[:3, 3:]).reshape((3,) + patch.image.shape)


def dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def patches_by_kind(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    out = {}
    for kind in ("ras", "lps", "permuted", "oblique"):
        ct_path, seg_path = write_scan(root, kind, kind)
        out[kind] = {p.label: p for p in extract_patches(ct_path, seg_path, size=SIZE)}
    return out


# ------------------------------------------------------------------ geometry
def test_patch_lands_on_the_vertebra_with_the_right_shape(patches_by_kind):
    patches = patches_by_kind["ras"]
    assert list(patches) == [19, 20]  # spine order (cranial first)
    l1 = patches[20]
    assert l1.image.dtype == np.int16 and l1.mask.dtype == np.uint8
    assert set(np.unique(l1.mask)) == {0, 1}
    # square in-plane 40 mm over 32 voxels -> 1.25 mm isotropic; 20 mm tall -> 16 slices
    assert l1.image.shape == (SIZE, SIZE, 16)
    assert l1.patch_spacing_mm == pytest.approx(40.0 / SIZE)
    assert np.allclose(np.diag(l1.affine)[:3], 40.0 / SIZE) and np.allclose(l1.affine[:3, :3], np.diag(np.diag(l1.affine)[:3]))
    assert l1.box == RAS_BOX
    assert l1.spacing == pytest.approx(SPACING)
    assert l1.warnings == []

    world = patch_world(l1)
    inside = world[:, l1.mask > 0]
    step = l1.patch_spacing_mm
    lo, hi = inside.min(axis=1) - step / 2, inside.max(axis=1) + step / 2
    np.testing.assert_allclose(lo, CENTRE - HALF, atol=step)
    np.testing.assert_allclose(hi, CENTRE + HALF, atol=step)
    # aspect: height along axis 2 vs width along axis 0, in mm
    extent = np.array([np.ptp(np.nonzero(l1.mask)[a]) + 1 for a in range(3)]) * step
    assert extent[2] / extent[0] == pytest.approx(20.0 / 40.0, abs=0.05)
    assert extent[1] / extent[0] == pytest.approx(32.0 / 40.0, abs=0.05)
    # anterior (high axis 1) and superior (high axis 2) bone is brighter, as in the world
    bone = np.where(l1.mask > 0, l1.image.astype(float), np.nan)
    assert np.nanmean(bone[:, 20:, :]) > np.nanmean(bone[:, :12, :]) + 100
    assert np.nanmean(bone[:, :, 10:]) > np.nanmean(bone[:, :, :6]) + 50
    # T12 sits above L1 (superior = higher world z)
    assert patches[19].affine[2, 3] > l1.affine[2, 3] + 10


@pytest.mark.parametrize("kind", ["ras", "lps", "permuted", "oblique"])
def test_patches_match_the_world_truth(patches_by_kind, kind):
    for label, patch in patches_by_kind[kind].items():
        hu, truth_label = world_truth(patch_world(patch))
        truth_mask = truth_label == label
        # an oblique source holds a staircase of 2.5 mm slices: a little less exact
        assert dice(patch.mask, truth_mask) > (0.98 if kind != "oblique" else 0.9), (kind, label)
        corr = np.corrcoef(patch.image.ravel().astype(float), hu.ravel())[0, 1]
        assert corr > (0.95 if kind != "oblique" else 0.85), (kind, label, corr)


@pytest.mark.parametrize("kind", ["lps", "permuted"])
def test_axis_aligned_orientations_give_the_same_patches(patches_by_kind, kind):
    for label, reference in patches_by_kind["ras"].items():
        patch = patches_by_kind[kind][label]
        assert patch.image.shape == reference.image.shape
        np.testing.assert_allclose(patch.affine, reference.affine, atol=1e-4)  # float32 headers
        assert np.abs(patch.image.astype(int) - reference.image.astype(int)).max() <= 1
        assert np.array_equal(patch.mask, reference.mask)


def test_oblique_scan_gives_nearly_the_same_patch(patches_by_kind):
    from vfnb.data.resample import sample_in_world

    reference = patches_by_kind["ras"][20]
    oblique = patches_by_kind["oblique"][20]
    # the staircase of a rotated box widens its world box a little, never by much
    assert oblique.patch_spacing_mm == pytest.approx(reference.patch_spacing_mm, rel=0.15)
    # resample the oblique patch onto the RAS patch grid and compare
    on_reference, _ = sample_in_world(oblique.image, oblique.affine, reference.affine, reference.image.shape,
                                      order=1, fill=PAD_HU)
    corr = np.corrcoef(on_reference.ravel(), reference.image.ravel().astype(float))[0, 1]
    assert corr > 0.9
    mask, _ = sample_in_world(oblique.mask, oblique.affine, reference.affine, reference.mask.shape, order=0, fill=0)
    assert dice(mask, reference.mask) > 0.85


def test_arrays_api_equals_file_api(tmp_path, patches_by_kind):
    ct, seg, affine = make_scan("lps")
    patches = extract_patches_from_arrays(ct, seg, affine, size=SIZE, labels=[20])
    assert [p.label for p in patches] == [20]
    assert np.array_equal(patches[0].image, patches_by_kind["lps"][20].image)
    assert np.array_equal(patches[0].mask, patches_by_kind["lps"][20].mask)


def test_border_and_padding_are_warned():
    # a vertebra cut by the left edge of the field of view: the square widening
    # along X reaches outside the scan, which is padded with air
    ct = np.full((30, 40, 10), 40, dtype=np.int16)
    seg = np.zeros(ct.shape, dtype=np.uint8)
    seg[0:10, 5:35, 2:8] = 20
    ct[seg > 0] = 500
    (patch,) = extract_patches_from_arrays(ct, seg, np.diag([1.0, 1.0, 1.0, 1.0]), size=30)
    assert patch.box == ((0, 10), (5, 35), (2, 8))
    assert any("touches the scan's left edge" in w for w in patch.warnings)
    assert any("padded" in w for w in patch.warnings)
    assert (patch.image[:8] == PAD_HU).all()  # 10 voxels widened to 30: 10 voxels each side, outside
    assert patch.image[15, 15, 3] == 500


def test_bad_label_maps_are_refused():
    ct = np.zeros((8, 8, 8), dtype=np.int16)
    affine = np.eye(4)
    seg = np.zeros((8, 8, 8), dtype=np.uint8)
    seg[2:5, 2:5, 2:5] = 20
    with pytest.raises(DatasetError, match="label.*19.*not found"):
        extract_patches_from_arrays(ct, seg, affine, size=8, labels=[19])
    with pytest.raises(DatasetError, match="value 40"):
        extract_patches_from_arrays(ct, np.where(seg > 0, 40, 0), affine, size=8)
    with pytest.raises(DatasetError, match="non-integer"):
        extract_patches_from_arrays(ct, seg + 0.5, affine, size=8)
    with pytest.raises(DatasetError, match="shape"):
        extract_patches_from_arrays(ct[:4], seg, affine, size=8)
    with pytest.raises(ParamsError, match="size"):
        extract_patches_from_arrays(ct, seg, affine, size=1)


# ------------------------------------------------------------------ dataset
@pytest.fixture
def original(tmp_path):
    root = tmp_path / "original"
    write_scan(root, "sub_01", "ras")  # an id with an underscore, on purpose
    write_scan(root, "lps02", "lps")
    write_scan(root, "obl03", "oblique")
    atomic_write_yaml(root / "annotation.yaml", {
        "sub_01.nii.gz": {20: 2, 21: 0},  # L2 (21) is graded but absent; T12 (19) present, not graded
        "lps02.nii.gz": {19: 0, 20: 1},
        "obl03.nii.gz": {19: 3, 20: 0},
    })
    return root


def _snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_preprocess_dataset_writes_the_processed_layout(tmp_path, original):
    before = _snapshot(original)
    out = preprocess_dataset(original, tmp_path / "processed", size=SIZE)
    assert out == tmp_path / "processed"
    assert _snapshot(original) == before  # the input is never modified

    expected = ["sub_01_20_2.nii.gz", "lps02_19_0.nii.gz", "lps02_20_1.nii.gz", "obl03_19_3.nii.gz", "obl03_20_0.nii.gz"]
    assert sorted(p.name for p in (out / "img").iterdir()) == sorted(expected)
    assert sorted(p.name for p in (out / "seg").iterdir()) == sorted(expected)
    image, affine, _ = load_nifti(out / "img" / "sub_01_20_2.nii.gz")
    mask, mask_affine, _ = load_nifti(out / "seg" / "sub_01_20_2.nii.gz")
    assert image.dtype == np.int16 and mask.dtype == np.uint8 and image.shape == (SIZE, SIZE, 16)
    np.testing.assert_allclose(affine, mask_affine)
    # the 32 mm depth is widened to the 40 mm width, symmetrically about the body centre
    np.testing.assert_allclose(affine[:3, 3], CENTRE - [20.0, 20.0, 10.0] + 40.0 / SIZE / 2, atol=1e-4)
    # the LPS scan gives the same L1 patch as the RAS scan
    lps_image, _, _ = load_nifti(out / "img" / "lps02_20_1.nii.gz")
    assert np.abs(lps_image.astype(int) - image.astype(int)).max() <= 1

    table = pd.read_csv(out / "patches.csv")
    assert tuple(table.columns) == PATCH_COLUMNS
    assert list(table["patch"]) == expected  # case order, then spine order
    row = table.iloc[0]
    assert (row["case"], row["label"], row["level"], row["grade"]) == ("sub_01", 20, "L1", 2)
    assert json.loads(row["box"]) == [list(axis) for axis in RAS_BOX]
    assert json.loads(row["source_spacing"]) == pytest.approx(SPACING)
    assert json.loads(row["patch_shape"]) == [SIZE, SIZE, 16]
    assert row["patch_spacing_mm"] == pytest.approx(40.0 / SIZE)

    settings = json.loads((out / "preprocess.json").read_text())
    assert settings["size"] == SIZE and settings["patches"] == 5 and settings["cases"] == 3
    notes = [(w["case"], w["label"], w["message"]) for w in settings["warnings"]]
    assert any(c == "sub_01" and label == 19 and "not graded" in m for c, label, m in notes)
    assert any(c == "sub_01" and label == 21 and "absent" in m for c, label, m in notes)
    assert not any(c != "sub_01" for c, _, _ in notes)


def test_existing_output_is_refused_and_overwrite_replaces_it(tmp_path, original):
    out = tmp_path / "processed"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(VfnbError, match="already exists"):
        preprocess_dataset(original, out, size=SIZE)
    assert (out / "keep.txt").read_text() == "user data"
    # a folder vfnb did not write is not ours to delete, even with overwrite (issue 15, item 9)
    with pytest.raises(VfnbError, match="does not look like a vfnb output"):
        preprocess_dataset(original, out, size=SIZE, overwrite=True)
    assert (out / "keep.txt").read_text() == "user data"
    (out / "keep.txt").unlink()
    preprocess_dataset(original, out, size=SIZE, overwrite=True)  # an empty folder may be overwritten
    (out / "stale.txt").write_text("ours to replace")
    preprocess_dataset(original, out, size=SIZE, overwrite=True)  # and so may our own output
    assert not (out / "stale.txt").exists() and (out / "patches.csv").is_file()
    # the input folder itself is never an output, even with overwrite
    before = _snapshot(original)
    with pytest.raises(ParamsError, match="overlaps the input"):
        preprocess_dataset(original, original, size=SIZE, overwrite=True)
    with pytest.raises(ParamsError, match="overlaps the input"):
        preprocess_dataset(original, original / "processed", size=SIZE)
    assert _snapshot(original) == before


def test_bad_input_is_reported_with_the_file(tmp_path, original):
    atomic_write_yaml(original / "annotation.yaml", {"missing.nii.gz": {20: 0}})
    with pytest.raises(DatasetError, match="missing"):
        preprocess_dataset(original, tmp_path / "processed", size=SIZE)
    assert not (tmp_path / "processed").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_two_workers_give_the_same_output(tmp_path, original):
    one = preprocess_dataset(original, tmp_path / "one", size=SIZE, workers=1)
    two = preprocess_dataset(original, tmp_path / "two", size=SIZE, workers=2)
    assert (one / "patches.csv").read_text() == (two / "patches.csv").read_text()
    assert (one / "preprocess.json").read_text() == (two / "preprocess.json").read_text()
    names = sorted(p.relative_to(one) for p in one.rglob("*.nii.gz"))
    assert names == sorted(p.relative_to(two) for p in two.rglob("*.nii.gz")) and len(names) == 10
    for name in names:
        a, affine_a, _ = load_nifti(one / name)
        b, affine_b, _ = load_nifti(two / name)
        assert np.array_equal(a, b) and np.array_equal(affine_a, affine_b)


def test_cli_end_to_end(tmp_path, original, capsys):
    out = tmp_path / "processed"
    assert cli_main(["preprocess", str(original), str(out), "--size", "16"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    table = pd.read_csv(out / "patches.csv")
    assert len(table) == 5 and (json.loads(table["patch_shape"][0])[:2] == [16, 16])
    assert cli_main(["preprocess", str(original), str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["preprocess", str(original), str(out), "--size", "16", "--overwrite", "--workers", "1"]) == 0
    assert os.listdir(out / "img")


def test_shared_tiny_original_fixture(tmp_path, tiny_original):
    out = preprocess_dataset(tiny_original, tmp_path / "processed", size=16)
    table = pd.read_csv(out / "patches.csv")
    assert len(table) == 9 and set(table["case"]) == {"scan0", "scan1", "scan2"}
    # box heights shrink with the grade (8 - 2 * grade voxels): a flatter patch for a worse grade
    slices = table.set_index("patch")["patch_shape"].map(lambda s: json.loads(s)[2])
    assert slices["scan1_20_3.nii.gz"] < slices["scan1_19_2.nii.gz"] < slices["scan1_18_0.nii.gz"]


def test_warnings_name_the_vertebra_and_their_counts_agree(tmp_path, write_box_scan, capsys):
    """Every warning names case and vertebra; preprocess.json and patches.csv count the same notes."""
    root = tmp_path / "original"
    # bodies wider than the scan is deep: the square in-plane box reaches outside it (padded)
    write_box_scan(root, "wide", labels=(19, 20), shape=(32, 16, 24), body_width=(30, 8))
    write_box_scan(root, "plain", labels=(19, 20, 21))
    atomic_write_yaml(root / "annotation.yaml", {"wide.nii.gz": {19: 0, 20: 1}, "plain.nii.gz": {19: 0, 20: 2}})
    out = preprocess_dataset(root, tmp_path / "processed", size=16)
    printed = capsys.readouterr().err
    settings = json.loads((out / "preprocess.json").read_text())
    table = pd.read_csv(out / "patches.csv", keep_default_na=False)
    on_patches = sorted((r.case, r.label, note) for r in table.itertuples() if r.warnings
                        for note in r.warnings.split("; "))
    recorded = sorted((w["case"], w["label"], w["message"]) for w in settings["warnings"] if w["patch"])
    assert on_patches == recorded and any("padded with -1024 HU" in note for *_, note in on_patches)
    without = [w for w in settings["warnings"] if not w["patch"]]
    assert [(w["case"], w["level"]) for w in without] == [("plain", "L2")] and "not graded" in without[0]["message"]
    assert settings["warning_counts"] == {
        "notes": len(settings["warnings"]), "on_patches": len(on_patches), "without_patch": 1,
        "vertebrae": len({(w["case"], w["label"]) for w in settings["warnings"]})}
    for w in settings["warnings"]:
        assert f"warning: {w['case']} {w['level']} (label {w['label']}): {w['message']}" in printed


def test_a_vertebra_at_the_scan_edge_is_said_to_touch_that_anatomical_edge():
    from vfnb.data.preprocess import _edges_touched

    ras, lps = np.diag([1.0, 1.0, 2.0, 1.0]), np.diag([-1.0, -1.0, 2.0, 1.0])
    shape = (20, 20, 30)
    assert _edges_touched(((3, 10), (4, 12), (0, 8)), shape, ras) == ["inferior"]
    assert _edges_touched(((0, 10), (4, 20), (5, 30)), shape, ras) == ["left", "anterior", "superior"]
    assert _edges_touched(((0, 10), (4, 20), (5, 9)), shape, lps) == ["right", "posterior"]
    assert _edges_touched(((2, 10), (4, 12), (5, 9)), shape, lps) == []
