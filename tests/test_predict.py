"""Inference on written NIfTI patches and scans."""

import copy
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from vfnb.cli import main
from vfnb.data.channels import crop_or_pad_to_cube, make_input_channels
from vfnb.data.preprocess import extract_patches
from vfnb.errors import DatasetError, VfnbError
from vfnb.io import load_nifti, save_nifti
from vfnb.models.networks import ModelInput, build_model
from vfnb.models.checkpoints import load_checkpoint, save_checkpoint
from vfnb.inference.grading import predict_patches, predict_scan

COLUMNS = ["name", "image_id", "label", "level", "grade", "pred", "p0", "p1", "p2", "p3", "fracture_prob"]
SCAN_COLUMNS = ["model_notes", "label", "level", "grader", "pred", "p0", "p1", "p2", "p3", "fracture_prob",
                "anterior_height_mm", "middle_height_mm", "posterior_height_mm", "anterior_ratio", "middle_ratio",
                "posterior_ratio", "height_loss", "borderline", "assessable", "warnings"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = build_model("resnet10", block_inplanes=[4, 8, 8, 16])
    # a random classifier gives near-uniform probabilities: make the grades differ
    with torch.no_grad():
        net.classifier.weight.mul_(50.0)
    return net.eval()


def write_patch(root, name, image, mask):
    affine = np.diag([0.8, 0.8, 0.8, 1.0])
    save_nifti(root / "img" / name, image.astype(np.int16), affine)
    save_nifti(root / "seg" / name, mask.astype(np.uint8), affine)
    image_id, label, grade = name[: -len(".nii.gz")].rsplit("_", 2)
    return {"image": str(root / "img" / name), "seg": str(root / "seg" / name), "image_id": image_id,
            "label": int(label), "grade": int(grade), "name": name}


def test_predict_patches_matches_the_model(tmp_path, model):
    rng = np.random.default_rng(0)
    records = []
    for name, shape in [("case_a_20_0.nii.gz", (16, 16, 12)), ("case_a_21_2.nii.gz", (16, 16, 20)),
                        ("case_b_8_3.nii.gz", (16, 16, 16))]:
        image = rng.integers(-200, 1200, size=shape)
        mask = np.zeros(shape, np.uint8)
        mask[4:12, 4:12, 3:-3] = 1
        records.append(write_patch(tmp_path, name, image, mask))
    model.train()
    table, embeddings = predict_patches(model, records, cube_size=16, batch_size=2, device="cpu")
    assert model.training  # mode restored
    model.eval()
    assert list(table.columns) == COLUMNS
    assert table["name"].tolist() == [r["name"] for r in records]
    assert table["image_id"].tolist() == ["case_a", "case_a", "case_b"]
    assert table["level"].tolist() == ["L1", "L2", "T1"] and table["grade"].tolist() == [0, 2, 3]

    # the same numbers by hand: channels, centred cube, softmax of the classifier on the pooled feature
    x = []
    for r in records:
        hu, _, _ = load_nifti(r["image"])
        mask, _, _ = load_nifti(r["seg"])
        x.append(crop_or_pad_to_cube(make_input_channels(hu, mask, r["label"]), 16))
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(np.stack(x)))
        feature = model.embed(torch.from_numpy(np.stack(x)))
    probs = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(table[["p0", "p1", "p2", "p3"]].to_numpy(), probs, atol=1e-5)
    np.testing.assert_allclose(table["fracture_prob"], 1 - probs[:, 0], atol=1e-5)
    assert table["pred"].tolist() == probs.argmax(1).tolist()
    np.testing.assert_allclose(embeddings, feature.numpy(), atol=1e-5)
    assert embeddings.shape == (3, model.num_features)


