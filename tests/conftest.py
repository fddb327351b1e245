"""Shared test fixtures: tiny synthetic scans and datasets written as real NIfTI files.

- ``write_box_scan``: a function that writes one CT + vertebra label map in the
  original layout (``<root>/img/<case>.nii.gz``, ``<root>/seg/<case>.nii.gz``) with
  box-shaped vertebral bodies of given VerSe labels at known voxel positions.
- ``tiny_original``: an original-layout dataset (3 scans, ``annotation.yaml``).
- ``tiny_processed``: a processed-layout dataset (10 image ids x 5 vertebrae, all
  four Genant grades, lists ``train/val/test_file_list.t0.yaml`` grouped by image id).

Everything is small so each fixture costs well under a second, but ``smoke_study``: the
smoke study run once per session (minutes; only ``@pytest.mark.slow`` tests use it), its
folder read, never changed, by the tests that check it and the browser pages.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from vfnb.io import atomic_write_yaml, save_nifti
from vfnb.levels import spine_order

# ------------------------------------------------------------------ box scans
BONE_HU = 700  # trabecular + cortical average of the box "vertebral body"
SOFT_TISSUE_HU = 40  # everything else inside the scan


@dataclass
class BoxScan:
    """What ``write_box_scan`` wrote.

    ``boxes[label] = (x0, x1, y0, y1, z0, z1)``: half-open voxel bounds of that
    vertebra's box in the scan array (``[X, Y, Z]``, axis 2 inferior -> superior).
    """

    case_id: str
    ct_path: Path
    seg_path: Path
    affine: np.ndarray
    shape: tuple
    boxes: dict = field(default_factory=dict)


def make_box_scan(labels, shape=(32, 32, 48), body_height=8, gap=2, body_width=(14, 12),
                  heights=None, noise_hu=0.0, seed=0):
    """Arrays for a box-vertebra scan: ``(ct int16 [X,Y,Z] HU, seg uint8 labels, boxes)``.

    Vertebrae are stacked along axis 2 in spine order: the most caudal label
    (e.g. L5) lowest, each ``body_height`` voxels tall (or ``heights[label]``)
    with ``gap`` voxels of disc between. Boxes are centred in-plane,
    ``body_width`` voxels along axes 0 and 1.
    """
    shape = tuple(int(s) for s in shape)
    heights = dict(heights or {})
    ct = np.full(shape, SOFT_TISSUE_HU, dtype=np.float32)
    seg = np.zeros(shape, dtype=np.uint8)
    ordered = sorted(labels, key=spine_order, reverse=True)  # caudal first = lowest z
    x0 = (shape[0] - body_width[0]) // 2
    y0 = (shape[1] - body_width[1]) // 2
    z = gap
    boxes = {}
    for label in ordered:
        h = int(heights.get(label, body_height))
        box = (x0, x0 + body_width[0], y0, y0 + body_width[1], z, z + h)
        if box[5] > shape[2]:
            raise ValueError(f"scan of shape {shape} too short for labels {list(labels)}")
        ct[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = BONE_HU
        seg[box[0]:box[1], box[2]:box[3], box[4]:box[5]] = label
        boxes[int(label)] = box
        z += body_height + gap  # keep positions fixed even when a body is shorter
    if noise_hu:
        ct += np.random.default_rng(seed).normal(0.0, noise_hu, size=shape).astype(np.float32)
    return np.round(ct).astype(np.int16), seg, boxes


@pytest.fixture
def write_box_scan():
    """Return ``write(root, case_id, labels, shape=..., affine=None, spacing=(1,1,1), ...)``.

    Writes ``root/img/<case_id>.nii.gz`` (int16 HU) and ``root/seg/<case_id>.nii.gz``
    (uint8 VerSe labels) with the same affine (default: diagonal ``spacing`` in mm,
    origin 0) and returns a :class:`BoxScan`. Extra keywords go to :func:`make_box_scan`.
    """

    def write(root, case_id, labels=(18, 19, 20), shape=(32, 32, 48), affine=None,
              spacing=(1.0, 1.0, 1.0), **kw) -> BoxScan:
        root = Path(root)
        if affine is None:
            affine = np.diag([float(s) for s in spacing] + [1.0])
        affine = np.asarray(affine, dtype=np.float64)
        ct, seg, boxes = make_box_scan(labels, shape=shape, **kw)
        ct_path = save_nifti(root / "img" / f"{case_id}.nii.gz", ct, affine)
        seg_path = save_nifti(root / "seg" / f"{case_id}.nii.gz", seg, affine)
        return BoxScan(case_id, ct_path, seg_path, affine, tuple(ct.shape), boxes)

    return write


@pytest.fixture
def tiny_original(tmp_path, write_box_scan):
    """An original-layout dataset at ``tmp_path / "original"``.

    Three scans ``scan0``..``scan2`` with labels T11, T12, L1 (18, 19, 20); grades
    in ``annotation.yaml`` (keys are CT file names): scan0 {18: 0, 19: 1, 20: 0},
    scan1 {18: 0, 19: 2, 20: 3}, scan2 {18: 0, 19: 0, 20: 1}. Box heights shrink
    with the grade. The second scan has 0.8 x 0.8 x 1.2 mm voxels.
    """
    root = tmp_path / "original"
    grades = {"scan0": {18: 0, 19: 1, 20: 0}, "scan1": {18: 0, 19: 2, 20: 3}, "scan2": {18: 0, 19: 0, 20: 1}}
    spacings = {"scan0": (1.0, 1.0, 1.0), "scan1": (0.8, 0.8, 1.2), "scan2": (1.0, 1.0, 1.0)}
    for case_id, case_grades in grades.items():
        heights = {label: 8 - 2 * g for label, g in case_grades.items()}
        write_box_scan(root, case_id, labels=tuple(case_grades), spacing=spacings[case_id],
                       heights=heights, noise_hu=10.0, seed=len(case_id))
    atomic_write_yaml(root / "annotation.yaml", {f"{c}.nii.gz": g for c, g in grades.items()})
    return root


# ------------------------------------------------------------------ processed dataset
TINY_TAG = "t0"
TINY_IDS = [f"pt{i:02d}" for i in range(9)] + ["pt_09"]  # one id with an underscore, on purpose
TINY_SPLIT = {"train": TINY_IDS[:6], "val": TINY_IDS[6:8], "test": TINY_IDS[8:]}
TINY_PATCH_SHAPE = (32, 32, 24)


def tiny_patch(grade: int, seed: int, shape=TINY_PATCH_SHAPE):
    """``(image int16 [32,32,24] HU, mask uint8 binary)``: a bright box whose height
    along axis 2 shrinks with the Genant grade (16, 13, 10, 7 voxels)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(SOFT_TISSUE_HU, 20.0, size=shape)
    mask = np.zeros(shape, dtype=np.uint8)
    height = 16 - 3 * int(grade)
    z0 = (shape[2] - height) // 2
    mask[9:23, 10:22, z0:z0 + height] = 1
    image[mask > 0] = BONE_HU + rng.normal(0.0, 30.0, size=int(mask.sum()))
    return np.round(image).astype(np.int16), mask


