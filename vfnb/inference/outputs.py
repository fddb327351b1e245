"""What ``vfnb predict`` writes beside its table, for one graded scan.

- Saliency maps: the Grad-CAM map of the predicted grade for every graded vertebra
  (:func:`vfnb.inference.saliency.grad_cam`), resampled into the CT's own voxel grid
  (same shape and affine as the CT, 0 away from the vertebra), one NIfTI each, to
  overlay in 3D Slicer or ITK-SNAP.
- The per-scan report (:mod:`vfnb.inference.report`): measured heights
  (:mod:`vfnb.morphometry.heights`), the saliency, the checkpoint's provenance and,
  given a study's ``operating_points.json``, the screening decision at its
  validated threshold.

The command itself (pairs of files, checks, the CSV) is :mod:`vfnb.inference.command`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.transforms import eval_transform
from ..data.resample import voxel_spacing
from ..morphometry.heights import body_heights, with_ratios
from ..errors import VfnbError
from ..evaluate.operating_points import read_operating_points
from ..io import save_nifti
from ..models.networks import unwrap_model
from ..models.checkpoints import load_checkpoint_dict
from .grading import ScanGrading
from .saliency import grad_cam, heat_to_scan
from .report import ScanReport, VertebraView, write_scan_report

#: The fields of an operating point the per-scan report shows, each required as a number.
REPORT_FIELDS = ("threshold", "val_specificity", "val_sensitivity")


def cube_saliency(grading: ScanGrading) -> list[np.ndarray]:
    """Grad-CAM of the predicted grade for every graded vertebra, on the network's cube ``[S, S, S]``."""
    model = unwrap_model(grading.model).cpu()
    transform = eval_transform(model.input_spec.cube_size)
    heats = []
    for record, grade in zip(grading.records, grading.table["pred"]):
        x = torch.as_tensor(transform(dict(record))["image"])[None]
        heats.append(grad_cam(model, x, grade=int(grade))[0])
    return heats


def saliency_paths(grading: ScanGrading, out_dir: Path, scan_name: str) -> list[Path]:
    """``out_dir/<scan>_<level>_gradcam.nii.gz`` for each graded vertebra, in table order."""
    return [Path(out_dir) / f"{scan_name}_{level}_gradcam.nii.gz" for level in grading.table["level"]]


def write_saliency(grading: ScanGrading, heats: Sequence[np.ndarray], paths: Sequence[Path]) -> None:
    """Each cube map resampled into the CT grid and written (float32, the CT's affine)."""
    for patch, heat, path in zip(grading.patches, heats, paths):
        volume = heat_to_scan(heat, patch.affine, patch.image.shape, grading.affine, grading.image.shape)
        save_nifti(path, volume, grading.affine)


def refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """Raise naming the first output that exists, unless ``overwrite``."""
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise VfnbError(f"{path}: file already exists (choose another output, or pass --overwrite)")


def read_operating_point(path: str | Path, model: str | None) -> dict:
    """The operating point of ``model`` in a study's ``operating_points.json`` (the only one when ``model`` is None).

    Read by the study's own reader (:mod:`vfnb.evaluate.operating_points`); the report
    also shows validation specificity and sensitivity, so those are required too.
    """
    points = read_operating_points(path, None if model is None else [model], required=REPORT_FIELDS)
    name, point = next(iter(points.items()))
    return {**point.as_dict(), "model": f"{name} of {path}"}


def provenance(checkpoint: str | Path) -> dict:
    """Checkpoint path and the data it was trained on (``synthetic`` when SynthSpine)."""
    ckpt = load_checkpoint_dict(checkpoint)
    params = ckpt.get("params") if isinstance(ckpt.get("params"), dict) else {}
    dataset = str(params.get("dataset") or "")
    if not dataset:
        return {"checkpoint": str(checkpoint), "trained_on": "data not recorded in the checkpoint (a released "
                                                             "checkpoint: the study's own CTs)", "synthetic": False}
    synthetic = "synthspine" in dataset.lower()
    return {"checkpoint": str(checkpoint), "synthetic": synthetic,
            "trained_on": f"{Path(dataset).parent.name or dataset}, split {params.get('tag', '?')}"
                          + (" (SynthSpine, generated)" if synthetic else "")}


def vertebra_heights(grading: ScanGrading) -> list[dict]:
    """Heights, ratios and height loss of each graded vertebra (neighbours from this scan)."""
    return with_ratios([("scan", p.label, body_heights(p.mask, voxel_spacing(p.affine))) for p in grading.patches])


def write_report(grading: ScanGrading, heats: Sequence[np.ndarray] | None, path: Path, checkpoint,
                 operating_point: Mapping | None, scan_name: str) -> None:
    """Assemble the :class:`ScanReport` of one graded scan and write it."""
    views = []
    for (_, row), patch, heights, heat in zip(grading.table.iterrows(), grading.patches, vertebra_heights(grading),
                                              heats or [None] * len(grading.patches)):
        on_patch = None if heat is None else heat_to_scan(heat, patch.affine, patch.image.shape, patch.affine,
                                                          patch.image.shape)
        views.append(VertebraView(row=row, patch_hu=patch.image, patch_mask=patch.mask, heights=heights,
                                  saliency=on_patch))
    report = ScanReport(scan_name=scan_name, ct_hu=grading.image, label_map=grading.label_map,
                        affine=grading.affine, vertebrae=views, provenance=provenance(checkpoint),
                        operating_point=operating_point)
    write_scan_report(path, report)
