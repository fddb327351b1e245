"""Whole-scan inputs for the inference and pre-processing benchmarks.

``realistic_scan`` uses :func:`benchmarks.preprocess_one_scan.build_scan` (512 x 512 x 300
int16 voxels, 0.8 x 0.8 x 1.0 mm, 12 vertebrae T6-L5, an LPS-like header);
``small_scan`` is a tiny stand-in for ``--quick`` (box vertebrae, 48 x 48 x 60).
Both write the original layout: ``root/img/<case>.nii.gz``, ``root/seg/<case>.nii.gz``,
``root/annotation.yaml``; they return ``(ct_path, seg_path, number of vertebrae)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def realistic_scan(root: Path) -> tuple[Path, Path, int]:
    from . import preprocess_one_scan as one

    if not (root / "img" / "bench.nii.gz").is_file():
        one.build_scan(root, oblique=False)
    return root / "img" / "bench.nii.gz", root / "seg" / "bench.nii.gz", len(one.LABELS)


def small_scan(root: Path) -> tuple[Path, Path, int]:
    from vfnb.data.original import write_annotation
    from vfnb.io import save_nifti

    labels = (20, 21, 22)  # L1-L3, stacked caudal-lowest along axis 2
    ct = np.full((48, 48, 60), 40, dtype=np.int16)
    seg = np.zeros(ct.shape, dtype=np.uint8)
    for n, label in enumerate(sorted(labels, reverse=True)):
        z0 = 4 + 18 * n
        ct[14:34, 16:32, z0:z0 + 14] = 700
        seg[14:34, 16:32, z0:z0 + 14] = label
    affine = np.diag([0.8, 0.8, 1.0, 1.0])
    ct_path = save_nifti(root / "img" / "small.nii.gz", ct, affine)
    seg_path = save_nifti(root / "seg" / "small.nii.gz", seg, affine)
    write_annotation(root / "annotation.yaml", {"small.nii.gz": {label: 0 for label in labels}})
    return ct_path, seg_path, len(labels)


#: The whole-spine scan of the ``predict`` benchmark: 512 x 512 x 400 voxels, 17 vertebrae T1-L5.
SPINE17_SHAPE = (512, 512, 400)


def spine17_config():
    """SynthSpine set to a clinical-size thoracolumbar CT: T1-L5 (17 vertebrae, no T13 or L6),
    0.78 mm in-plane and 1.125 mm slices over a 400 mm field of view, stored LPS-like."""
    from vfnb.data.synth.config import SynthConfig

    return SynthConfig(min_vertebrae=17, max_vertebrae=17, first_level="T1", last_level="L5", p_t13=0.0, p_l6=0.0,
                       inplane_spacing=(0.78, 0.78), slice_spacings=(1.125,), max_voxels=300_000_000,
                       orientation_probs=(0.0, 1.0, 0.0, 0.0), fov_lateral_mm=199.0, fov_anterior_mm=180.0,
                       fov_posterior_mm=181.0)


def fit_to_shape(image: np.ndarray, seg: np.ndarray, affine: np.ndarray, shape) -> tuple:
    """Centre-crop or pad ``image`` / ``seg`` to ``shape``, the affine moved so every voxel keeps its world point.

    The CT is padded with its own edge values (no HU step at the seam), the label map with 0.
    """
    lo = [(have - want) // 2 for have, want in zip(image.shape, shape)]  # > 0: crop, < 0: pad
    crop = tuple(slice(max(0, l), max(0, l) + min(have, want)) for l, have, want in zip(lo, image.shape, shape))
    image, seg = image[crop], seg[crop]
    pad = [(max(0, -l), want - have - max(0, -l)) for l, have, want in zip(lo, image.shape, shape)]
    image, seg = np.pad(image, pad, mode="edge"), np.pad(seg, pad)
    affine = np.array(affine, dtype=np.float64)
    affine[:3, 3] = affine[:3, :3] @ np.array(lo, dtype=np.float64) + affine[:3, 3]
    return image, seg, affine


def spine17_scan(root: Path) -> tuple[Path, Path, int]:
    """SynthSpine case 0 of :func:`spine17_config`, fitted to :data:`SPINE17_SHAPE`, in the original layout."""
    from vfnb.data.original import write_annotation
    from vfnb.data.synth.scan import generate_case
    from vfnb.io import save_nifti

    ct_path, seg_path = root / "img" / "spine17.nii.gz", root / "seg" / "spine17.nii.gz"
    if not (ct_path.is_file() and seg_path.is_file()):
        case = generate_case(0, seed=0, config=spine17_config())
        image, seg, affine = fit_to_shape(case.image, case.seg, case.affine, SPINE17_SHAPE)
        save_nifti(ct_path, image.astype(np.int16), affine)
        save_nifti(seg_path, seg.astype(np.uint8), affine)
        write_annotation(root / "annotation.yaml", {"spine17.nii.gz": {int(k): int(v) for k, v in case.grades.items()}})
    from vfnb.io import load_nifti

    labels = np.unique(load_nifti(seg_path)[0])
    return ct_path, seg_path, int((labels > 0).sum())
