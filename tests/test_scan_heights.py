"""Heights on the CT's own grid (vfnb.morphometry.scan_heights) and the grader that needs no checkpoint.

Vertebrae of known shape are rasterised into small scans: a body whose posterior and
anterior walls have known heights, whose endplates dip by a known central
concavity, tilted in the sagittal plane, with an arch behind a spinal canal.
"""

import re

import numpy as np
import pandas as pd
import pytest

from vfnb.cli import main
from vfnb.inference.grading import predict_scan
from vfnb.inference.heights_grading import morphometry_grades, scan_heights, with_heights
from vfnb.io import save_nifti
from vfnb.morphometry.graders import GENANT_BANDS, genant_grade
from vfnb.morphometry.heights import HEIGHT_POSITIONS
from vfnb.morphometry.scan_heights import borderline, measure_scan_vertebrae

HEIGHT_COLS = ["anterior_height_mm", "middle_height_mm", "posterior_height_mm"]


def _true_height(spec, name):
    """Height at the measurement position ``name`` of a body ``spec`` (wall heights, depth, concavity)."""
    hp, ha, depth, concavity = spec["hp"], spec["ha"], spec["depth"], spec.get("concavity", 0.0)
    u = (1.0 - HEIGHT_POSITIONS[name]) * depth  # from the posterior wall
    return hp + (ha - hp) * u / depth - 2 * concavity * (1 - (2 * u / depth - 1) ** 2)


def _column(specs, spacing, width=36.0, gap=9.0, bowl_width=1.0):
    """Label map ``[X, Y, Z]`` (RAS, ``spacing`` mm) of vertebrae stacked along z, and their centres.

    ``specs``: ``{label: {"hp", "ha", "depth", "tilt", "concavity"}}`` (mm, degrees),
    the first one lowest. Each body: posterior wall at u = 0, anterior at u = depth,
    endplates at +-h(u)/2 dipping by ``concavity`` at the middle (a parabola over
    ``bowl_width`` of the depth: 1 = wall to wall); an arch of 8 x 12
    x 10 mm lies 6 mm behind the posterior wall.
    """
    sx, sy, sz = spacing
    pitch = {label: max(s["ha"], s["hp"]) + s["depth"] * abs(np.sin(np.radians(s["tilt"]))) + gap
             for label, s in specs.items()}  # a tilted body reaches further up and down: no overlap
    tall = sum(pitch.values()) + gap
    shape = (int(np.ceil(1.5 * width / sx)), int(np.ceil(75.0 / sy)), int(np.ceil(tall / sz)))
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    seg = np.zeros(shape, np.uint8)
    level_z = gap
    for label, s in specs.items():
        centre = np.array([shape[0] * sx / 2 + 0.31 * sx, 45.0 + 0.23 * sy, level_z + (pitch[label] - gap) / 2])
        t = np.radians(s["tilt"])
        dy, dz = y - centre[1], z - centre[2]
        u = dy * np.cos(t) - dz * np.sin(t) + s["depth"] / 2
        v = dy * np.sin(t) + dz * np.cos(t)
        rel = 2 * u / s["depth"] - 1
        bowl = np.clip(1 - (rel / bowl_width) ** 2, 0, 1)
        half = (s["hp"] + (s["ha"] - s["hp"]) * u / s["depth"]) / 2 - s.get("concavity", 0.0) * bowl
        body = (np.abs(x - centre[0]) <= width / 2) & (u >= 0) & (u <= s["depth"]) & (np.abs(v) <= half)
        arch = (np.abs(x - centre[0]) <= 4) & (u <= -6) & (u >= -18) & (np.abs(v) <= 5)
        seg[body | arch] = label
        level_z += pitch[label]
    return seg, np.diag([*spacing, 1.0])


