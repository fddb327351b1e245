"""Label maps in VerSe or TotalSegmentator numbering, read into VerSe labels or refused, never guessed.

Every map here is a small synthetic spine: box vertebrae stacked along the body axis in
anatomical order (C1 superior), sizes in mm of the level's region, written as real NIfTI
files in RAS or LPS storage; organs are boxes of organ size beside and around it.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from vfnb.data.label_schemes import (TOTALSEG_TOTAL_VERTEBRAE, VertebraLabels, file_level, read_vertebra_labels,
                                     structure_label)
from vfnb.errors import DatasetError, ParamsError
from vfnb.io import save_nifti
from vfnb.levels import LEVEL_NAMES, label_from_level, level_name

SPACING = 2.0  # mm, isotropic
#: body height and in-plane size (mm) of a box vertebra, by region; 5 mm of disc between bodies
BODY_MM = {"C": (14, 30, 22), "T": (20, 36, 28), "L": (28, 46, 34), "S": (44, 60, 40), "Cx": (14, 20, 16)}
DISC_MM = 5
#: TotalSegmentator `total` IDs of the levels used here (the test's own copy of the facts)
TS_ID = {"S1": 26, "L5": 27, "L4": 28, "L3": 29, "L2": 30, "L1": 31, "T12": 32, "T11": 33, "T10": 34, "T1": 43,
         "C7": 44, "C2": 49, "C1": 50}


def _region(level: str) -> str:
    return "Cx" if level == "Cx" else level[0]


def spine(levels, organs=(), lps=False, margin_mm=10, width_mm=120, depth_mm=90):
    """``(VerSe label map, affine, {level: world z centre})``: ``levels`` from superior to inferior.

    ``organs``: ``(VerSe-array value, (x0, x1, y0, y1, z0, z1) in mm from the volume's corner)``
    boxes drawn after the spine (they do not overlap it when placed beside it). ``lps``: the same
    world content stored with the first two axes reversed (affine with negative diagonal).
    """
    heights = [BODY_MM[_region(level)][0] for level in levels]
    length = sum(heights) + DISC_MM * (len(levels) - 1) + 2 * margin_mm
    shape = tuple(int(np.ceil(v / SPACING)) for v in (width_mm, depth_mm, length))
    seg = np.zeros(shape, np.uint8)
    top = length - margin_mm
    centres = {}
    for level, height in zip(levels, heights):
        _, wx, wy = BODY_MM[_region(level)]
        x0, y0 = (width_mm - wx) / 2, 20.0
        box = [int(round(v / SPACING)) for v in (x0, x0 + wx, y0, y0 + wy, top - height, top)]
        seg[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = label_from_level("coccyx" if level == "Cx" else level)
        centres[level] = top - height / 2
        top -= height + DISC_MM
    for value, mm in organs:
        box = [int(round(v / SPACING)) for v in mm]
        seg[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = value
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [-60.0, -40.0, -200.0]
    if lps:
        seg = seg[::-1, ::-1].copy()
        flipped = np.diag([-SPACING, -SPACING, SPACING, 1.0])
        flipped[:3, 3] = affine[:3, 3] + [SPACING * (shape[0] - 1), SPACING * (shape[1] - 1), 0.0]
        affine = flipped
    return seg, affine, centres


def renumber(seg, table):
    """``seg`` with each value replaced through ``table`` (values missing from it stay as they are)."""
    out = seg.astype(np.uint8).copy()
    for old, new in table.items():
        out[seg == old] = new
    return out


def verse_to_totalseg(seg):
    """A VerSe map renumbered to TotalSegmentator `total` IDs (sacrum -> S1)."""
    table = {label_from_level(level): ts for level, ts in TS_ID.items() if level != "S1"}
    table[26] = TS_ID["S1"]
    return renumber(seg, table)


def with_label_table(path, names: dict):
    """Rewrite ``path`` with TotalSegmentator's label table in a NIfTI header extension (its XML layout)."""
    img = nib.load(str(path))
    body = "".join(f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>\n'
                   for k, v in names.items())
    xml = ('<?xml version="1.0" encoding="UTF-8"?> <CaretExtension> <VolumeInformation Index="0"> <LabelTable>'
           f"\n{body}\n</LabelTable> <VolumeType><![CDATA[Label]]></VolumeType> </VolumeInformation></CaretExtension>")
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
    out.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode("utf-8")))
    nib.save(out, str(path))
    return path


