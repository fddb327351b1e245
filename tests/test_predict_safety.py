"""What vfnb predict refuses and says before a user reads a network's grades (vfnb.inference.safety)."""

import copy
import json

import numpy as np
import pytest
import torch

from test_predict import synthetic_scan
from vfnb.cli import main
from vfnb.data.resample import sample_in_world
from vfnb.errors import CheckpointError, ParamsError
from vfnb.evaluate.operating_points import OperatingPoint
from vfnb.inference.grading import predict_scan
from vfnb.io import save_nifti
from vfnb.models.checkpoints import load_checkpoint, save_checkpoint
from vfnb.models.networks import ModelInput, build_model

RUN = "fedcba9876543210fedcba9876543210"
SYNTHETIC = {"dataset": "my-spines", "synthetic": True, "generator": "SynthSpine 2", "tag": "f0", "vertebrae": 40,
             "grade_counts": {"0": 30, "1": 10, "2": 0, "3": 0}, "source_spacing_mm": {"smallest": [0.9, 1.1],
                                                                                       "largest": [1.4, 1.6]}}


def _net(grades=4):
    torch.manual_seed(0)
    net = build_model("resnet10", block_inplanes=[4, 8, 8, 8], num_grades=grades)
    net.input_spec = ModelInput(cube_size=16, patch_size=24)
    return net


def _save(path, mode="ce", grades=4, **extra):
    return save_checkpoint(path, copy.deepcopy(_net(grades)), params={"cube_size": 16, "mode": mode,
                                                                      "dataset": "data/mine/processed"}, **extra)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    ct, seg, affine = synthetic_scan()
    return save_nifti(root / "ct.nii.gz", ct, affine), save_nifti(root / "seg.nii.gz", seg, affine)


def _predict(scan, checkpoint, *more):
    return main(["predict", "--ct", str(scan[0]), "--seg", str(scan[1]), "--checkpoint", str(checkpoint),
                 "--device", "cpu", *more])


def test_a_supcon_pretraining_checkpoint_is_refused_naming_one_that_grades(tmp_path, scan, capsys):
    runs = tmp_path / "runs"
    pre = _save((runs / "supcon").mkdir(parents=True) or runs / "supcon" / "best.pt", mode="supcon")
    _save((runs / "supcon_linear").mkdir() or runs / "supcon_linear" / "best.pt", mode="linear")
    assert _predict(scan, pre, "--out", str(tmp_path / "t.csv")) == 2
    err = capsys.readouterr().err
    assert "'params.mode' is 'supcon'" in err and "never" in err and "supcon_linear/best.pt" in err
    assert "Traceback" not in err and not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("grades", [2, 6])
def test_a_head_with_other_than_four_grades_is_refused_at_load(tmp_path, grades):
    path = _save(tmp_path / "m.pt", grades=grades)
    with pytest.raises(CheckpointError, match=f"gives {grades} grades; expected 4"):
        load_checkpoint(path)


@pytest.mark.parametrize("field,value", [("threshold", float("nan")), ("threshold", -1.0), ("threshold", True),
                                         ("val_specificity", 5.0), ("val_sensitivity", -3.0)])
def test_operating_points_out_of_range_are_refused(field, value):
    point = {"threshold": 0.5, "val_specificity": 0.99, "val_sensitivity": 0.8, field: value}
    with pytest.raises(ParamsError, match=f"'{field}'"):
        OperatingPoint.from_dict(point, "ops.json: model 'ce'")


def _points(tmp_path, run_id):
    path = tmp_path / "operating_points.json"
    path.write_text(json.dumps({"ce": {"threshold": 0.5, "target_specificity": 0.99, "val_specificity": 0.99,
                                       "val_sensitivity": 0.8, "run_id": run_id}}))
    return path


def test_an_operating_point_of_another_run_is_refused_or_stated(tmp_path, scan, capsys):
    ckpt = _save(tmp_path / "m.pt", run_id=RUN, training_data=SYNTHETIC)
    foreign = _points(tmp_path, "0" * 32)
    assert _predict(scan, ckpt, "--out", str(tmp_path / "t.csv"), "--operating-points", str(foreign)) == 2
    err = capsys.readouterr().err
    assert "field 'run_id'" in err and RUN in err and "--accept-foreign-operating-points" in err
    assert not (tmp_path / "t.csv").exists()
    report = tmp_path / "r.html"
    assert _predict(scan, ckpt, "--out", str(tmp_path / "t.csv"), "--operating-points", str(foreign),
                    "--accept-foreign-operating-points", "--report", str(report)) == 0
    table = (tmp_path / "t.csv").read_text()
    assert "was not chosen for this checkpoint" in table
    assert "NOT validated for this model" in report.read_text()
    # the checkpoint's own point is used as validated
    own = _points(tmp_path, RUN)
    assert _predict(scan, ckpt, "--out", str(tmp_path / "own.csv"), "--operating-points", str(own)) == 0
    assert "was not chosen" not in (tmp_path / "own.csv").read_text()


