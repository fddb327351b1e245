"""``vfnb predict``: one scan or a folder of scans, the table, saliency maps and per-scan reports.

- ``--checkpoint``: the network that grades; without one, the morphometry grader
  (:mod:`vfnb.inference.heights_grading`: Genant's bands on the heights measured on
  the scan's own grid, no probabilities). Every table has the heights, whatever grader.
- ``--ct`` / ``--seg``: two files, or two folders whose NIfTI files pair by name (a
  CT ``img/x.nii.gz`` with the label map ``seg/x.nii.gz``, as in the original
  layout); a folder gives one table with a ``scan`` column, and a progress line per
  scan on stderr. A label map is a NIfTI in VerSe labels or TotalSegmentator ``total``
  IDs, or a folder of TotalSegmentator's per-structure masks (``--seg seg/x/``, or
  ``seg/x/`` beside the CTs' names in folder mode); ``--labels`` says which numbering
  (default ``auto``: :mod:`vfnb.data.label_schemes` decides or refuses).
- ``--operating-points`` (a study's ``operating_points.json``; ``--model`` picks the
  model when it holds several): the table gains ``screening_threshold`` and
  ``screened_fracture`` (fracture probability at or above the validated threshold).
  Only a point chosen for this checkpoint is used (its ``run_id``), unless
  ``--accept-foreign-operating-points``, which every output then states.
- The checks of :mod:`vfnb.inference.safety`: a SupCon pretraining checkpoint is
  refused; what the checkpoint says of its training data (synthetic, unknown,
  grades never seen) leads stderr, the ``model_notes`` column and the report.

- ``--saliency DIR``: one NIfTI per graded vertebra, ``<scan>_<level>_gradcam.nii.gz``,
  the Grad-CAM map of the predicted grade (:func:`vfnb.inference.saliency.grad_cam`) resampled
  into the CT's own voxel grid (same shape and affine as the CT, 0 away from the
  vertebra), to overlay in 3D Slicer or ITK-SNAP.
- ``--label-map FILE.nii.gz``: the vertebra label map recoloured by predicted grade on
  the CT's own grid, a levels map beside it, and their 3D Slicer and ITK-SNAP colour
  tables (:mod:`vfnb.inference.exports`); with folders of scans, a folder.
- ``--report FILE``: the self-contained HTML page of :mod:`vfnb.inference.report`, with the
  measured heights (:mod:`vfnb.morphometry.heights`), the saliency, the
  provenance of the checkpoint and, given a study's ``operating_points.json``, the
  screening decision at its validated threshold.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

import pandas as pd

from ..errors import DatasetError, VfnbError
from ..data.dicom import is_dicom_folder
from ..data.scan_input import is_ct_input
from ..io import NIFTI_ENDINGS, atomic_write_text, refuse_outputs_over_inputs, spreadsheet_safe, strip_nifti_suffix
from ..models.checkpoints import load_checkpoint
from ..models.networks import resolve_device
from .dicom_seg import write_dicom_seg
from .exports import plan_label_maps, write_label_maps
from .folder_run import FolderProgress
from .grading import ScanGrading, grade_scan
from .outputs import (cube_saliency, read_operating_point, refuse_existing, refuse_without_network, saliency_paths,
                      write_report, write_saliency)
from .report import write_report_index
from .safety import check_gradable, checked_operating_point, model_notes


def scan_name(ct: str | Path) -> str:
    """The scan's name: its CT file name without the NIfTI suffix (a DICOM series: its folder's name)."""
    return strip_nifti_suffix(Path(ct).name)




def scan_pairs(ct: str | Path, seg: str | Path) -> list[tuple[str, Path, Path]]:
    """``[(scan name, CT, label map)]``: one scan, or the NIfTI pairs of two folders matched by name.

    One scan is a CT file or DICOM series folder with its label map; two folders
    of NIfTI files are paired by file name.
    """
    ct, seg = Path(ct), Path(seg)
    if is_ct_input(ct):  # --seg: a label map file, or a folder of per-structure masks (TotalSegmentator)
        return [(scan_name(ct), ct, seg)]
    if not seg.is_dir():
        raise DatasetError(f"--ct {ct} is a folder of CT files and --seg {seg} is not a folder; give two files "
                           "(or a DICOM folder and its label map) or two folders")
    cts = sorted(p for p in ct.iterdir() if p.name.endswith(NIFTI_ENDINGS) and not p.name.startswith("."))
    if not cts:
        raise DatasetError(f"{ct}: no NIfTI CT (.nii.gz or .nii) in this folder")
    missing = [p.name for p in cts if _label_map_of(p, seg) is None]
    if missing:
        raise DatasetError(f"{seg}: no label map named like the CT for {len(missing)} scan(s) "
                           f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); expected "
                           f"{seg}/<the CT's file name> (or a folder {seg}/<scan name>/ of per-structure masks) "
                           f"for every CT in {ct}")
    names: dict[str, list[str]] = {}
    for p in cts:
        names.setdefault(scan_name(p), []).append(p.name)
    shared = {name: files for name, files in names.items() if len(files) > 1}
    if shared:
        name, files = next(iter(shared.items()))
        raise DatasetError(f"{ct}: {' and '.join(files)} share the scan name {name!r} (their outputs would "
                           "replace each other); expected one CT per name: rename or remove one")
    return [(scan_name(p), p, _label_map_of(p, seg)) for p in cts]


def _label_map_of(ct: Path, seg_folder: Path) -> Path | None:
    """The label map of ``ct`` in ``seg_folder``: the file of the same name, or a folder named after the scan."""
    file, folder = seg_folder / ct.name, seg_folder / scan_name(ct)
    if file.is_file():
        return file
    return folder if folder.is_dir() else None


def add_decision(table, point: Mapping | None):
    """The table with the screening decision at ``point``'s threshold (unchanged without one)."""
    if point is None:
        return table
    table = table.copy()
    table["screening_threshold"] = float(point["threshold"])
    # a vertebra without a fracture probability (not assessable) gets no decision, not "no fracture"
    table["screened_fracture"] = pd.array([None if pd.isna(p) else bool(p >= float(point["threshold"]))
                                           for p in table["fracture_prob"]], dtype="boolean")
    if point.get("foreign") and "model_notes" in table:
        table["model_notes"] = ["; ".join(n for n in (str(old or ""), point["foreign"]) if n)
                                for old in table["model_notes"]]
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
    maps = None if grading.model is None else cube_saliency(grading)
    if saliency_dir is not None:
        paths = saliency_paths(grading, saliency_dir, name)
        refuse_existing([p for p in paths if p is not None], overwrite)
        write_saliency(grading, maps, paths)
    if report_path is not None:
        refuse_existing([report_path], overwrite)
        write_report(grading, maps, Path(report_path), checkpoint, point, name)