def levels_of(labels: VertebraLabels) -> list[str]:
    present = [int(v) for v in np.unique(labels.array) if v]
    return sorted((level_name(v) for v in present), key=lambda n: label_from_level(n) if n != "T13" else 19.5)


LUMBAR = ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
#: organs of a `total` map, in TotalSegmentator IDs, placed as in a body around a lumbar spine
#: (mm boxes in the volume of ``spine(LUMBAR)``: 120 x 90 x 264 mm, spine centred at x 60, y 20-54)
ORGANS = [(5, (0, 34, 40, 90, 150, 262)),   # liver, right, tall
          (1, (86, 120, 50, 90, 170, 262)),  # spleen, left
          (2, (0, 30, 0, 30, 110, 222)),     # kidney right
          (3, (90, 120, 0, 30, 110, 222)),   # kidney left
          (20, (0, 120, 60, 90, 20, 140)),   # colon, across the front
          (12, (0, 40, 0, 40, 232, 264))]    # a lung base, high


# ---------------------------------------------------------------- the ID table
def test_the_id_table_matches_the_installed_totalsegmentator():
    map_to_binary = pytest.importorskip("totalsegmentator.map_to_binary",
                                        reason="totalsegmentator is not installed (pip install --no-deps "
                                               "totalsegmentator to compare vfnb's table with its class map)")
    total = map_to_binary.class_map["total"]
    assert {k: v for k, v in total.items() if k in TOTALSEG_TOTAL_VERTEBRAE} == TOTALSEG_TOTAL_VERTEBRAE
    assert {k for k, v in total.items() if v.startswith("vertebrae_") or v in ("sacrum", "coccyx")} == set(
        TOTALSEG_TOTAL_VERTEBRAE)
    assert max(total) == 117
    assert [k for k, v in total.items() if v == "vertebrae_L5"] == [27] and total[31] == "vertebrae_L1"
    assert total[32] == "vertebrae_T12" and total[43] == "vertebrae_T1" and total[44] == "vertebrae_C7"


def test_names_to_verse_labels():
    assert structure_label("vertebrae_L1") == 20 and structure_label("vertebrae_C1") == 1
    assert structure_label("vertebrae_T12") == 19 and structure_label("vertebrae_S1") == 26
    assert structure_label("sacrum") == 26 and structure_label("coccyx") == 27
    assert structure_label("liver") is None and structure_label("rib_left_1") is None
    assert structure_label("vertebrae_L1_extra") is None
    assert file_level("vertebrae_L1.nii.gz") == 20 and file_level("L1.nii.gz") == 20
    assert file_level("T12_mask.nii.gz") == 19 and file_level("t13.nii") == 28
    assert file_level("spleen.nii.gz") is None and file_level("scan_seg.nii.gz") is None
    assert file_level("L7.nii.gz") is None and file_level("xL1.nii.gz") is None


# ---------------------------------------------------------------- multilabel maps
@pytest.mark.parametrize("lps", [False, True])
def test_verse_and_totalsegmentator_twins_read_alike(tmp_path, lps):
    seg, affine, _ = spine(LUMBAR, lps=lps)
    verse = read_vertebra_labels(save_nifti(tmp_path / "verse.nii.gz", seg, affine))
    total = read_vertebra_labels(save_nifti(tmp_path / "total.nii.gz", verse_to_totalseg(seg), affine))
    assert verse.scheme == "verse" and total.scheme == "totalsegmentator"
    np.testing.assert_array_equal(verse.array, seg)
    np.testing.assert_array_equal(total.array, seg)
    assert levels_of(total) == ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert "above 28" in total.how and not total.notes
    # given, the same
    given = read_vertebra_labels(tmp_path / "total.nii.gz", scheme="totalsegmentator", shape=seg.shape, affine=affine)
    np.testing.assert_array_equal(given.array, seg)