def test_predict_patches_empty_and_bad_records(model, tmp_path):
    table, embeddings = predict_patches(model, [], cube_size=16, device="cpu")
    assert list(table.columns) == COLUMNS and len(table) == 0 and embeddings.shape == (0, model.num_features)
    with pytest.raises(DatasetError, match="seg"):
        predict_patches(model, [{"image": str(tmp_path / "x.nii.gz"), "label": 20}], cube_size=16, device="cpu")


# ------------------------------------------------------------------ scans
def synthetic_scan(labels=(19, 20, 21, 26), flip=False):
    """A small spine-like scan: boxes of bone (300 HU) stacked along the slice axis, 1 x 1 x 1.5 mm."""
    shape = (36, 36, 16 * len(labels))
    ct = np.full(shape, -80, np.int16)
    seg = np.zeros(shape, np.uint8)
    rng = np.random.default_rng(1)
    for i, label in enumerate(labels):
        z0 = 16 * i + 2
        height = 12 - 2 * (label == 20)  # a flattened "L1"
        ct[10:26, 8:28, z0:z0 + height] = 300 + rng.integers(-30, 30, size=(16, 20, height))
        seg[10:26, 8:28, z0:z0 + height] = label
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [-18.0, -20.0, 100.0]
    if flip:  # the same world data stored LPS-style: first two axes reversed
        ct, seg = ct[::-1, ::-1].copy(), seg[::-1, ::-1].copy()
        flipped = np.diag([-1.0, -1.0, 1.5, 1.0])
        flipped[:3, 3] = affine[:3, 3] + [35.0, 35.0, 0.0]
        affine = flipped
    return ct, seg, affine


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """The model as training saves it: trained on patches pre-processed at 24, resized to 16^3 cubes."""
    trained = copy.deepcopy(model)
    trained.input_spec = ModelInput(cube_size=16, patch_size=24)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", trained, params={"cube_size": 16})


def write_scan(folder, flip=False, labels=(19, 20, 21, 26)):
    ct, seg, affine = synthetic_scan(labels, flip)
    return (save_nifti(folder / "scan_ct.nii.gz", ct, affine), save_nifti(folder / "scan_seg.nii.gz", seg, affine))


