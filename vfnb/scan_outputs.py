"""`vfnb predict`: one scan or a folder of scans, the table, saliency maps and per-scan reports.

- ``--ct`` / ``--seg``: two files, or two folders whose NIfTI files pair by name (a
  CT ``img/x.nii.gz`` with the label map ``seg/x.nii.gz``, as in the original
  layout); a folder gives one table with a ``scan`` column, and a progress line per
  scan on stderr.
- ``--operating-points`` (a study's ``operating_points.json``; ``--model`` picks the
  model when it holds several): the table gains ``screening_threshold`` and
  ``screened_fracture`` (fracture probability at or above the validated threshold).

- ``--saliency DIR``: one NIfTI per graded vertebra, ``<scan>_<level>_gradcam.nii.gz``,
  the Grad-CAM map of the predicted grade (:func:`vfnb.saliency.grad_cam`) resampled
  into the CT's own voxel grid (same shape and affine as the CT, 0 away from the
  vertebra), to overlay in 3D Slicer or ITK-SNAP.
- ``--report FILE``: the self-contained HTML page of :mod:`vfnb.scan_report`, with the
  measured heights (:mod:`vfnb.data.vertebral_heights`), the saliency, the
  provenance of the checkpoint and, given a study's ``operating_points.json``, the
  screening decision at its validated threshold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .data.transforms import eval_transform
from .data.resample import voxel_spacing
from .data.vertebral_heights import body_heights, with_ratios
from .errors import DatasetError, VfnbError
from .io import atomic_write_text, save_nifti, strip_nifti_suffix
from .models import load_checkpoint, load_checkpoint_dict, resolve_device, unwrap_model
from .predict import ScanGrading, grade_scan
from .saliency import grad_cam, heat_to_scan
from .scan_report import ScanReport, VertebraView, write_scan_report


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
    """The operating point of ``model`` in a study's ``operating_points.json`` (the only one when ``model`` is None)."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VfnbError(f"{path}: cannot read it as a study's operating_points.json ({exc})") from None
    if not isinstance(table, dict) or not table:
        raise VfnbError(f"{path}: expected a JSON object of model name -> operating point")
    if model is None:
        if len(table) != 1:
            raise VfnbError(f"{path}: holds the operating points of {', '.join(table)}; say which with --model")
        model = next(iter(table))
    entry = table.get(model)
    keys = ("threshold", "val_specificity", "val_sensitivity")
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), (int, float)) for k in keys):
        raise VfnbError(f"{path}: no operating point for model {model!r} with fields {', '.join(keys)} "
                        f"(models there: {', '.join(table)})")
    return {**entry, "model": f"{model} of {path}"}


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


def scan_name(ct: str | Path) -> str:
    """The scan's name: its CT file name without the NIfTI suffix."""
    return strip_nifti_suffix(Path(ct).name)


NIFTI_ENDINGS = (".nii.gz", ".nii")


def scan_pairs(ct: str | Path, seg: str | Path) -> list[tuple[str, Path, Path]]:
    """``[(scan name, CT, label map)]``: one pair of files, or the NIfTI pairs of two folders matched by name."""
    ct, seg = Path(ct), Path(seg)
    if ct.is_dir() != seg.is_dir():
        raise DatasetError(f"--ct {ct} and --seg {seg}: give two files or two folders, not one of each")
    if not ct.is_dir():
        return [(scan_name(ct), ct, seg)]
    cts = sorted(p for p in ct.iterdir() if p.name.endswith(NIFTI_ENDINGS) and not p.name.startswith("."))
    if not cts:
        raise DatasetError(f"{ct}: no NIfTI CT (.nii.gz or .nii) in this folder")
    missing = [p.name for p in cts if not (seg / p.name).is_file()]
    if missing:
        raise DatasetError(f"{seg}: no label map named like the CT for {len(missing)} scan(s) "
                           f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); expected "
                           f"{seg}/<the CT's file name> for every CT in {ct}")
    return [(scan_name(p), p, seg / p.name) for p in cts]