def _build_tiny_processed(root: Path) -> Path:
    from vfnb.data.processed import patch_filename

    names_by_id = {}
    for i, image_id in enumerate(TINY_IDS):
        first_label = 16 + i % 3  # T9..T11 as the most cranial level
        affine = np.diag([0.9, 0.9, 0.9, 1.0])
        affine[:3, 3] = (-20.0 * i, 10.0, 5.0 * i)
        names = []
        for j in range(5):
            label, grade = first_label + j, (i + j) % 4  # every id carries all four grades
            name = patch_filename(image_id, label, grade)
            image, mask = tiny_patch(grade, seed=100 * i + j)
            save_nifti(root / "img" / name, image, affine)
            save_nifti(root / "seg" / name, mask, affine)
            names.append(name)
        names_by_id[image_id] = names
    for split, ids in TINY_SPLIT.items():
        listed = [n for image_id in ids for n in names_by_id[image_id]]
        atomic_write_yaml(root / f"{split}_file_list.{TINY_TAG}.yaml", listed)
    return root


@pytest.fixture(scope="session")
def _tiny_processed_template(tmp_path_factory):
    return _build_tiny_processed(tmp_path_factory.mktemp("tiny_processed_template") / "processed")


@pytest.fixture
def tiny_processed(tmp_path, _tiny_processed_template):
    """A processed-layout dataset at ``tmp_path / "processed"`` (a private copy).

    10 image ids (``pt00``..``pt08`` and ``pt_09``, which holds an underscore) x 5
    vertebrae = 50 patches ``[32, 32, 24]`` int16 with binary masks, 0.9 mm voxels.
    Grade of vertebra j of id i: ``(i + j) % 4`` (12-13 per grade, all four in every
    id). Tag ``t0``: train = pt00..pt05, val = pt06, pt07, test = pt08, pt_09.
    """
    root = tmp_path / "processed"
    shutil.copytree(_tiny_processed_template, root)
    return root


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for a child Python started by a test: this checkout importable first (then any
    PYTHONPATH already set, e.g. packages installed beside site-packages), one OpenMP thread."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory) -> Path:
    """One ``data_dir`` for the smoke studies of the session: SynthSpine generated by the first, reused by the rest
    (the study reuses a complete dataset it finds there, as it does for a user)."""
    return tmp_path_factory.mktemp("smoke-data")


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory, smoke_data_dir) -> Path:
    """The run folder of one smoke study (``params/smoke.yaml``) at ``<tmp>/results/smoke``, shared by the session.

    Tests read it and must not change it.
    """
    from vfnb.study import run_study

    out = tmp_path_factory.mktemp("smoke-study") / "results" / "smoke"
    run_study([Path(__file__).resolve().parents[1] / "params" / "smoke.yaml"], [f"data_dir={smoke_data_dir}"], out,
              progress=False)
    return out