NORMAL = {"hp": 26.0, "ha": 26.5, "depth": 34.0, "tilt": 8.0, "concavity": 0.6}
SPECS = {22: NORMAL, 21: {**NORMAL, "tilt": -5.0}, 20: {**NORMAL, "ha": 14.0, "tilt": 3.0}}  # L3, L2, a wedged L1


def _ct(seg):
    return np.where(seg > 0, 400, -50).astype(np.int16)


def _reoriented(seg, affine, how):
    """The same world data stored another way: ``lps`` (x, y reversed) or ``permuted`` (axes z, x, y)."""
    if how == "lps":
        out = seg[::-1, ::-1].copy()
        new = affine.copy()
        new[:, 0], new[:, 1] = -affine[:, 0], -affine[:, 1]
        new[:3, 3] = affine[:3, :3] @ [seg.shape[0] - 1, seg.shape[1] - 1, 0] + affine[:3, 3]
        return out, new
    if how == "permuted":
        out = np.transpose(seg, (2, 0, 1)).copy()  # new axes: old z, old x, old y
        new = np.zeros((4, 4))
        new[:, 0], new[:, 1], new[:, 2], new[:, 3] = affine[:, 2], affine[:, 0], affine[:, 1], affine[:, 3]
        return out, new
    raise ValueError(how)


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 1.0), (0.7, 0.7, 3.0), (3.0, 0.7, 0.7)],
                         ids=["1mm", "axial-3mm", "sagittal-3mm"])
def test_heights_are_the_same_in_any_storage_order_and_near_the_truth(spacing):
    seg, affine = _column(SPECS, spacing)
    labels = [22, 21, 20]
    reference = scan_heights(seg, affine, labels)
    for how in ("lps", "permuted"):
        other = scan_heights(*_reoriented(seg, affine, how), labels)
        np.testing.assert_allclose(other[HEIGHT_COLS].to_numpy(), reference[HEIGHT_COLS].to_numpy(), atol=0.1)
    voxel = max(spacing[1], spacing[2])  # the sagittal plane's coarser axis
    for (_, row), label in zip(reference.iterrows(), labels):
        assert row["assessable"], row["problems"]
        for column, name in zip(HEIGHT_COLS, HEIGHT_POSITIONS):
            assert row[column] == pytest.approx(_true_height(SPECS[label], name), abs=voxel), (label, name)
    wedge = reference.set_index("label").loc[20]
    assert genant_grade(wedge["height_loss"]) >= 2 and genant_grade(reference["height_loss"][:2]).tolist() == [0, 0]