def predict_command(ct, seg, checkpoint, out=None, device: str = "auto", overwrite: bool = False,
                    saliency_dir=None, report=None, operating_points=None, model_name=None,
                    accept_foreign_operating_points: bool = False, label_map=None, series=None,
                    resume: bool = False, dicom_seg=None, label_scheme: str = "auto") -> int:
    """Grade one scan or a folder of scans; write the CSV (atomically) or print it, plus the asked-for outputs.

    ``label_scheme``: the numbering of the label maps (``auto``, ``verse``,
    ``totalsegmentator``: :mod:`vfnb.data.label_schemes`).

    Existing outputs are refused unless ``overwrite``; the inputs, outputs and
    operating point are checked before any scan is graded. Over folders, a scan
    that cannot be graded is one row saying why and the others are graded
    (:mod:`vfnb.inference.folder_run`; ``resume`` grades only the scans an earlier
    run did not finish). ``dicom_seg``: a DICOM Segmentation of the graded vertebrae
    to write, when ``ct`` is a DICOM series (:mod:`vfnb.inference.dicom_seg`).
    Returns the number of scans that could not be graded.
    """
    pairs = scan_pairs(ct, seg)
    folder_mode = not is_ct_input(ct)
    if series is not None and (folder_mode or not Path(ct).is_dir()):
        raise DatasetError(f"--series {series}: picks a series in a DICOM folder; --ct {ct} is not one")
    if resume and not folder_mode:
        raise VfnbError("--resume continues a run over folders of scans; --ct names one scan")
    _check_outputs(out, report, saliency_dir, folder_mode, overwrite or resume)
    if folder_mode and report is not None and any(name == "index" for name, _, _ in pairs):
        raise DatasetError(f"{ct}: a scan named 'index' would give its report the name of the folder's index page "
                           f"({report}/index.html); rename that CT")
    _check_dicom_seg(dicom_seg, ct, seg, checkpoint, folder_mode, overwrite)
    label_maps = plan_label_maps(label_map, [name for name, _, _ in pairs], folder_mode,
                                 {"--ct": ct, "--seg": seg, "--checkpoint": checkpoint,
                                  "--operating-points": operating_points}, overwrite or resume)
    if checkpoint is None:
        refuse_without_network(saliency_dir, operating_points)
    point = None if operating_points is None else read_operating_point(operating_points, model_name)
    resolve_device(device)  # an unknown or absent device is refused before any file is read
    model = None if checkpoint is None else load_checkpoint(checkpoint)
    if model is not None:
        check_gradable(model, checkpoint)
        if point is not None:
            point = checked_operating_point(point, point["name"], operating_points, checkpoint,
                                            accept_foreign_operating_points)
        for note in model_notes(model) + ([point["foreign"]] if point and point["foreign"] else []):
            print(f"warning: {checkpoint}: {note}", file=sys.stderr)
    progress = None
    if folder_mode:
        progress = FolderProgress(None if out is None else Path(out),
                                  {"ct": ct, "seg": seg, "checkpoint": checkpoint, "operating_points": operating_points,
                                   "model": model_name, "saliency": saliency_dir is not None,
                                   "report": report is not None, "label_map": label_map is not None,
                                   "labels": label_scheme},
                                  resume, overwrite)
    tables, failures = [], []
    for i, (name, ct_path, seg_path) in enumerate(pairs, 1):
        kept = None if progress is None else progress.finished(name)
        if kept is not None:
            tables.append(kept)
            print(f"[{i}/{len(pairs)}] {name}: finished in an earlier run, kept", file=sys.stderr)
            continue
        report_path = None if report is None else (Path(report) / f"{name}.html" if folder_mode else report)
        try:
            table = _grade_one(name, ct_path, seg_path, model, checkpoint, device, series, saliency_dir,
                               report_path, point, label_maps, overwrite or resume, dicom_seg, label_scheme)
        except VfnbError as exc:
            if not folder_mode:
                raise
            failures.append((name, str(exc)))
            tables.append(pd.DataFrame({"scan": [name], "error": [str(exc)]}))
            print(f"[{i}/{len(pairs)}] {name}: not graded: {exc}", file=sys.stderr)
            continue
        if folder_mode:
            table.insert(0, "scan", name)
            table["error"] = ""
            progress.record(name, table.to_csv(index=False, float_format="%.6f"))
            print(f"[{i}/{len(pairs)}] {name}: {len(table)} vertebrae graded", file=sys.stderr)
        else:
            print(f"{name}: {len(table)} vertebrae graded", file=sys.stderr)
        tables.append(table)
    table = _write_table(tables, out, folder_mode, len(pairs) - len(failures))
    if folder_mode and report is not None:
        write_report_index(report, table, failures)
    if progress is not None:
        progress.close(len(failures))
    for what, where in (("saliency maps", saliency_dir), ("report(s)", report), ("label maps", label_map)):
        if where is not None:
            print(f"wrote {what} to {where}", file=sys.stderr)
    if failures:
        listed = "; ".join(f"{name}: {why}" for name, why in failures[:5])
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        hint = " and rerun with --resume to grade only those" if out is not None else ""
        print(f"error: {len(failures)} of {len(pairs)} scan(s) could not be graded ({listed}{more}); each is a row "
              f"of the table with its error: fix them{hint}", file=sys.stderr)
    return len(failures)