def add_decision(table, point: Mapping | None):
    """The table with the screening decision at ``point``'s threshold (unchanged without one)."""
    if point is None:
        return table
    table = table.copy()
    table["screening_threshold"] = float(point["threshold"])
    table["screened_fracture"] = table["fracture_prob"] >= float(point["threshold"])
    return table


def _check_outputs(out, report, saliency_dir, folder_mode: bool, overwrite: bool) -> None:
    if out is not None and Path(out).is_dir():
        raise VfnbError(f"{out}: --out is a folder; expected the path of a CSV file to write")
    if report is not None and not folder_mode and Path(report).is_dir():
        raise VfnbError(f"{report}: --report is a folder; expected the path of an HTML file to write "
                        "(a folder only when --ct and --seg are folders)")
    if report is not None and folder_mode and Path(report).exists() and not Path(report).is_dir():
        raise VfnbError(f"{report}: --report is a file; with folders of scans it names a folder for one page per scan")
    if saliency_dir is not None and Path(saliency_dir).exists() and not Path(saliency_dir).is_dir():
        raise VfnbError(f"{saliency_dir}: --saliency is a file; expected a folder for the NIfTI maps")
    refuse_existing([p for p in (out, None if folder_mode else report) if p is not None], overwrite)


def _scan_outputs(grading: ScanGrading, name: str, checkpoint, saliency_dir, report_path, point, overwrite) -> None:
    """The saliency maps and the report of one graded scan, when asked for."""
    if saliency_dir is None and report_path is None:
        return
    maps = cube_saliency(grading)
    if saliency_dir is not None:
        paths = saliency_paths(grading, saliency_dir, name)
        refuse_existing(paths, overwrite)
        write_saliency(grading, maps, paths)
    if report_path is not None:
        refuse_existing([report_path], overwrite)
        write_report(grading, maps, Path(report_path), checkpoint, point, name)


def predict_command(ct, seg, checkpoint, out=None, device: str = "auto", overwrite: bool = False,
                    saliency_dir=None, report=None, operating_points=None, model_name=None) -> None:
    """Grade one scan or a folder of scans; write the CSV (atomically) or print it, plus the asked-for outputs.

    Existing outputs are refused unless ``overwrite``; the inputs, outputs and
    operating point are checked before any scan is graded.
    """
    pairs = scan_pairs(ct, seg)
    folder_mode = Path(ct).is_dir()
    _check_outputs(out, report, saliency_dir, folder_mode, overwrite)
    point = None if operating_points is None else read_operating_point(operating_points, model_name)
    resolve_device(device)  # an unknown or absent device is refused before any file is read
    model = load_checkpoint(checkpoint)
    tables = []
    for i, (name, ct_path, seg_path) in enumerate(pairs, 1):
        try:
            grading = grade_scan(ct_path, seg_path, model, device=device)
            report_path = None if report is None else (Path(report) / f"{name}.html" if folder_mode else report)
            _scan_outputs(grading, name, checkpoint, saliency_dir, report_path, point, overwrite)
        except (RuntimeError, ValueError) as exc:
            if isinstance(exc, VfnbError):
                raise
            # e.g. a cube too small for the network: say which files were involved, not a traceback
            raise VfnbError(f"{ct_path}: grading with {checkpoint} failed ({type(exc).__name__}: {exc})") from None
        table = add_decision(grading.table, point)
        if folder_mode:
            table.insert(0, "scan", name)
            print(f"[{i}/{len(pairs)}] {name}: {len(table)} vertebrae graded", file=sys.stderr)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    text = table.to_csv(index=False, float_format="%.6f")
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
        print(f"wrote {out} ({len(table)} vertebrae of {len(pairs)} scan(s))", file=sys.stderr)
    for what, where in (("saliency maps", saliency_dir), ("report(s)", report)):
        if where is not None:
            print(f"wrote {what} to {where}", file=sys.stderr)
