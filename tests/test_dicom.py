"""A CT as a DICOM series: the grid dcm2niix writes, HU from stored values, compressed syntaxes, refusals."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from dicom_series import write_series
from test_predict import synthetic_scan
from vfnb.cli import main
from vfnb.data.resample import onto_grid
from vfnb.data.scan_input import read_ct
from vfnb.errors import DatasetError
from vfnb.io import save_nifti
from vfnb.models.checkpoints import save_checkpoint
from vfnb.models.networks import ModelInput, build_model

DCM2NIIX = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")

#: Storage orders of the same patient: axial RAS- and LPS-stored, axial with slices stored downwards, sagittal.
ORIENTATIONS = {
    "axial-ras": [[0.8, 0, 0, -14.0], [0, 0.9, 0, -16.0], [0, 0, 1.5, 100.0]],
    "axial-lps": [[-0.8, 0, 0, 14.0], [0, -0.9, 0, 16.0], [0, 0, 1.5, 100.0]],
    "axial-down": [[-0.8, 0, 0, 14.0], [0, -0.9, 0, 16.0], [0, 0, -1.5, 195.0]],
    "sagittal": [[0, 0, 1.2, -20.0], [0.8, 0, 0, -14.0], [0, -0.9, 0, 130.0]],
}


def _affine(rows):
    return np.vstack([np.asarray(rows, float), [0, 0, 0, 1]])


def _image(shape=(36, 34, 12), seed=0):
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.int16)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_the_series_reads_onto_dcm2niix_grid_whatever_the_file_order(tmp_path, orientation):
    image, affine = _image(), _affine(ORIENTATIONS[orientation])
    write_series(tmp_path / "dicom", image, affine, shuffle=True)
    scan = read_ct(tmp_path / "dicom")
    # the same voxels at the same world points as the array written: the lattice re-ordered, nothing resampled
    assert scan.image.dtype == np.int16 and scan.dicom is not None
    np.testing.assert_array_equal(onto_grid(image, affine, scan.image.shape, scan.affine), scan.image)
    if not Path(DCM2NIIX).is_file():
        pytest.skip("dcm2niix is not installed: the array order was not compared with its conversion")
    subprocess.run([DCM2NIIX, "-z", "y", "-f", "conv", "-o", str(tmp_path), str(tmp_path / "dicom")],
                   check=True, capture_output=True)
    converted = nib.load(tmp_path / "conv.nii.gz")
    np.testing.assert_array_equal(np.asarray(converted.dataobj), scan.image)  # same order, no reorientation
    np.testing.assert_allclose(converted.affine, scan.affine, atol=1e-4)


@pytest.mark.parametrize("syntax", ["rle", "jpeg2000", "jpeg"])
def test_compressed_series_decode_to_the_same_hu(tmp_path, syntax):
    image, affine = _image((40, 36, 4)), _affine(ORIENTATIONS["axial-lps"])
    write_series(tmp_path / "plain", image, affine)
    write_series(tmp_path / syntax, image, affine, syntax=syntax)
    np.testing.assert_array_equal(read_ct(tmp_path / syntax).image, read_ct(tmp_path / "plain").image)


def test_rescale_slope_and_intercept_give_hu(tmp_path):
    image, affine = _image(), _affine(ORIENTATIONS["axial-ras"])
    write_series(tmp_path / "a", image, affine, intercept=-1024.0)
    write_series(tmp_path / "b", image.astype(float) + 0.5, affine, slope=0.5, intercept=-1024.0)
    a, b = read_ct(tmp_path / "a"), read_ct(tmp_path / "b")
    np.testing.assert_array_equal(a.image, onto_grid(image, affine, a.image.shape, a.affine))
    assert b.image.dtype == np.float32  # half-HU steps are kept, not rounded
    np.testing.assert_allclose(b.image, a.image.astype(np.float32) + 0.5)


def _refusal(path, match, series=None):
    with pytest.raises(DatasetError, match=match):
        read_ct(path, series)


def test_several_series_are_listed_and_one_is_picked_by_uid(tmp_path):
    image, affine = _image(), _affine(ORIENTATIONS["axial-ras"])
    write_series(tmp_path / "study" / "soft", image, affine, series_uid="1.2.826.0.1.1", description="Soft B30f")
    write_series(tmp_path / "study" / "bone", image + 1, affine, series_uid="1.2.826.0.1.2", description="Bone B70f")
    with pytest.raises(DatasetError, match=r"2 DICOM series in this folder: .*--series UID") as refused:
        read_ct(tmp_path / "study")
    for text in ("'Soft B30f' (CT, 12 files, UID 1.2.826.0.1.1)", "'Bone B70f' (CT, 12 files, UID 1.2.826.0.1.2)"):
        assert text in str(refused.value)
    picked = read_ct(tmp_path / "study", "1.2.826.0.1.2")
    assert picked.dicom.description == "Bone B70f" and int(picked.image.max()) == int(image.max()) + 1
    _refusal(tmp_path / "study", "no series with UID 9.9", series="9.9")


def test_a_localizer_series_beside_the_ct_is_left_out_and_one_mixed_in_is_refused(tmp_path):
    image, affine = _image(), _affine(ORIENTATIONS["axial-ras"])
    write_series(tmp_path / "study" / "ct", image, affine)
    write_series(tmp_path / "study" / "scout", image[:, :, :1], affine, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    assert read_ct(tmp_path / "study").image.shape[2] == image.shape[2]
    mixed = tmp_path / "mixed"
    write_series(mixed, image, affine, series_uid="1.2.3.4")
    write_series(mixed / "scout", image[:, :, :1], affine, series_uid="1.2.3.4",
                 image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    _refusal(mixed, "a localizer \\(scout\\) image is mixed in")


def _positions(affine, n):
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return [lps @ np.array([0.0, 0.0, float(k), 1.0]) for k in range(n)]


def test_missing_uneven_repeated_and_tilted_slices_are_refused(tmp_path):
    image, affine = _image(), _affine(ORIENTATIONS["axial-ras"])
    files = write_series(tmp_path / "missing", image, affine)
    files[5].unlink()
    _refusal(tmp_path / "missing", r"missing slices: 3\.000 mm .* steps 1\.500 mm \(about 1 slice")
    uneven = _positions(affine, image.shape[2])
    uneven[4] = uneven[4] + [0, 0, 0.4, 0]
    write_series(tmp_path / "uneven", image, affine, positions=uneven)
    _refusal(tmp_path / "uneven", "uneven slice spacing")
    files = write_series(tmp_path / "repeated", image, affine)
    shutil.copy(files[3], tmp_path / "repeated" / "copy-of-slice")
    _refusal(tmp_path / "repeated", "lie at the same position")
    tilted = [p + [0, 0.3 * k, 0, 0] for k, p in enumerate(_positions(affine, image.shape[2]))]
    write_series(tmp_path / "tilted", image, affine, positions=tilted)
    _refusal(tmp_path / "tilted", "gantry tilt")


def test_other_modalities_single_files_and_folders_without_dicom_are_refused(tmp_path):
    image, affine = _image(), _affine(ORIENTATIONS["axial-ras"])
    files = write_series(tmp_path / "mr", image, affine, modality="MR")
    _refusal(tmp_path / "mr", "Modality is 'MR'; expected a CT")
    _refusal(files[0], "a single DICOM file; a CT is a series")
    one = tmp_path / "one"
    write_series(one, image[:, :, :1], affine)
    _refusal(one, "a single image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    _refusal(tmp_path / "empty", "a folder without DICOM files")


def test_a_damaged_file_is_named(tmp_path):
    image, affine = _image(), _affine(ORIENTATIONS["axial-ras"])
    files = write_series(tmp_path / "s", image, affine)
    data = files[2].read_bytes()
    files[2].write_bytes(data[:len(data) // 2])
    with pytest.raises(DatasetError, match=files[2].name):
        read_ct(tmp_path / "s")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("resnet10", block_inplanes=[4, 8, 8, 8])
    net.input_spec = ModelInput(cube_size=16, patch_size=24)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt", copy.deepcopy(net),
                           params={"cube_size": 16, "mode": "ce"})


@pytest.mark.parametrize("grader", ["network", "heights"])
def test_predict_grades_a_dicom_folder_as_its_nifti_twin(tmp_path, checkpoint, grader):
    ct, seg, affine = synthetic_scan(flip=True)
    nifti, labels = save_nifti(tmp_path / "ct.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    write_series(tmp_path / "dicom", ct, affine, intercept=-1024.0, syntax="rle")
    with_model = ["--checkpoint", str(checkpoint)] if grader == "network" else []
    common = ["--seg", str(labels), "--device", "cpu", *with_model]
    assert main(["predict", "--ct", str(nifti), "--out", str(tmp_path / "a.csv"), *common]) == 0
    # the label map as stored for the NIfTI: another array order than the series' grid, re-ordered exactly
    assert main(["predict", "--ct", str(tmp_path / "dicom"), "--out", str(tmp_path / "b.csv"), *common]) == 0
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert list(a["level"]) == list(b["level"]) == ["T12", "L1", "L2"]
    numbers = a.select_dtypes("number").columns
    pd.testing.assert_frame_equal(a[numbers], b[numbers], atol=1e-6)


def test_predict_refuses_a_series_option_without_a_dicom_folder(tmp_path, capsys):
    ct, seg, affine = synthetic_scan()
    nifti, labels = save_nifti(tmp_path / "ct.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    assert main(["predict", "--ct", str(nifti), "--seg", str(labels), "--series", "1.2.3"]) == 2
    assert "--series 1.2.3: picks a series in a DICOM folder" in capsys.readouterr().err


def test_an_original_layout_may_hold_dicom_series_checked_and_preprocessed_as_their_nifti(tmp_path, capsys):
    ct, seg, affine = synthetic_scan(flip=True)
    for name in ("nifti", "dicom"):
        (tmp_path / name / "seg").mkdir(parents=True)
        save_nifti(tmp_path / name / "seg" / "case1.nii.gz", seg, affine)
        (tmp_path / name / "annotation.yaml").write_text("case1:\n  19: 0\n  20: 2\n  21: 0\n")
    save_nifti((tmp_path / "nifti" / "img").mkdir() or tmp_path / "nifti" / "img" / "case1.nii.gz", ct, affine)
    write_series(tmp_path / "dicom" / "img" / "case1", ct, affine, syntax="jpeg2000", intercept=-1024.0)
    assert main(["check", str(tmp_path / "dicom")]) == 0
    assert "ok" in capsys.readouterr().out
    for name in ("nifti", "dicom"):
        assert main(["preprocess", str(tmp_path / name), str(tmp_path / f"{name}-patches"), "--size", "24",
                     "--workers", "1"]) == 0
    patches = sorted(p.name for p in (tmp_path / "nifti-patches" / "img").iterdir())
    assert patches == sorted(p.name for p in (tmp_path / "dicom-patches" / "img").iterdir()) and len(patches) == 3
    for patch in patches:
        a, b = (nib.load(tmp_path / f"{n}-patches" / "img" / patch) for n in ("nifti", "dicom"))
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)


def _pydicom_examples() -> Path:
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    if not folder.is_dir():
        pytest.skip("pydicom's example files are not installed")
    return folder


def test_real_scanner_files_shipped_with_pydicom(tmp_path):
    examples = _pydicom_examples()
    axial = read_ct(examples / "98892001" / "CT5N")  # 5 real CT slices (reduced to 16 x 16), 2.5 mm apart
    assert axial.image.shape == (16, 16, 5) and axial.image.min() < -800
    np.testing.assert_allclose(np.linalg.norm(axial.affine[:3, :3], axis=0), [0.488281, 0.488281, 2.5], atol=1e-5)
    # the study folder beside a two-image scout series: the one cross-sectional CT series is read
    np.testing.assert_array_equal(read_ct(examples / "98892001").image, axial.image)
    _refusal(examples / "98892001" / "CT2N", "a localizer \\(scout\\) image is mixed in")
    _refusal(examples / "TINY_ALPHA", "has no ImagePositionPatient; expected the geometry of every slice")
    _refusal(examples, "14 DICOM series in this folder: series 1 'Cervical LAT' \\(CR, 1 files")
    if Path(DCM2NIIX).is_file():
        subprocess.run([DCM2NIIX, "-z", "y", "-f", "conv", "-o", str(tmp_path), str(examples / "98892001" / "CT5N")],
                       check=True, capture_output=True)
        converted = nib.load(tmp_path / "conv.nii.gz")
        np.testing.assert_array_equal(np.asarray(converted.dataobj), axial.image)
        np.testing.assert_allclose(converted.affine, axial.affine, atol=1e-4)


def test_dicom_seg_refers_to_the_source_slices_and_reads_back_onto_them(tmp_path, capsys):
    import highdicom as hd
    import pydicom

    ct, seg, affine = synthetic_scan(flip=True)
    files = write_series(tmp_path / "dicom", ct, affine, intercept=-1024.0)
    labels = save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    out = tmp_path / "vertebrae_seg.dcm"
    assert main(["predict", "--ct", str(tmp_path / "dicom"), "--seg", str(labels), "--out", str(tmp_path / "g.csv"),
                 "--dicom-seg", str(out)]) == 0
    table = pd.read_csv(tmp_path / "g.csv")
    segmentation = hd.seg.segread(out)
    names = [segmentation.get_segment_description(n).SegmentLabel for n in segmentation.segment_numbers]
    assert names == [f"{level} grade {grade} ({['normal', 'mild', 'moderate', 'severe'][grade]})"
                     for level, grade in zip(table["level"], table["pred"])]
    assert str(segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID) == str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    # each source slice: the segment of L1 is where the label map has L1 on that slice
    by_uid = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in files}
    uids = list(by_uid)
    masks = segmentation.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[2],
                                                       ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    expected = (write_series(tmp_path / "labels-as-dicom", (seg == 20) * 1000, affine, shuffle=False))
    for uid, mask in zip(uids, masks[..., 0]):
        source = pydicom.dcmread(by_uid[uid])
        twin = next(p for p in expected if np.allclose([float(v) for v in pydicom.dcmread(p).ImagePositionPatient],
                                                       [float(v) for v in source.ImagePositionPatient]))
        np.testing.assert_array_equal(mask > 0, pydicom.dcmread(twin).pixel_array > 0)
    assert (masks[..., 0] > 0).sum() == (seg == 20).sum()


def test_dicom_seg_needs_a_dicom_series_and_stays_out_of_it(tmp_path, capsys):
    ct, seg, affine = synthetic_scan()
    nifti, labels = save_nifti(tmp_path / "ct.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    assert main(["predict", "--ct", str(nifti), "--seg", str(labels), "--dicom-seg", str(tmp_path / "s.dcm")]) == 2
    assert "is not a DICOM series folder" in capsys.readouterr().err
    write_series(tmp_path / "dicom", ct, affine)
    inside = tmp_path / "dicom" / "seg.dcm"
    assert main(["predict", "--ct", str(tmp_path / "dicom"), "--seg", str(labels), "--dicom-seg", str(inside)]) == 2
    assert "lies inside the input --ct" in capsys.readouterr().err and not inside.exists()


def test_dicom_seg_of_a_series_without_patient_attributes_is_a_clear_error(tmp_path, capsys):
    import pydicom

    ct, seg, affine = synthetic_scan()
    for path in write_series(tmp_path / "dicom", ct, affine):
        ds = pydicom.dcmread(path)
        del ds.PatientBirthDate
        ds.save_as(path)
    labels = save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    out = tmp_path / "s.dcm"
    assert main(["predict", "--ct", str(tmp_path / "dicom"), "--seg", str(labels), "--dicom-seg", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write a DICOM segmentation" in err and "PatientBirthDate" in err and "Traceback" not in err
    assert not out.exists()


def test_a_dicom_series_with_its_totalsegmentator_map_grades_as_the_verse_nifti_twin(tmp_path, checkpoint):
    """The route of a user's own CT: the scanner's series, TotalSegmentator's `total` map on dcm2niix's grid."""
    ct, seg, affine = synthetic_scan(labels=(26, 21, 20, 19))  # sacrum, L2, L1, T12 from the bottom up
    nifti, verse_map = save_nifti(tmp_path / "ct.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    write_series(tmp_path / "dicom", ct, affine, intercept=-1024.0)
    grid = read_ct(tmp_path / "dicom")
    total = np.zeros(grid.image.shape, np.uint8)
    on_grid = onto_grid(seg, affine, grid.image.shape, grid.affine)
    for verse, totalseg in ((19, 32), (20, 31), (21, 30), (26, 26)):  # T12, L1, L2, S1 in TotalSegmentator v2
        total[on_grid == verse] = totalseg
    total[:4, :4, :20] = 5  # an organ (the liver's ID) at the edge of the field of view
    total_map = save_nifti(tmp_path / "ct_total.nii.gz", total, grid.affine)
    common = ["--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main(["predict", "--ct", str(nifti), "--seg", str(verse_map), "--out", str(tmp_path / "a.csv"), *common]) == 0
    assert main(["predict", "--ct", str(tmp_path / "dicom"), "--seg", str(total_map), "--out", str(tmp_path / "b.csv"),
                 "--dicom-seg", str(tmp_path / "seg.dcm"), "--label-map", str(tmp_path / "grades.nii.gz"),
                 "--report", str(tmp_path / "r.html"), *common]) == 0
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert list(a["level"]) == list(b["level"]) == ["T12", "L1", "L2"]
    numbers = [c for c in a.select_dtypes("number").columns if c != "label"]
    pd.testing.assert_frame_equal(a[numbers], b[numbers], atol=1e-6)
    grades = nib.load(tmp_path / "grades.nii.gz")
    np.testing.assert_allclose(grades.affine, grid.affine, atol=1e-6)  # the output lies on the series' grid
    assert (tmp_path / "seg.dcm").is_file() and "T12" in (tmp_path / "r.html").read_text()