def test_a_full_total_map_with_organs_reads_the_vertebrae_only(tmp_path):
    seg, affine, _ = spine(LUMBAR)
    total = verse_to_totalseg(seg)
    for value, mm in ORGANS + [(92, (40, 44, 0, 10, 230, 262)), (79, (58, 62, 56, 62, 20, 250))]:  # rib, cord
        box = [int(round(v / SPACING)) for v in mm]
        region = total[box[0]:box[1], box[2]:box[3], box[4]:box[5]]
        region[region == 0] = value
    read = read_vertebra_labels(save_nifti(tmp_path / "total.nii.gz", total, affine))
    assert read.scheme == "totalsegmentator"
    np.testing.assert_array_equal(read.array, seg)  # organs, rib and spinal cord are background
    with pytest.raises(DatasetError, match=r"total\.nii\.gz.*values \[.*79.*92.*\] are above 28"):
        read_vertebra_labels(tmp_path / "total.nii.gz", scheme="verse")


def test_the_header_label_table_decides(tmp_path):
    seg, affine, _ = spine(LUMBAR)
    total = verse_to_totalseg(seg)
    path = save_nifti(tmp_path / "total.nii.gz", total, affine)
    with_label_table(path, {1: "spleen", 5: "liver", **TOTALSEG_TOTAL_VERTEBRAE})
    read = read_vertebra_labels(path)
    assert read.scheme == "totalsegmentator" and "header" in read.how
    np.testing.assert_array_equal(read.array, seg)
    # the names win over the numbers: IDs 26-28 only, which alone would be ambiguous
    low, low_affine, _ = spine(["L4", "L5", "S1"])
    path = with_label_table(save_nifti(tmp_path / "low.nii.gz", verse_to_totalseg(low), low_affine),
                            {26: "vertebrae_S1", 27: "vertebrae_L5", 28: "vertebrae_L4"})
    assert levels_of(read_vertebra_labels(path)) == ["L4", "L5", "S1"]
    with pytest.raises(DatasetError, match=r"low\.nii\.gz: --labels verse was given but the header"):
        read_vertebra_labels(path, scheme="verse")
    # another numbering, named: the names are followed (TotalSegmentator v1 had L1 at 22)
    path = with_label_table(save_nifti(tmp_path / "v1.nii.gz", renumber(low, {23: 19, 24: 18, 26: 99}),
                                       low_affine), {19: "vertebrae_L4", 18: "vertebrae_L5", 99: "sacrum"})
    assert levels_of(read_vertebra_labels(path)) == ["L4", "L5", "S1"]
    # an ID in the voxels the table does not name
    path = with_label_table(save_nifti(tmp_path / "partial.nii.gz", verse_to_totalseg(low), low_affine),
                            {26: "vertebrae_S1", 27: "vertebrae_L5"})
    with pytest.raises(DatasetError, match=r"partial\.nii\.gz: label IDs \[28\] are in the voxels but not"):
        read_vertebra_labels(path)


def test_a_hand_zeroed_total_map_is_read_as_totalsegmentator(tmp_path):
    """A `total` map with IDs above 28 set to 0: organs 1-24, sacrum 25, S1 26, L5 27, L4 28."""
    seg, affine, _ = spine(LUMBAR)
    total = verse_to_totalseg(seg)
    for value, mm in ORGANS:
        box = [int(round(v / SPACING)) for v in mm]
        region = total[box[0]:box[1], box[2]:box[3], box[4]:box[5]]
        region[region == 0] = value
    total[total > 28] = 0
    read = read_vertebra_labels(save_nifti(tmp_path / "zeroed.nii.gz", total, affine))
    assert read.scheme == "totalsegmentator"
    assert levels_of(read) == ["L4", "L5", "S1"]  # no organ graded as C1-L1, L4 not T13, L5 not the coccyx
    np.testing.assert_array_equal(read.array[seg == 23], 23)
    # read as VerSe it is refused: organs under vertebra numbers
    with pytest.raises(DatasetError, match=r"zeroed\.nii\.gz: not a vertebra label map.*IDs found \[1, 2, 3, 5, "
                                           r"12, 20, 26, 27, 28\].*(tall|lies).*Expected VerSe labels"):
        read_vertebra_labels(tmp_path / "zeroed.nii.gz", scheme="verse")