def test_synthetic_training_and_absent_grades_are_said_whatever_the_dataset_is_called(tmp_path, scan, capsys):
    """The notice comes from what the checkpoint records, not from a path containing 'synthspine'."""
    ckpt = _save(tmp_path / "m.pt", run_id=RUN, training_data=SYNTHETIC)
    report = tmp_path / "r.html"
    assert _predict(scan, ckpt, "--out", str(tmp_path / "t.csv"), "--report", str(report)) == 0
    err = capsys.readouterr().err
    assert "SYNTHETIC TRAINING DATA" in err and "grades 2, 3 absent from the training list" in err
    table = predict_scan(*scan, ckpt, device="cpu")
    assert table["model_notes"].str.contains("SYNTHETIC TRAINING DATA").all()
    # the scan's voxels (1 x 1 x 1.5 mm) lie inside the recorded range: no voxel warning
    assert not table["warnings"].str.contains("voxel size").any()
    page = report.read_text()
    assert page.index("SYNTHETIC TRAINING DATA") < page.index("<h1>")


def test_a_voxel_size_outside_training_is_warned_per_vertebra(tmp_path, scan):
    data = {**SYNTHETIC, "synthetic": False, "source_spacing_mm": {"smallest": [0.5, 0.6], "largest": [0.5, 0.6]}}
    ckpt = _save(tmp_path / "m.pt", run_id=RUN, training_data=data)
    table = predict_scan(*scan, ckpt, device="cpu")
    assert table["warnings"].str.contains("outside the training scans' 0.50-0.60 mm").all()
    assert not table["model_notes"].str.contains("SYNTHETIC").any()


def test_a_checkpoint_without_a_record_says_training_data_unknown(tmp_path, scan, capsys):
    ckpt = _save(tmp_path / "m.pt")
    assert _predict(scan, ckpt, "--out", str(tmp_path / "t.csv")) == 0
    assert "training data unknown" in capsys.readouterr().err


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nearest_neighbour_ties_do_not_depend_on_storage_order(axis):
    """Patch voxel centres exactly on the faces between source voxels: the same mask from RAS and LPS storage."""
    rng = np.random.default_rng(axis)
    mask = (rng.random((6, 6, 6)) > 0.5).astype(np.uint8)
    ras = np.eye(4)
    flipped = np.eye(4)
    flipped[axis, axis], flipped[axis, 3] = -1.0, 5.0  # the same world voxels, stored in reverse along axis
    stored = np.flip(mask, axis=axis).copy()
    patch = np.diag([0.5, 0.5, 0.5, 1.0])
    # centres at 0, 0.5, 1, ... mm: every other one exactly on the face between two source voxels
    a, _ = sample_in_world(mask, ras, patch, (10, 10, 10), order=0, fill=0, out_dtype=np.uint8)
    b, _ = sample_in_world(stored, flipped, patch, (10, 10, 10), order=0, fill=0, out_dtype=np.uint8)
    np.testing.assert_array_equal(a, b)


def test_a_mask_given_as_the_ct_is_refused(tmp_path, capsys):
    ct, seg, affine = synthetic_scan()
    mask = save_nifti(tmp_path / "mask.nii.gz", (seg > 0).astype(np.uint8), affine)
    assert _predict((mask, save_nifti(tmp_path / "seg.nii.gz", seg, affine)), _save(tmp_path / "m.pt")) == 2
    err = capsys.readouterr().err
    assert "mask.nii.gz: not a CT in Hounsfield units" in err and "Traceback" not in err


def test_a_label_over_half_the_scan_is_refused(tmp_path, capsys):
    ct, seg, affine = synthetic_scan()
    seg = np.where(seg == 0, 20, seg).astype(np.uint8)  # background stored as L1
    labels = save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    assert _predict((save_nifti(tmp_path / "ct.nii.gz", ct, affine), labels), _save(tmp_path / "m.pt")) == 2
    err = capsys.readouterr().err
    assert "seg.nii.gz: not a vertebra label map" in err and "L1 covers" in err and "Traceback" not in err


@pytest.mark.parametrize("edit,message", [
    ({"layers": [2000] * 4}, "more than 256 residual blocks"),
    ({"block_inplanes": [512, 1024, 2048, 4096]}, "describes a network of"),
])
def test_edited_model_args_are_refused_before_the_network_is_built(tmp_path, edit, message):
    path = _save(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_args"].update(edit)
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "edited.pt")


def test_an_input_cube_size_that_disagrees_with_training_is_refused(tmp_path):
    path = _save(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["input"]["cube_size"] = 24  # trained at 16 (params.cube_size)
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="'input.cube_size' is 24 but the model was trained at params.cube_size 16"):
        load_checkpoint(tmp_path / "edited.pt")