def _check_dicom_seg(dicom_seg, ct, seg, checkpoint, folder_mode: bool, overwrite: bool) -> None:
    """Refuse a ``--dicom-seg`` output before any scan is graded: no DICOM series to refer to, or a bad place."""
    if dicom_seg is None:
        return
    if folder_mode or not is_dicom_folder(ct):
        raise VfnbError(f"--dicom-seg {dicom_seg}: a DICOM segmentation refers to the DICOM series it segments; "
                        f"--ct {ct} is not a DICOM series folder (use --label-map for NIfTI outputs)")
    refuse_outputs_over_inputs({"--dicom-seg": dicom_seg}, {"--ct": ct, "--seg": seg, "--checkpoint": checkpoint})
    refuse_existing([dicom_seg], overwrite)


def _write_table(tables: list, out, folder_mode: bool, graded: int) -> pd.DataFrame:
    """The rows of every scan as one CSV (spreadsheet-safe), to ``out`` atomically or printed; the table."""
    table = pd.concat(tables, ignore_index=True)
    if folder_mode:  # the error column last: failure rows carry only scan and error
        table = table[[c for c in table.columns if c != "error"] + ["error"]]
    text = spreadsheet_safe(table).to_csv(index=False, float_format="%.6f")
    if out is None:
        sys.stdout.write(text)
        return table
    atomic_write_text(out, text)
    vertebrae = int(table["level"].notna().sum()) if "level" in table else 0
    print(f"wrote {out} ({vertebrae} vertebrae of {graded} scan(s))", file=sys.stderr)
    return table


def _grade_one(name, ct_path, seg_path, model, checkpoint, device, series, saliency_dir, report_path, point,
               label_maps, overwrite, dicom_seg=None, label_scheme: str = "auto") -> pd.DataFrame:
    """Grade one scan and write its asked-for outputs; its table with the screening decision.

    ``dicom_seg``: the path of a DICOM segmentation of the scan's series to write, or None.
    """
    try:
        grading = grade_scan(ct_path, seg_path, model, device=device,
                             grader=None if checkpoint is None else str(checkpoint), series=series,
                             label_scheme=label_scheme)
        _scan_outputs(grading, name, checkpoint, saliency_dir, report_path, point, overwrite)
        if name in label_maps:
            write_label_maps(grading, label_maps[name], overwrite)
        if dicom_seg is not None:
            write_dicom_seg(grading, dicom_seg, overwrite)
            print(f"wrote the DICOM segmentation {dicom_seg}", file=sys.stderr)
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, VfnbError):
            raise
        # e.g. a cube too small for the network: say which files were involved, not a traceback
        raise VfnbError(f"{ct_path}: grading with {checkpoint} failed ({type(exc).__name__}: {exc})") from None
    return add_decision(grading.table, point)