def test_organs_alone_under_vertebra_numbers_are_refused(tmp_path):
    seg, affine, _ = spine(LUMBAR)
    organs = np.zeros_like(seg)
    for value, mm in ORGANS:
        box = [int(round(v / SPACING)) for v in mm]
        organs[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = value
    with pytest.raises(DatasetError, match=r"organs\.nii\.gz: not a vertebra label map.*\[1, 2, 3, 5, 12, 20\]"
                                           r".*neither reading fits"):
        read_vertebra_labels(save_nifti(tmp_path / "organs.nii.gz", organs, affine))


@pytest.mark.parametrize("lps", [False, True])
def test_only_ids_26_to_28_use_the_order_along_the_body_axis(tmp_path, lps):
    # TotalSegmentator L4 (28), L5 (27), S1 (26) from the top: its number falls caudally
    seg, affine, _ = spine(["L4", "L5", "S1"], lps=lps)
    read = read_vertebra_labels(save_nifti(tmp_path / "ts.nii.gz", verse_to_totalseg(seg), affine))
    assert read.scheme == "totalsegmentator" and levels_of(read) == ["L4", "L5", "S1"] and "order" in read.how
    # VerSe T13 (28) ... sacrum (26), coccyx (27): its number rises caudally
    seg, affine, _ = spine(["T12", "T13", "L1", "L2", "L3", "L4", "L5", "S1", "Cx"], lps=lps)
    seg[(seg > 0) & (seg < 26)] = 0
    read = read_vertebra_labels(save_nifti(tmp_path / "verse.nii.gz", seg, affine))
    assert read.scheme == "verse" and levels_of(read) == ["T13", "S1", "Cx"]


def test_two_levels_whose_order_both_schemes_allow_are_told_apart_by_distance(tmp_path):
    # L4 above L5 (TotalSegmentator 28 above 27), one level apart
    seg, affine, _ = spine(["L4", "L5"])
    read = read_vertebra_labels(save_nifti(tmp_path / "near.nii.gz", verse_to_totalseg(seg), affine))
    assert read.scheme == "totalsegmentator" and levels_of(read) == ["L4", "L5"] and "distances" in read.how
    # VerSe T13 above the coccyx (28 above 27), seven levels apart
    seg, affine, _ = spine(["T13", "L1", "L2", "L3", "L4", "L5", "S1", "Cx"])
    seg[(seg > 0) & (seg < 26) | (seg == 26)] = 0
    read = read_vertebra_labels(save_nifti(tmp_path / "far.nii.gz", seg, affine))
    assert read.scheme == "verse" and levels_of(read) == ["T13", "Cx"]


def test_maps_that_do_not_decide_are_refused_with_the_ids(tmp_path):
    seg, affine, _ = spine(["L4", "L5", "S1"])
    one = np.where(seg == 24, 27, 0).astype(np.uint8)  # one level: VerSe coccyx or TotalSegmentator L5?
    with pytest.raises(DatasetError, match=r"one\.nii\.gz: .*IDs found \[27\].*only IDs 25-28.*neither the order"
                                           r".*--labels verse\|totalsegmentator"):
        read_vertebra_labels(save_nifti(tmp_path / "one.nii.gz", one, affine))
    # given, it is read
    assert levels_of(read_vertebra_labels(tmp_path / "one.nii.gz", scheme="totalsegmentator")) == ["L5"]
    assert levels_of(read_vertebra_labels(tmp_path / "one.nii.gz", scheme="verse")) == ["Cx"]
    # the sacrum alone reads the same in both: nothing to decide
    sacrum = np.where(seg == 26, 26, 0).astype(np.uint8)
    assert levels_of(read_vertebra_labels(save_nifti(tmp_path / "s.nii.gz", sacrum, affine))) == ["S1"]


def test_levels_out_of_order_are_refused(tmp_path):
    seg, affine, _ = spine(["T12", "L1", "L2", "L3"])
    swapped = renumber(seg, {20: 21, 21: 20})
    with pytest.raises(DatasetError, match=r"swapped\.nii\.gz.*L2 lies .* mm above L1"):
        read_vertebra_labels(save_nifti(tmp_path / "swapped.nii.gz", swapped, affine))


def test_a_reversed_stack_is_read_with_a_note(tmp_path):
    seg, affine, _ = spine(["T12", "L1", "L2", "L3"])
    read = read_vertebra_labels(save_nifti(tmp_path / "upside.nii.gz", seg[:, :, ::-1].copy(), affine))
    assert read.scheme == "verse" and "C1 inferior" in read.notes[0]


def test_the_ct_grid_must_match(tmp_path):
    seg, affine, _ = spine(["L1", "L2"])
    path = save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    with pytest.raises(DatasetError, match=r"seg\.nii\.gz: label map shape .* does not match the CT shape"):
        read_vertebra_labels(path, shape=(4, 4, 4))
    moved = affine.copy()
    moved[0, 3] += 2
    with pytest.raises(DatasetError, match=r"seg\.nii\.gz: label map affine does not match"):
        read_vertebra_labels(path, shape=seg.shape, affine=moved)
    with pytest.raises(ParamsError, match="label scheme 'nnunet' is not known"):
        read_vertebra_labels(path, scheme="nnunet")


def test_stray_values_above_28_are_not_taken_for_totalsegmentator(tmp_path):
    seg, affine, _ = spine(["T12", "L1", "L2"])
    seg[0, 0, 0] = 40
    with pytest.raises(DatasetError, match=r"stray\.nii\.gz.*values \[40\] above 28"):
        read_vertebra_labels(save_nifti(tmp_path / "stray.nii.gz", seg, affine))


# ---------------------------------------------------------------- per-structure masks
def test_a_single_mask_is_read_by_its_file_name_or_refused(tmp_path):
    seg, affine, _ = spine(["T12", "L1", "L2"])
    mask = (seg == 20).astype(np.uint8)
    for name in ("vertebrae_L1.nii.gz", "L1.nii.gz", "L1_mask.nii.gz"):
        read = read_vertebra_labels(save_nifti(tmp_path / name, mask, affine))
        assert read.layout == "structure mask" and levels_of(read) == ["L1"]
        np.testing.assert_array_equal(read.array, np.where(mask > 0, 20, 0))
    save_nifti(tmp_path / "mask.nii.gz", mask, affine)
    with pytest.raises(DatasetError, match=r"mask\.nii\.gz: the map holds only the values 0 and 1.*does not say"):
        read_vertebra_labels(tmp_path / "mask.nii.gz")
    assert levels_of(read_vertebra_labels(tmp_path / "mask.nii.gz", scheme="verse")) == ["C1"]  # said so
    with pytest.raises(DatasetError, match=r"vertebrae_L1\.nii\.gz: --labels verse reads the value 1 as C1"):
        read_vertebra_labels(tmp_path / "vertebrae_L1.nii.gz", scheme="verse")


def test_a_totalsegmentator_folder_of_masks(tmp_path):
    seg, affine, _ = spine(LUMBAR, lps=True)
    folder = tmp_path / "segmentations"
    for label in (19, 20, 21, 22, 23, 24):
        save_nifti(folder / f"vertebrae_{LEVEL_NAMES[label]}.nii.gz", (seg == label).astype(np.uint8), affine)
    save_nifti(folder / "vertebrae_S1.nii.gz", (seg == 26).astype(np.uint8), affine)
    save_nifti(folder / "vertebrae_C1.nii.gz", np.zeros_like(seg), affine)  # not in the scan: empty
    save_nifti(folder / "liver.nii.gz", np.ones_like(seg), affine)  # another structure: ignored
    save_nifti(folder / "rib_left_1.nii.gz", np.ones_like(seg), affine)
    read = read_vertebra_labels(folder, shape=seg.shape, affine=affine)
    assert read.layout == "structure folder" and read.scheme == "totalsegmentator"
    np.testing.assert_array_equal(read.array, seg)
    # overlapping masks, a non-binary mask, another grid, no mask at all: refused naming the file
    save_nifti(folder / "vertebrae_L2.nii.gz", ((seg == 21) | (seg == 20)).astype(np.uint8), affine)
    with pytest.raises(DatasetError, match=r"vertebrae_L2\.nii\.gz: \d+ voxel\(s\) are also in the mask of L1"):
        read_vertebra_labels(folder)
    save_nifti(folder / "vertebrae_L2.nii.gz", seg, affine)
    with pytest.raises(DatasetError, match=r"vertebrae_L2\.nii\.gz: a per-structure mask holds values up to 26"):
        read_vertebra_labels(folder)
    save_nifti(folder / "vertebrae_L2.nii.gz", (seg == 21).astype(np.uint8), np.eye(4))
    with pytest.raises(DatasetError, match=r"vertebrae_L2\.nii\.gz: label map affine does not match"):
        read_vertebra_labels(folder)
    empty = tmp_path / "empty"
    save_nifti(empty / "liver.nii.gz", np.ones_like(seg), affine)
    with pytest.raises(DatasetError, match=r"empty: no per-structure vertebra mask"):
        read_vertebra_labels(empty)
    with pytest.raises(DatasetError, match=r"segmentations: a folder of per-structure masks, but --labels verse"):
        read_vertebra_labels(folder, scheme="verse")


# ---------------------------------------------------------------- vfnb predict, check, preprocess
def spine_ct(seg):
    """A CT for ``seg``: bone (300-360 HU) in the vertebrae, soft tissue elsewhere."""
    rng = np.random.default_rng(5)
    ct = np.full(seg.shape, -80, np.int16)
    bone = (seg > 0) & (seg < 30)
    ct[bone] = 300 + rng.integers(0, 60, size=int(bone.sum()))
    return ct


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small network as training saves it (patches pre-processed at 24, graded at 16^3), as test_predict makes it."""
    import torch

    from vfnb.models.checkpoints import save_checkpoint
    from vfnb.models.networks import ModelInput, build_model

    torch.manual_seed(0)
    net = build_model("resnet10", block_inplanes=[4, 8, 8, 16])
    with torch.no_grad():
        net.classifier.weight.mul_(50.0)  # grades that differ between vertebrae
    net.input_spec = ModelInput(cube_size=16, patch_size=24)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", net.eval(), params={"cube_size": 16})


PROBS = ["p0", "p1", "p2", "p3"]


def test_predict_grades_a_totalsegmentator_map_as_its_verse_twin(tmp_path, checkpoint, capsys):
    import pandas as pd

    from vfnb.cli import main
    from vfnb.inference.grading import predict_scan

    seg, affine, _ = spine(["T12", "L1", "L2", "L3", "L4", "L5", "S1"], width_mm=80, depth_mm=64)
    ct = save_nifti(tmp_path / "scan.nii.gz", spine_ct(seg), affine)
    verse_path = save_nifti(tmp_path / "verse.nii.gz", seg, affine)
    total = verse_to_totalseg(seg)
    total[0:8, 0:8, 0:40] = 5  # a piece of "liver" (ID 5), away from the spine
    total_path = save_nifti(tmp_path / "total.nii.gz", total, affine)
    verse = predict_scan(ct, verse_path, checkpoint, device="cpu")
    assert verse["level"].tolist() == ["T12", "L1", "L2", "L3", "L4", "L5"]  # S1 never graded
    ts = predict_scan(ct, total_path, checkpoint, device="cpu")
    assert "read as totalsegmentator" in capsys.readouterr().err
    assert ts["level"].tolist() == verse["level"].tolist() and ts["label"].tolist() == verse["label"].tolist()
    np.testing.assert_array_equal(ts[PROBS].to_numpy(), verse[PROBS].to_numpy())
    assert not np.allclose(verse[PROBS].to_numpy()[0], verse[PROBS].to_numpy()[-1])  # the probabilities say something
    # through the command line, said explicitly, from a folder of per-structure masks, and refused as VerSe
    folder = tmp_path / "segmentations"
    for label in (19, 20, 21, 22, 23, 24, 26):
        name = "vertebrae_S1" if label == 26 else f"vertebrae_{LEVEL_NAMES[label]}"
        save_nifti(folder / f"{name}.nii.gz", (seg == label).astype(np.uint8), affine)
    save_nifti(folder / "liver.nii.gz", (total == 5).astype(np.uint8), affine)
    argv = ["predict", "--ct", str(ct), "--checkpoint", str(checkpoint), "--device", "cpu"]
    for seg_arg, extra, name in ((total_path, ["--labels", "totalsegmentator"], "given.csv"),
                                 (folder, [], "folder.csv")):
        assert main(argv + ["--seg", str(seg_arg), "--out", str(tmp_path / name)] + extra) == 0
        table = pd.read_csv(tmp_path / name)
        assert table["level"].tolist() == verse["level"].tolist()
        np.testing.assert_allclose(table[PROBS].to_numpy(), verse[PROBS].to_numpy(), atol=1e-6)
    capsys.readouterr()
    assert main(argv + ["--seg", str(total_path), "--labels", "verse"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "total.nii.gz" in line and "above 28" in line and "Traceback" not in err


def test_predict_on_the_regression_cases(tmp_path, checkpoint, capsys):
    """The hand-zeroed `total` map grades L4 and L5 only; ``vertebrae_L1.nii.gz`` grades L1, never C1."""
    from vfnb.inference.grading import predict_scan

    seg, affine, _ = spine(LUMBAR)
    ct = save_nifti(tmp_path / "scan.nii.gz", spine_ct(seg), affine)
    total = verse_to_totalseg(seg)
    for value, mm in ORGANS:
        box = [int(round(v / SPACING)) for v in mm]
        region = total[box[0]:box[1], box[2]:box[3], box[4]:box[5]]
        region[region == 0] = value
    total[total > 28] = 0
    table = predict_scan(ct, save_nifti(tmp_path / "zeroed.nii.gz", total, affine), device="cpu")
    assert table["level"].tolist() == ["L4", "L5"]
    mask = save_nifti(tmp_path / "vertebrae_L1.nii.gz", (seg == 20).astype(np.uint8), affine)
    assert predict_scan(ct, mask, checkpoint, device="cpu")["level"].tolist() == ["L1"]
    unnamed = save_nifti(tmp_path / "mask.nii.gz", (seg == 20).astype(np.uint8), affine)
    with pytest.raises(DatasetError, match="does not say which vertebra"):
        predict_scan(ct, unnamed, checkpoint, device="cpu")


def test_check_and_preprocess_read_the_scheme_per_case(tmp_path):
    import yaml

    from vfnb.data.check import check_dataset
    from vfnb.data.preprocess import preprocess_dataset

    root = tmp_path / "original"
    seg, affine, _ = spine(["L1", "L2", "L3"], width_mm=80, depth_mm=64)
    ct = spine_ct(seg)
    low, low_affine, _ = spine(["L4", "L5"], width_mm=80, depth_mm=64)
    for case, labels, ct_data, grid in (("verse", seg, ct, affine), ("total", verse_to_totalseg(seg), ct, affine),
                                        ("low", verse_to_totalseg(low), spine_ct(low), low_affine),
                                        ("pair", np.where(low == 24, 27, 0), spine_ct(low), low_affine)):
        save_nifti(root / "img" / f"{case}.nii.gz", ct_data, grid)
        save_nifti(root / "seg" / f"{case}.nii.gz", labels.astype(np.uint8), grid)
    for label in (20, 21, 22):
        mask = (seg == label).astype(np.uint8)
        save_nifti(root / "seg" / "folder" / f"vertebrae_{LEVEL_NAMES[label]}.nii.gz", mask, affine)
    save_nifti(root / "img" / "folder.nii.gz", ct, affine)
    grades = {20: 0, 21: 2, 22: 0}
    annotation = {"verse.nii.gz": dict(grades), "total.nii.gz": dict(grades), "folder.nii.gz": dict(grades),
                  "low.nii.gz": {23: 0, 24: 1}, "pair.nii.gz": {24: 1}}
    (root / "annotation.yaml").write_text(yaml.safe_dump(annotation))
    report = check_dataset(root)
    # a lone ID 27 (coccyx or L5?) is refused; everything else is read and named
    assert len(report.errors) == 1 and "pair.nii.gz" in report.errors[0] and "[27]" in report.errors[0], report.errors
    assert report.label_schemes["verse"].startswith("verse (multilabel")
    assert report.label_schemes["total"].startswith("totalsegmentator (multilabel")
    assert report.label_schemes["low"].startswith("totalsegmentator") and "distances" in report.label_schemes["low"]
    assert report.label_schemes["folder"].startswith("totalsegmentator (structure folder")
    text = report.summary_text()
    assert "label maps: 3 totalsegmentator, 1 verse" in text and "  folder: totalsegmentator" in text
    assert not any("absent" in w or "no grade" in w for w in report.warnings), report.warnings
    # label_scheme.yaml says what the numbers cannot: then pre-processing reads it
    (root / "label_scheme.yaml").write_text("pair.nii.gz: totalsegmentator\n")
    assert check_dataset(root).ok
    out = preprocess_dataset(root, tmp_path / "processed", size=16)
    label_maps = json.loads((out / "preprocess.json").read_text())["label_maps"]
    assert label_maps["pair"] == "totalsegmentator (multilabel; TotalSegmentator v2 `total` IDs, as given)"
    assert label_maps["verse"].startswith("verse") and label_maps["folder"].startswith("totalsegmentator (structure")
    names = sorted(p.name for p in (out / "img").iterdir())
    assert names == sorted([f"{c}_{l}_{g}.nii.gz" for c in ("verse", "total", "folder") for l, g in grades.items()]
                           + ["low_23_0.nii.gz", "low_24_1.nii.gz", "pair_24_1.nii.gz"])
    (root / "label_scheme.yaml").write_text("pair.nii.gz: nnunet\nghost.nii.gz: verse\n")
    errors = check_dataset(root).errors
    assert any("label_scheme.yaml: pair.nii.gz: scheme 'nnunet' is not known" in e for e in errors), errors
    assert any("label_scheme.yaml: 'ghost.nii.gz' is not a CT of annotation.yaml" in e for e in errors), errors


def test_scan_pairs_take_a_folder_of_masks_per_scan(tmp_path):
    from vfnb.inference.command import scan_pairs

    (tmp_path / "img").mkdir()
    (tmp_path / "seg" / "b").mkdir(parents=True)
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "img" / name).write_bytes(b"")
    (tmp_path / "seg" / "a.nii.gz").write_bytes(b"")
    assert scan_pairs(tmp_path / "img", tmp_path / "seg") == [
        ("a", tmp_path / "img" / "a.nii.gz", tmp_path / "seg" / "a.nii.gz"),
        ("b", tmp_path / "img" / "b.nii.gz", tmp_path / "seg" / "b")]
    # one CT file and the folder of its masks
    assert scan_pairs(tmp_path / "img" / "b.nii.gz", tmp_path / "seg" / "b") == [
        ("b", tmp_path / "img" / "b.nii.gz", tmp_path / "seg" / "b")]
    with pytest.raises(DatasetError, match=r"--ct .*img is a folder of CT files and --seg .*a\.nii\.gz is not a folder"):
        scan_pairs(tmp_path / "img", tmp_path / "seg" / "a.nii.gz")


def test_specks_do_not_make_a_vertebra_tall(tmp_path):
    seg, affine, _ = spine(LUMBAR)
    seg[2, 2, 2] = 20  # one stray L1 voxel at the far corner of the scan, as segmentations leave them
    read = read_vertebra_labels(save_nifti(tmp_path / "speck.nii.gz", verse_to_totalseg(seg), affine))
    assert read.scheme == "totalsegmentator" and levels_of(read) == LUMBAR
    # but a second, real structure under the label is not a speck
    seg[2:20, 2:20, 2:20] = 20
    with pytest.raises(DatasetError, match=r"L1 (spans|is \d+ mm tall)"):
        read_vertebra_labels(save_nifti(tmp_path / "two.nii.gz", seg, affine))
