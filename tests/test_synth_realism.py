"""SynthSpine v2 against real CT: the realism measurements, their reference ranges, the ``vfnb synth realism`` command.

The measurements are checked on volumes whose answer is known by construction; then
a small generated cohort must keep every statistic inside the range recorded in
:mod:`vfnb.data.synth.reference_ranges`.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from vfnb.cli import main
from vfnb.data.synth import SynthConfig, generate_case, sample_patient
from vfnb.data.synth import realism
from vfnb.data.synth.reference_ranges import RANGES
from vfnb.data.synth.scan import _grain_noise
from vfnb.io import save_nifti

# small scans: 6-7 vertebrae, coarse enough to be quick
SMALL = SynthConfig(min_vertebrae=6, max_vertebrae=7, max_voxels=2_000_000)


@pytest.fixture(scope="module")
def cases():
    return [generate_case(k, 21, SMALL) for k in range(3)]


@pytest.fixture(scope="module")
def cohort(cases):
    """Per-vertebra statistics of three generated cases (graded vertebrae; the cohort the range tests read)."""
    return [r for c in cases for r in realism.scan_statistics(c.image, c.seg, c.affine, c.case_id, "synthspine",
                                                              c.grades) if r["label"] in c.grades]


# ---------------------------------------------------------------- the measurements, on known volumes
def test_noise_correlation_tells_white_from_kernel_noise():
    rng = np.random.default_rng(0)
    shape = (80, 80, 30)
    labels = np.zeros(shape, np.uint8)
    white = 40 + 20 * rng.standard_normal(shape)
    grained = 40 + 20 * _grain_noise(shape, 0.55, 0.4, rng)
    assert abs(realism.noise_correlation(white, labels, 2)) < 0.05
    assert 0.2 < realism.noise_correlation(grained, labels, 2) < 0.45
    # bone and air are outside the soft-tissue window: a volume of them has no measurable noise
    assert np.isnan(realism.noise_correlation(np.full(shape, 500.0), labels, 2))


def test_vertebra_statistics_on_a_ring_with_a_canal():
    """A 1 mm-grid block of 'bone' with a soft shell and a hole through it: every figure known in advance."""
    img = np.full((40, 40, 30), 10.0, np.float32)
    mask = np.zeros(img.shape, bool)
    mask[5:35, 5:35, 5:25] = True
    hole = np.zeros(img.shape, bool)
    hole[15:25, 15:25, :] = True            # the canal: 10 x 10 mm, filled with 10 HU
    mask &= ~hole
    inner = ndimage.binary_erosion(mask, iterations=2)
    img[inner] = 200.0                       # bone inside, 10 HU in the 2-voxel rim
    stats = realism.vertebra_statistics(img, mask, np.ones(3), axis=2)
    assert stats["core_median_hu"] == 200.0 and stats["core_sd_hu"] == 0.0
    assert stats["share_below_100"] == pytest.approx(np.mean(img[mask] < 100))
    assert stats["canal_hu"] == 10.0
    # the core is >= 4 mm from the label's edge, the canal's wall included
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    assert stats["core_voxels"] == int(np.sum(dist >= 4.0))


def test_slice_axis_follows_the_largest_voxel_size():
    assert realism.slice_axis(np.diag([0.8, 0.8, 3.0, 1.0])) == 2
    assert realism.slice_axis(np.diag([2.5, 0.7, 0.7, 1.0])) == 0
    assert realism.slice_axis(np.diag([1.0, 1.0, 1.0, 1.0])) == 2


# ---------------------------------------------------------------- SynthSpine inside the real ranges
@pytest.mark.parametrize("name", [s for s in realism.STATISTICS if s != "core_median_hu"])
def test_cohort_statistic_inside_its_reference_range(cohort, name):
    value = realism.summarise(cohort)["statistics"][name]
    ref = RANGES[name]
    assert ref.low <= value <= ref.high, (name, value, ref.low, ref.high)


def _population(patients: int):
    cfg = SynthConfig()
    return [v for k in range(patients) for v in sample_patient(np.random.default_rng([0, k]), cfg)["vertebrae"]]


def test_core_hu_measures_the_drawn_density_and_the_cohort_sits_in_the_real_range(cases, cohort):
    """Three patients are three density draws, too few for a cohort's median density: the image's core HU is
    checked against the HU each vertebra was drawn with, and the cohort median over many drawn patients."""
    drawn = {(c.case_id, r["label"]): r["trabecular_hu"] for c in cases for r in c.truth}
    normal = [r for r in cohort if r["grade"] == 0]
    diff = [r["core_median_hu"] - drawn[(r["scan"], r["label"])] for r in normal]
    assert len(normal) >= 8 and abs(np.median(diff)) < 25, diff
    population = np.median([v.trab_hu for v in _population(400) if v.grade == 0])
    ref = RANGES["core_median_hu"]
    assert ref.low <= population <= ref.high, population


def test_canal_holds_csf_and_masks_are_generous(cohort):
    canal = np.array([r["canal_hu"] for r in cohort], float)
    assert np.nanmax(canal) < 40 and np.isfinite(canal).mean() > 0.8
    below = np.array([r["share_below_100"] for r in cohort])
    assert below.min() > 0.03  # no mask tight to the bone


def test_low_density_predicts_fracture_only_moderately():
    """Over many patients: the AUC of 'lower trabecular HU means fractured' stays in the moderate band."""
    from sklearn.metrics import roc_auc_score

    verts = _population(800)
    auc = roc_auc_score([v.grade > 0 for v in verts], -np.array([v.trab_hu for v in verts]))
    ref = RANGES["fracture_auc_low_hu"]
    assert ref.low <= auc <= ref.high, auc


# ---------------------------------------------------------------- the command
def _write_case(tmp_path, case):
    ct, seg = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    save_nifti(ct, case.image, case.affine)
    save_nifti(seg, case.seg, case.affine)
    return case, ct, seg


def test_realism_command_writes_table_summary_and_figure(tmp_path, capsys, monkeypatch, cases):
    case, ct, seg = _write_case(tmp_path, cases[0])
    # one generated case stands in for the SynthSpine cohort, the same case read from disk for the "real" scan
    monkeypatch.setattr(realism, "synth_rows", lambda cases, seed, config=None: realism.scan_statistics(
        case.image, case.seg, case.affine, case.case_id, "synthspine", case.grades))
    out = tmp_path / "report"
    assert main(["synth", "realism", "--real", str(ct), "--seg", str(seg), "--out", str(out)]) == 0
    with open(out / "realism.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    real = [r for r in rows if r["source"] == "real"]
    synth = [r for r in rows if r["source"] == "synthspine"]
    assert len(real) == len(synth) == len(case.grades)
    for a, b in zip(real, synth):  # the same voxels measured from memory and from disk
        assert a["label"] == b["label"]
        assert float(a["core_median_hu"]) == pytest.approx(float(b["core_median_hu"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["synthetic"] is True and summary["real"]["statistics"]["noise_correlation"] > 0.1
    assert {r["statistic"] for r in summary["reference_ranges"]} >= set(realism.STATISTICS)
    assert (out / "realism.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an existing report is refused
    assert main(["synth", "realism", "--real", str(ct), "--seg", str(seg), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_realism_command_refusals(tmp_path, capsys, cases):
    _, ct, seg = _write_case(tmp_path, cases[0])
    assert main(["synth", "realism", "--real", str(ct), "--out", str(tmp_path / "a")]) == 2
    assert "--real and --seg go together" in capsys.readouterr().err
    empty = tmp_path / "empty.nii.gz"
    save_nifti(empty, np.zeros((20, 20, 20), np.uint8), np.eye(4))
    assert main(["synth", "realism", "--real", str(ct), "--seg", str(empty), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "empty.nii.gz" in err and not (tmp_path / "b").exists()


def test_dataset_rows_read_a_synthspine_folder_like_the_generator_made_it(tmp_path, cases, cohort):
    """The notebook's path: an original-layout folder read back gives the rows measured in memory."""
    from vfnb.data.synth import generate_dataset

    root = generate_dataset(tmp_path / "synth", cases=1, seed=21, config=SMALL, progress=False)
    rows = realism.dataset_rows(root, limit=1)
    expected = [r for r in cohort if r["scan"] == cases[0].case_id]
    assert [r["label"] for r in rows] == [r["label"] for r in expected]
    for a, b in zip(rows, expected):
        assert a["grade"] == b["grade"] and a["core_median_hu"] == pytest.approx(b["core_median_hu"])
        assert a["share_below_100"] == pytest.approx(b["share_below_100"])
    table = realism.summary_rows(realism.summarise(rows))
    assert [t["statistic"] for t in table] == [r.statistic for r in realism.REFERENCE_RANGES]


@pytest.mark.parametrize("field, value, expected", [
    ("trabecular_hu_l1", (100.0, 120.0, 90.0), "trabecular_hu_l1"),
    ("seg_margin_mm", (2.0, 1.0), "seg_margin_mm"),
    ("noise_grain_vox", (0.5, 9.0), "noise_grain_vox"),
    ("p_seg_disc_bleed", 1.5, "p_seg_disc_bleed"),
    ("csf_hu", (50.0, 60.0), "csf_hu"),
])
def test_appearance_settings_are_checked(field, value, expected):
    import dataclasses

    from vfnb.errors import ParamsError

    with pytest.raises(ParamsError, match=expected):
        generate_case(0, 0, dataclasses.replace(SynthConfig(), **{field: value}))
