"""What ``vfnb predict`` writes beside its table, for one graded scan.

- Saliency maps: the Grad-CAM map of the predicted grade for every graded vertebra
  (:func:`vfnb.inference.saliency.grad_cam`), resampled into the CT's own voxel grid
  (same shape and affine as the CT, 0 away from the vertebra), one NIfTI each, to
  overlay in 3D Slicer or ITK-SNAP.
- The per-scan report (:mod:`vfnb.inference.report`): the heights of the table
  (measured on the scan's own grid, :mod:`vfnb.morphometry.scan_heights`), the
  saliency, the checkpoint's provenance (what it records of its training data) and,
  given a study's ``operating_points.json``, the screening decision at its
  validated threshold; its first lines are the notes of
  :mod:`vfnb.inference.safety` (synthetic training data, data unknown, grades
  never learnt, a foreign operating point).

The command itself (pairs of files, checks, the CSV) is :mod:`vfnb.inference.command`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.preprocess import extract_patches_from_arrays
from ..data.transforms import eval_transform
from ..morphometry.heights import HEIGHT_NAMES
from ..morphometry.scan_heights import HEIGHT_COLUMNS, RATIO_COLUMNS
from ..errors import VfnbError
from ..evaluate.operating_points import read_operating_points
from ..io import save_nifti
from ..models.networks import unwrap_model
from ..models.checkpoints import load_checkpoint_dict
from .grading import ScanGrading
from .heights_grading import HEIGHTS_GRADER
from .saliency import grad_cam, heat_to_scan
from .report import ScanReport, VertebraView, write_scan_report
from .safety import model_notes

#: The fields of an operating point the per-scan report shows, each required as a number.
REPORT_FIELDS = ("threshold", "val_specificity", "val_sensitivity")
#: Patch edge (voxels) of the vertebra pictures of a report graded without a network (display only).
DISPLAY_PATCH_SIZE = 96


def cube_saliency(grading: ScanGrading) -> list[np.ndarray | None]:
    """Grad-CAM of the predicted grade for every graded vertebra, on the network's cube ``[S, S, S]``.

    A vertebra without a grade (not assessable: cut by the scan's edge) has no
    predicted grade to explain; its entry is ``None``.
    """
    model = unwrap_model(grading.model).cpu()
    transform = eval_transform(model.input_spec.cube_size)
    heats = []
    for record, grade in zip(grading.records, grading.table["pred"]):
        if pd.isna(grade):
            heats.append(None)
            continue
        x = torch.as_tensor(transform(dict(record))["image"])[None]
        heats.append(grad_cam(model, x, grade=int(grade))[0])
    return heats


def saliency_paths(grading: ScanGrading, out_dir: Path, scan_name: str) -> list[Path | None]:
    """``out_dir/<scan>_<level>_gradcam.nii.gz`` for each graded vertebra in table order; ``None`` where ungraded."""
    return [None if pd.isna(pred) else Path(out_dir) / f"{scan_name}_{level}_gradcam.nii.gz"
            for level, pred in zip(grading.table["level"], grading.table["pred"])]


def write_saliency(grading: ScanGrading, heats: Sequence[np.ndarray | None], paths: Sequence[Path | None]) -> None:
    """Each cube map resampled into the CT grid and written (float32, the CT's affine); ungraded ones skipped."""
    for patch, heat, path in zip(grading.patches, heats, paths):
        if heat is None or path is None:
            continue
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
    return {**point.as_dict(), "model": f"{name} of {path}", "name": name}


def provenance(model, checkpoint: str | Path) -> dict:
    """Checkpoint path, the data it was trained on in words, and whether they were synthetic (None: unknown).

    Read from what the checkpoint records (``model.origin.training_data``,
    :mod:`vfnb.training.data_record`), never guessed from a path's name; a
    checkpoint without that record says "training data unknown".
    """
    origin = getattr(model, "origin", None)
    data = None if origin is None else origin.training_data
    if data is None:
        params = {}
        if origin is not None and not origin.released:
            params = load_checkpoint_dict(checkpoint).get("params") or {}
        dataset = params.get("dataset") if isinstance(params, dict) else None
        why = (f"its parameters name the dataset {dataset}, but it does not record what that held" if dataset
               else "a released checkpoint, or one that records none")
        return {"checkpoint": str(checkpoint), "trained_on": f"training data unknown ({why})", "synthetic": None}
    return {"checkpoint": str(checkpoint), "trained_on": describe_training_data(data),
            "synthetic": data.get("synthetic")}


def describe_training_data(data: Mapping) -> str:
    """The ``training_data`` block of a checkpoint in one line."""
    counts = data.get("grade_counts") or {}
    grades = ", ".join(f"grade {g}: {counts.get(str(g), 0)}" for g in range(len(counts) or 4))
    parts = [f"{data.get('dataset', '?')} (split {data.get('tag', '?')}), {data.get('vertebrae', '?')} training "
             f"vertebrae ({grades})"]
    spacing = data.get("source_spacing_mm")
    if spacing:
        parts.append(f"scan voxels {spacing['smallest'][0]:.2f}-{spacing['smallest'][1]:.2f} mm (smallest edge), "
                     f"{spacing['largest'][0]:.2f}-{spacing['largest'][1]:.2f} mm (largest edge)")
    elif data.get("patch_spacing_mm"):
        lo, hi = data["patch_spacing_mm"]
        parts.append(f"patch voxels {lo:.2f}-{hi:.2f} mm (the scans' voxel sizes not recorded)")
    if data.get("vertebra_median_hu"):
        lo, hi = data["vertebra_median_hu"]
        parts.append(f"vertebra median HU {lo:.0f} to {hi:.0f}")
    origin = {True: f"generated by {data.get('generator') or 'a scan generator'} (SynthSpine)",
              False: "acquired scans", None: "real or generated: not recorded"}[data.get("synthetic")]
    return "; ".join(parts + [origin])


def refuse_without_network(saliency_dir, operating_points) -> None:
    """Refuse the outputs only a network gives when ``vfnb predict`` has no checkpoint."""
    if saliency_dir is not None:
        raise VfnbError(f"--saliency {saliency_dir}: saliency maps show where a network looks; without --checkpoint "
                        "the morphometry grader grades from measured heights and has none (give a checkpoint)")
    if operating_points is not None:
        raise VfnbError(f"--operating-points {operating_points}: an operating point is a threshold on a network's "
                        "fracture probability; without --checkpoint the morphometry grader gives no probabilities "
                        "(its fracture decision is grade >= 1)")


def vertebra_heights(grading: ScanGrading) -> list[dict]:
    """Heights (mm on the scan's own grid), ratios, loss and flags of each row of the table, in order."""
    keys = {**{column: name for column, name in zip(HEIGHT_COLUMNS, HEIGHT_NAMES)},
            **{name: name for name in RATIO_COLUMNS}, "borderline": "borderline", "assessable": "assessable"}
    return [{name: row[column] for column, name in keys.items()} for _, row in grading.table.iterrows()]


def display_patches(grading: ScanGrading, size: int = DISPLAY_PATCH_SIZE) -> list:
    """The patches the report shows: the network's own, or (no network) ones sampled for display only."""
    if grading.patches:
        return grading.patches
    patches = extract_patches_from_arrays(grading.image, grading.label_map, grading.affine, size=size,
                                          labels=[int(l) for l in grading.table["label"]], skipped=[])
    by_label = {p.label: p for p in patches}
    return [by_label.get(int(l)) for l in grading.table["label"]]


def write_report(grading: ScanGrading, heats: Sequence[np.ndarray] | None, path: Path, checkpoint,
                 operating_point: Mapping | None, scan_name: str) -> None:
    """Assemble the :class:`ScanReport` of one graded scan and write it."""
    views = []
    patches = display_patches(grading)
    for (_, row), patch, heights, heat in zip(grading.table.iterrows(), patches, vertebra_heights(grading),
                                              heats or [None] * len(patches)):
        on_patch = None if heat is None else heat_to_scan(heat, patch.affine, patch.image.shape, patch.affine,
                                                          patch.image.shape)
        views.append(VertebraView(row=row, patch_hu=None if patch is None else patch.image,
                                  patch_mask=None if patch is None else patch.mask, heights=heights,
                                  saliency=on_patch))
    grader = None if grading.model is not None else HEIGHTS_GRADER
    notices = model_notes(grading.model) + ([operating_point["foreign"]] if (operating_point or {}).get("foreign")
                                            else [])
    report = ScanReport(scan_name=scan_name, ct_hu=grading.image, label_map=grading.label_map,
                        affine=grading.affine, vertebrae=views,
                        provenance={} if grading.model is None else provenance(grading.model, checkpoint),
                        operating_point=operating_point, grader=grader, notices=notices)
    write_scan_report(path, report)