def test_a_body_cut_by_the_field_of_view_is_not_assessable_and_no_reference():
    seg, affine = _column(SPECS, (1.0, 1.0, 2.0))
    top = np.nonzero((seg == 20).any(axis=(0, 1)))[0]
    cut = seg[:, :, : (top[0] + top[-1]) // 2].copy()  # the scan ends through the middle of L1's body
    rows = scan_heights(cut, affine, [22, 21, 20]).set_index("label")
    assert not rows.loc[20, "assessable"]
    assert "superior edge" in rows.loc[20, "problems"][0]
    assert np.isnan(rows.loc[20, "height_loss"]) and not rows.loc[20, "borderline"]
    assert rows.loc[21, "assessable"] and rows.loc[22, "assessable"]
    # L2's crush reference is L3 alone: the cut L1 is no neighbour
    assert rows.loc[21, "posterior_ratio"] == pytest.approx(rows.loc[21, "posterior_height_mm"]
                                                            / rows.loc[22, "posterior_height_mm"])
    # the arch at the scan's posterior edge does not matter: the body is whole
    back = np.nonzero(seg.any(axis=(0, 2)))[0][0]
    arch_cut = seg[:, back + 4:, :].copy()
    assert scan_heights(arch_cut, affine, [22, 21, 20])["assessable"].all()


def test_a_vertebra_that_is_not_assessable_is_never_graded():
    """Whatever grader: no grade, no probabilities, the reason in the warnings."""
    heights = pd.DataFrame([
        {"label": 20, "level": "L1", "anterior_height_mm": 6.0, "middle_height_mm": 6.0, "posterior_height_mm": 9.0,
         "anterior_ratio": np.nan, "middle_ratio": np.nan, "posterior_ratio": np.nan, "height_loss": np.nan,
         "borderline": False, "assessable": False, "problems": ["the vertebral body touches the scan's superior edge"]},
        {"label": 21, "level": "L2", "anterior_height_mm": 26.0, "middle_height_mm": 25.0, "posterior_height_mm": 27.0,
         "anterior_ratio": 0.96, "middle_ratio": 0.93, "posterior_ratio": np.nan, "height_loss": 0.07,
         "borderline": False, "assessable": True, "problems": []}])
    network = pd.DataFrame({"label": [20, 21], "level": ["L1", "L2"], "pred": [3, 0],
                            "p0": [0.1, 0.7], "p1": [0.1, 0.1], "p2": [0.1, 0.1], "p3": [0.7, 0.1],
                            "fracture_prob": [0.9, 0.3], "warnings": ["touches the scan border", ""]})
    for table in (with_heights(network, heights, "ce/best.pt"), morphometry_grades(heights)):
        cut, whole = table.iloc[0], table.iloc[1]
        assert pd.isna(cut["pred"]) and cut[["p0", "p1", "p2", "p3", "fracture_prob"]].isna().all()
        assert "not assessable: the vertebral body touches the scan's superior edge" in cut["warnings"]
        assert whole["pred"] == 0 and not whole["borderline"]
        assert table["anterior_height_mm"].tolist() == [6.0, 26.0]
    assert with_heights(network, heights, "ce/best.pt")["p3"].iloc[1] == pytest.approx(0.1)
    assert morphometry_grades(heights)["p0"].isna().all()  # the rule invents no probabilities


def test_borderline_is_within_two_points_of_a_band_edge():
    loss = np.array([0.17, 0.18, 0.215, 0.23, 0.26, 0.30, 0.38, 0.43, 0.05, np.nan])
    assert borderline(loss, GENANT_BANDS).tolist() == [False, True, True, True, True, False, True, False, False,
                                                       False]


def test_lordotic_lumbar_vertebrae_are_normal_for_vfnb_but_not_for_the_min_max_rule():
    """Normal lumbar bodies taller in front (Ha/Hp 1.05-1.15), tilted as in lordosis, their endplates
    centrally concave so that Hm/Hp = 0.85: the loss against the posterior wall is 15 %, grade 0; the min/max
    rule (1 - min/max of the three heights > 0.2), whose reference is the tall anterior wall, flags them."""
    lordotic = {}
    for i, (ratio, tilt) in enumerate([(1.05, -8.0), (1.08, 0.0), (1.10, 8.0), (1.12, 16.0), (1.15, 24.0)]):
        hp, ha = 26.0, 26.0 * ratio
        lordotic[20 + i] = {"hp": hp, "ha": ha, "depth": 34.0, "tilt": tilt,
                            "concavity": ((hp + ha) / 2 - 0.85 * hp) / 2}  # each endplate dips this much mid-body
    seg, affine = _column(lordotic, (0.8, 0.8, 1.0), bowl_width=0.6)
    rows = scan_heights(seg, affine, list(lordotic))
    assert rows["assessable"].all()
    assert (genant_grade(rows["height_loss"]) == 0).all(), rows[["level", "height_loss"]]
    heights = rows[HEIGHT_COLS].to_numpy()
    min_max_loss = 1 - heights.min(axis=1) / heights.max(axis=1)
    assert (min_max_loss > 0.2).sum() >= 3 and (min_max_loss[2:] > 0.2).all(), min_max_loss
    assert (rows["anterior_height_mm"] >= rows["posterior_height_mm"]).all()  # taller in front (1 mm voxels: ties)


def _write(tmp_path, seg, affine, name="scan"):
    return (save_nifti(tmp_path / f"{name}_ct.nii.gz", _ct(seg), affine),
            save_nifti(tmp_path / f"{name}_seg.nii.gz", seg, affine))


def test_predict_without_checkpoint_grades_from_heights(tmp_path, capsys):
    seg, affine = _column({23: NORMAL, **SPECS}, (1.0, 1.0, 2.0))
    top = np.nonzero((seg == 20).any(axis=(0, 1)))[0]
    seg = seg[:, :, : top[-1] - 3].copy()  # L1 cut by the top of the scan
    ct, seg_path = _write(tmp_path, seg, affine)
    table = predict_scan(ct, seg_path)
    assert table["grader"].eq("morphometry").all() and table[["p0", "p1", "p2", "p3"]].isna().all().all()
    assert table["level"].tolist() == ["L1", "L2", "L3", "L4"]
    assert table["assessable"].tolist() == [False, True, True, True]

    out, report = tmp_path / "grades.csv", tmp_path / "report.html"
    assert main(["predict", "--ct", str(ct), "--seg", str(seg_path), "--out", str(out), "--report", str(report)]) == 0
    written = pd.read_csv(out, keep_default_na=False)
    assert written.columns.tolist()[:5] == ["model_notes", "label", "level", "grader", "pred"]
    for column in (*HEIGHT_COLS, "anterior_ratio", "middle_ratio", "posterior_ratio", "height_loss", "borderline",
                   "assessable"):
        assert column in written.columns
    l1 = written[written["level"] == "L1"].iloc[0]
    assert l1["pred"] == "" and l1["p0"] == "" and str(l1["assessable"]) == "False"
    assert "not assessable" in l1["warnings"]
    assert written[written["level"] == "L2"]["pred"].tolist() == ["0"]
    page = report.read_text()
    text = re.sub(r"data:image/png;base64,[^'\"]+", "", page)
    for words in ("Grader: morphometry", "no network, no probabilities", "L1: not assessable: the vertebral body "
                  "touches the scan's superior edge", "L2: grade 0", "posterior height Hp (mm)"):
        assert words in text, words
    assert "grade probabilities" not in text
    l2_hp = float(written[written["level"] == "L2"]["posterior_height_mm"].iloc[0])
    assert f"<td>{l2_hp:.1f}</td>" in text  # the report shows the table's heights

    capsys.readouterr()
    code = main(["predict", "--ct", str(ct), "--seg", str(seg_path), "--saliency", str(tmp_path / "maps")])
    assert code == 2 and "--saliency" in capsys.readouterr().err and not (tmp_path / "maps").exists()


def test_borderline_mark_in_table_and_report(tmp_path):
    # Ha / Hp = 0.8 at the measurement positions: 20 % anterior loss, on the mild band's edge; fine slices
    # (0.25 mm) so that voxel rounding moves the loss by well under the 2-point margin
    specs = {21: NORMAL, 20: {**NORMAL, "ha": 19.1, "tilt": 0.0}}
    seg, affine = _column(specs, (0.8, 0.8, 0.25))
    ct, seg_path = _write(tmp_path, seg, affine)
    table = predict_scan(ct, seg_path).set_index("level")
    assert abs(table.loc["L1", "height_loss"] - 0.20) <= 0.02 and table.loc["L1", "borderline"]
    assert not table.loc["L2", "borderline"]
    report = tmp_path / "r.html"
    assert main(["predict", "--ct", str(ct), "--seg", str(seg_path), "--out", str(tmp_path / "t.csv"),
                 "--report", str(report)]) == 0
    assert "borderline: within 2 points of a Genant band edge" in report.read_text()


def test_empty_label_is_not_assessable():
    seg, affine = _column({20: NORMAL}, (1.0, 1.0, 1.0))
    (row,) = measure_scan_vertebrae(seg, affine, [21])
    assert not row.assessable and np.isnan(row.heights["anterior"])
