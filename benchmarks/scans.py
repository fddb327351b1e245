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