def test_predict_scan_rows_and_orientation_invariance(tmp_path, checkpoint):
    (tmp_path / "ras").mkdir()
    (tmp_path / "lps").mkdir()
    ras = predict_scan(*write_scan(tmp_path / "ras"), checkpoint, device="cpu")
    assert list(ras.columns) == SCAN_COLUMNS
    assert ras["label"].tolist() == [19, 20, 21]  # the sacrum (26) is never graded
    assert ras["level"].tolist() == ["T12", "L1", "L2"]
    probs = ras[["p0", "p1", "p2", "p3"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ras["fracture_prob"], 1 - ras["p0"], atol=1e-9)
    assert (ras["pred"] == probs.argmax(1)).all()
    # the flattened L1 looks different from its neighbours
    assert not np.allclose(probs[1], probs[0], atol=1e-4)

    lps = predict_scan(*write_scan(tmp_path / "lps", flip=True), checkpoint, device="cpu")
    np.testing.assert_allclose(lps[["p0", "p1", "p2", "p3"]].to_numpy(), probs, atol=1e-4)


def test_a_scan_is_graded_as_the_training_patches_were_made(tmp_path, checkpoint):
    """predict_scan = pre-processing at the checkpoint's patch size, written as a processed dataset, graded."""
    ct, seg = write_scan(tmp_path)
    table = predict_scan(ct, seg, checkpoint, device="cpu")
    records = []
    for patch in extract_patches(ct, seg, size=24, labels=[19, 20, 21]):
        assert patch.image.shape[:2] == (24, 24)
        name = f"scan_{patch.label}_0.nii.gz"
        records.append({"image": str(save_nifti(tmp_path / "img" / name, patch.image, patch.affine)),
                        "seg": str(save_nifti(tmp_path / "seg" / name, patch.mask, patch.affine)),
                        "label": patch.label, "name": name})
    expected, _ = predict_patches(load_checkpoint(checkpoint), records, device="cpu")
    np.testing.assert_array_equal(table[["p0", "p1", "p2", "p3"]].to_numpy(),
                                  expected[["p0", "p1", "p2", "p3"]].to_numpy())
    # at another patch size the same scan gives other numbers: the size is really taken from the checkpoint
    other = load_checkpoint(checkpoint)
    other.input_spec = ModelInput(cube_size=16, patch_size=16)
    moved = predict_scan(ct, seg, other, device="cpu")
    assert not np.allclose(moved[["p0", "p1", "p2", "p3"]].to_numpy(), table[["p0", "p1", "p2", "p3"]].to_numpy())


def test_a_model_is_run_at_its_own_cube_size(tmp_path, checkpoint, model, caplog):
    rng = np.random.default_rng(3)
    mask = np.zeros((20, 20, 14), np.uint8)
    mask[5:15, 5:15, 3:11] = 1
    records = [write_patch(tmp_path, "case_c_20_1.nii.gz", rng.integers(-200, 1200, size=mask.shape), mask)]
    loaded = load_checkpoint(checkpoint)
    own, _ = predict_patches(loaded, records, device="cpu")
    with caplog.at_level(logging.WARNING, logger="vfnb.inference.grading"):
        asked, _ = predict_patches(loaded, records, cube_size=24, device="cpu")
    assert "16^3 cubes" in caplog.text and "cube_size 24" in caplog.text
    pd.testing.assert_frame_equal(own, asked)
    # a network fresh from build_model carries no size: the caller must give one
    with pytest.raises(VfnbError, match="carries no input size"):
        predict_patches(model, records, device="cpu")
    with pytest.raises(VfnbError, match="carries no input size"):
        predict_scan(*write_scan(tmp_path), model, device="cpu")


def test_scan_without_vertebrae_is_refused(tmp_path, checkpoint):
    # coccyx lowest, sacrum above it: VerSe order (26 above 27 the other way up reads as TotalSegmentator L5, S1)
    ct, seg = write_scan(tmp_path, labels=(27, 26))
    with pytest.raises(DatasetError, match=r"scan_seg\.nii\.gz: the label map holds no vertebra"):
        predict_scan(ct, seg, checkpoint, device="cpu")


def test_mismatched_scan_and_label_map_are_refused(tmp_path, checkpoint):
    ct, seg, affine = synthetic_scan()
    ct_path = save_nifti(tmp_path / "ct.nii.gz", ct, affine)
    short = save_nifti(tmp_path / "short_seg.nii.gz", seg[:, :, :-4], affine)
    with pytest.raises(DatasetError, match=r"short_seg\.nii\.gz.*shape.*ct\.nii\.gz"):
        predict_scan(ct_path, short, checkpoint, device="cpu")
    moved = affine.copy()
    moved[2, 3] += 5.0
    shifted = save_nifti(tmp_path / "shifted_seg.nii.gz", seg, moved)
    with pytest.raises(DatasetError, match=r"shifted_seg\.nii\.gz.*affine.*ct\.nii\.gz"):
        predict_scan(ct_path, shifted, checkpoint, device="cpu")


def test_cli_writes_csv_and_refuses_to_overwrite(tmp_path, checkpoint, capsys):
    ct, seg = write_scan(tmp_path)
    out = tmp_path / "grades.csv"
    argv = ["predict", "--ct", str(ct), "--seg", str(seg), "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main(argv + ["--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table["level"].tolist() == ["T12", "L1", "L2"] and list(table.columns) == SCAN_COLUMNS
    assert main(argv + ["--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == ",".join(SCAN_COLUMNS) and len(printed.splitlines()) == 4
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 10)
    assert main(["predict", "--ct", str(ct), "--seg", str(seg), "--checkpoint", str(bad)]) == 2
    assert "bad.pt: cannot read checkpoint" in capsys.readouterr().err
