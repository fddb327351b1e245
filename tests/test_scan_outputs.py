"""`vfnb predict --saliency DIR --report HTML`: the maps' geometry and the page's contents, in two orientations."""

import copy
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from test_predict import synthetic_scan
from vfnb.cli import main
from vfnb.io import save_nifti
from vfnb.models.networks import ModelInput, build_model
from vfnb.models.checkpoints import save_checkpoint


RUN_ID = "0123456789abcdef0123456789abcdef"  # the training run the checkpoint and its points come from


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small network at a 32 cube (Grad-CAM needs the last block wider than one voxel), 'trained on SynthSpine'."""
    torch.manual_seed(0)
    net = build_model("resnet10", block_inplanes=[4, 8, 8, 16])
    net.input_spec = ModelInput(cube_size=32, patch_size=32)
    params = {"cube_size": 32, "dataset": "data/synthspine-s0-n64/processed-64", "tag": "synth-f0", "mode": "ce"}
    trained_on = {"dataset": "synthspine-s0-n64", "synthetic": True, "generator": "SynthSpine 2", "tag": "synth-f0",
                  "vertebrae": 40, "grade_counts": {"0": 30, "1": 4, "2": 3, "3": 3}}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", copy.deepcopy(net), params=params,
                           run_id=RUN_ID, training_data=trained_on)


@pytest.fixture(scope="module")
def operating_points(tmp_path_factory):
    path = tmp_path_factory.mktemp("op") / "operating_points.json"
    point = {"threshold": 0.5, "target_specificity": 0.99, "val_specificity": 0.99, "val_sensitivity": 0.8,
             "run_id": RUN_ID}
    path.write_text(json.dumps({"ce": point, "supcon_linear": {**point, "threshold": 0.9}}))
    return path


@pytest.mark.parametrize("flip", [False, True], ids=["ras", "lps"])
def test_saliency_maps_lie_on_their_vertebra_in_the_ct_grid(tmp_path, checkpoint, operating_points, flip):
    ct, seg, affine = synthetic_scan(flip=flip)
    ct_path, seg_path = save_nifti(tmp_path / "scan.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    out = tmp_path / "maps"
    assert main(["predict", "--ct", str(ct_path), "--seg", str(seg_path), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "grades.csv"), "--saliency", str(out), "--report", str(tmp_path / "r.html"),
                 "--operating-points", str(operating_points), "--model", "ce", "--device", "cpu"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["scan_L1_gradcam.nii.gz", "scan_L2_gradcam.nii.gz", "scan_T12_gradcam.nii.gz"]
    for level, label in (("T12", 19), ("L1", 20), ("L2", 21)):
        image = nib.load(out / f"scan_{level}_gradcam.nii.gz")
        heat = np.asarray(image.dataobj)
        assert heat.shape == ct.shape and np.allclose(image.affine, affine)
        assert heat.max() > 0 and heat.min() >= 0
        # the map lives around its own vertebra: none of it further than a vertebra's height away
        zs = np.nonzero(seg == label)[2]
        hot = np.nonzero(heat > 0)[2]
        assert hot.min() >= zs.min() - 16 and hot.max() <= zs.max() + 16


def test_report_says_what_a_reader_needs(tmp_path, checkpoint, operating_points):
    ct, seg, affine = synthetic_scan()
    ct_path, seg_path = save_nifti(tmp_path / "scan.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    report = tmp_path / "scan.html"
    args = ["predict", "--ct", str(ct_path), "--seg", str(seg_path), "--checkpoint", str(checkpoint),
            "--report", str(report), "--operating-points", str(operating_points), "--model", "supcon_linear",
            "--device", "cpu"]
    assert main(args) == 0
    page = report.read_text()
    for text in ("not a medical device", "synthetic data", "synthspine-s0-n64", "T12: grade", "L1: grade",
                 "L2: grade", "threshold 0.900", "posterior height Hp (mm)", "relative height loss",
                 "supcon_linear of", "Grad-CAM"):
        assert text in page, text
    assert "S1" not in re.sub(r"data:image/png;base64,[^'\"]+", "", page)  # the sacrum is not graded
    sources = re.findall(r"src='([^']*)'", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # one self-contained file
    # an existing report is kept unless --overwrite
    assert main(args) != 0
    assert main(args + ["--overwrite"]) == 0


def test_operating_points_need_a_model_when_several(tmp_path, checkpoint, operating_points, capsys):
    ct, seg, affine = synthetic_scan()
    ct_path, seg_path = save_nifti(tmp_path / "scan.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    code = main(["predict", "--ct", str(ct_path), "--seg", str(seg_path), "--checkpoint", str(checkpoint),
                 "--report", str(tmp_path / "r.html"), "--operating-points", str(operating_points)])
    assert code != 0
    err = capsys.readouterr().err
    assert "ce, supcon_linear" in err and "--model" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_folder_of_scans_gives_one_table_with_the_screening_decision(tmp_path, checkpoint, operating_points, capsys):
    """Two scans (one stored LPS) paired by name; the decision at the validated threshold beside the probability."""
    for sub in ("img", "seg"):
        (tmp_path / sub).mkdir()
    for name, flip in (("a", False), ("b", True)):
        ct, seg, affine = synthetic_scan(flip=flip)
        save_nifti(tmp_path / "img" / f"{name}.nii.gz", ct, affine)
        save_nifti(tmp_path / "seg" / f"{name}.nii.gz", seg, affine)
    out = tmp_path / "grades.csv"
    assert main(["predict", "--ct", str(tmp_path / "img"), "--seg", str(tmp_path / "seg"), "--checkpoint",
                 str(checkpoint), "--out", str(out), "--operating-points", str(operating_points), "--model", "ce",
                 "--report", str(tmp_path / "reports"), "--device", "cpu"]) == 0
    import pandas as pd

    table = pd.read_csv(out)
    assert table["scan"].tolist() == ["a"] * 3 + ["b"] * 3
    assert (table["screening_threshold"] == 0.5).all()
    assert (table["screened_fracture"] == (table["fracture_prob"] >= 0.5)).all()
    # the same world data stored two ways grade the same
    assert np.allclose(table.loc[table.scan == "a", "fracture_prob"], table.loc[table.scan == "b", "fracture_prob"],
                       atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["a.html", "b.html", "index.html"]
    err = capsys.readouterr().err
    assert "[1/2] a: 3 vertebrae graded" in err and "[2/2] b: 3 vertebrae graded" in err


def test_a_ct_without_its_label_map_is_named(tmp_path, checkpoint, capsys):
    for sub in ("img", "seg"):
        (tmp_path / sub).mkdir()
    ct, seg, affine = synthetic_scan()
    save_nifti(tmp_path / "img" / "a.nii.gz", ct, affine)
    save_nifti(tmp_path / "img" / "b.nii.gz", ct, affine)
    save_nifti(tmp_path / "seg" / "a.nii.gz", seg, affine)
    assert main(["predict", "--ct", str(tmp_path / "img"), "--seg", str(tmp_path / "seg"),
                 "--checkpoint", str(checkpoint)]) != 0
    err = capsys.readouterr().err
    assert "b.nii.gz" in err and "Traceback" not in err


def test_a_vertebra_cut_by_the_scan_edge_gets_no_map_and_the_others_do(tmp_path, checkpoint):
    ct, seg, affine = synthetic_scan()
    ct, seg = ct[:, :, 6:].copy(), seg[:, :, 6:].copy()  # T12 now starts at the first slice: not assessable
    affine = affine.copy()
    affine[2, 3] += 6 * 1.5
    ct_path, seg_path = save_nifti(tmp_path / "scan.nii.gz", ct, affine), save_nifti(tmp_path / "seg.nii.gz", seg, affine)
    out, grades = tmp_path / "maps", tmp_path / "grades.csv"
    assert main(["predict", "--ct", str(ct_path), "--seg", str(seg_path), "--checkpoint", str(checkpoint),
                 "--out", str(grades), "--saliency", str(out), "--report", str(tmp_path / "r.html"),
                 "--device", "cpu"]) == 0
    table = pd.read_csv(grades).set_index("level")
    assert pd.isna(table.loc["T12", "pred"]) and "not assessable" in table.loc["T12", "warnings"]
    assert sorted(p.name for p in out.iterdir()) == ["scan_L1_gradcam.nii.gz", "scan_L2_gradcam.nii.gz"]
    assert "T12" in (tmp_path / "r.html").read_text()


def test_the_spine_overview_is_as_tall_as_its_panels_need():
    """A long scan gets a tall figure, a short one a low figure: no band of white above the images."""
    from vfnb.inference.report import _overview_height

    long_scan, short_scan = _overview_height(450, 400), _overview_height(60, 400)
    assert long_scan > 9 > 3.5 <= short_scan < 3 * 1.4
    assert _overview_height(5000, 10) == 14.0  # clipped: a page stays readable
