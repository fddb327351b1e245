"""Import a VerSe release plus its fracture-grade table into the original layout.

``import_verse(verse_root, grades_table, out)`` reads a VerSe release as its
organisers publish it (:mod:`vfnb.data.verse_files`: BIDS names under
``rawdata/`` and ``derivatives/``, the VerSe 2020 split folders ``01_training`` /
``02_validation`` / ``03_test``, or the flat VerSe 2019 names) and the grade table
(:mod:`vfnb.data.verse_grades`: the organisers' spreadsheet with ``<level>_fx-g``
columns, or a long CSV ``subject,level,grade``), and writes::

    out/img/<case>.nii.gz      the CT, copied byte for byte
    out/seg/<case>.nii.gz      the label map, integer labels (uint8), in its own orientation
    out/annotation.yaml        {<case>.nii.gz: {label: grade}}

where ``<case>`` is the scan's BIDS stem (``sub-verse004``, ``sub-gl003_dir-ax``).

**Which scan a row grades.** A row's id names one scan: its full stem
(``sub-gl003_dir-ax``), its subject when that subject has one scan (``sub-verse004``,
``verse004``, ``verse4``, the bare number ``4`` when one subject carries it), or the
scan id that VerSe 2020 keeps in the ``split-`` entity (``verse290`` for
``sub-verse506_split-verse290``). An id that fits several scans (a subject with
``dir-`` or ``split-`` scans, a number shared by ``gl004`` and ``verse004``) is
refused with the candidates listed, never guessed.

**What is refused, and what is a warning.** Errors name the table row or file,
the subject and the level; every problem found is listed at once and nothing is
written:

- a table id with no scan below ``verse_root`` (*missing*): the grades would be
  lost. Importing one split folder of a release whose table covers all splits is
  the common, legitimate case: ``allow_missing=True`` (``--allow-missing``) turns
  these into warnings;
- a grade for a level absent from the scan's label map (also a warning under
  ``allow_missing``: the grade is dropped);
- text in a grade cell (``x``, ``-``) for a level present in the label map: a grade
  may be hidden there (for an absent level it reads as "not graded");
- a label map that is not integer-valued (checked after ``scl_slope`` /
  ``scl_inter``), holds values outside 0-28, or is not on the CT's voxel grid;
- a table that cannot be read or has neither form's columns.

A scan with no row (*extra*: VerSe holds scans nobody graded) is a warning and is
not imported: leaving out an ungraded scan loses nothing, and the warning names
it. Centroid files (``*_seg-subreg_ctd.json``) are a cross-check: a vertebra with a
centroid but no voxels in the label map is a warning.

Nothing below ``verse_root`` is modified (``out`` may not lie inside it); ``out``
is built in a staging folder and appears only when complete
(:func:`vfnb.io.output_folder`). CTs and label maps go through vfnb's NIfTI
checks (size limit on the header, truncated or corrupt streams).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..io import AFFINE_TOLERANCE_MM, NIFTI_SUFFIX, load_nifti, output_folder, refuse_outputs_over_inputs, safe_member, save_nifti, \
    verify_nifti
from ..levels import MAX_LABEL, level_name, spine_order
from .original import ANNOTATION_FILE, write_annotation
from .processed import join_problems
from .resample import onto_grid
from .verse_files import VerseScan, find_verse_scans, read_centroids
from .verse_grades import GradeEntry, read_grade_table

NEVER_GRADED = (26, 27)  # sacrum and coccyx
SLAB = 32  # label-map slices converted at a time (bounds the memory of the integer check)

__all__ = ["ImportPlan", "VerseScan", "find_verse_scans", "import_verse", "plan_verse_import", "read_grade_table"]


@dataclass
class ImportPlan:
    """Scans with grades, their grades (``None``: a cell that is not a grade), warnings, the layout found."""

    scans: list  # VerseScan with at least one table entry
    grades: dict  # stem -> {label: (grade or None, GradeEntry)}
    warnings: list = field(default_factory=list)
    layout: str = ""


# ---------------------------------------------------------------- ids
def _bare(text: str) -> str:
    """``"sub-verse004_ct.nii.gz"`` -> ``"verse004"``: the id in lower case, without ``sub-`` and suffixes."""
    text = str(text).strip().lower()
    for suffix in (NIFTI_SUFFIX, "_ct"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    if re.fullmatch(r"\d+\.0*", text):  # 4.0: how a spreadsheet may store the number 4
        text = text.split(".")[0]
    return text[4:] if text.startswith("sub-") else text


def _number_key(text: str) -> tuple[str, int] | None:
    """``"verse004"`` -> ``("verse", 4)``; ``"4"`` -> ``("", 4)``; None when not letters then digits."""
    match = re.fullmatch(r"([a-z]*?)0*(\d+)", text)
    return (match.group(1), int(match.group(2))) if match else None


class ScanIndex:
    """The names a table row may use for a scan (see the module docstring), each to its scans."""

    def __init__(self, scans: list[VerseScan]):
        self.by_stem = {_bare(s.stem): s for s in scans}
        self.by_name: dict[str, list[VerseScan]] = defaultdict(list)
        self.by_number: dict[tuple[str, int], list[VerseScan]] = defaultdict(list)
        for scan in scans:
            names = {_bare(scan.subject)}
            if "split" in scan.entities:
                names.add(scan.entities["split"].lower())
            for name in names:
                self.by_name[name].append(scan)
                key = _number_key(name)
                if key:
                    self.by_number[key].append(scan)

    def resolve(self, written: str, where: str) -> VerseScan | None:
        """The one scan ``written`` names, None for none; refuses an id that fits several."""
        bare = _bare(written)
        if bare in self.by_stem:
            return self.by_stem[bare]
        found = list(self.by_name.get(bare, []))
        key = _number_key(bare)
        if not found and key:
            if key[0]:
                found = list(self.by_number.get(key, []))
            else:  # a bare number: any prefix
                found = [s for (prefix, number), scans in self.by_number.items() if number == key[1] for s in scans]
        unique = {s.stem: s for s in found}
        if len(unique) > 1:
            raise DatasetError(f"{where}: id {written!r} fits {len(unique)} scans ({', '.join(sorted(unique))}); "
                               "expected an id naming one scan: write its full id, e.g. "
                               f"{sorted(unique)[0]}")
        return next(iter(unique.values()), None)


# ---------------------------------------------------------------- planning (no voxels read)
def plan_verse_import(verse_root, grades_table, allow_missing: bool = False) -> ImportPlan:
    """Match the table's rows to the scans below ``verse_root`` without reading voxels or writing anything."""
    tree = find_verse_scans(verse_root)
    entries = read_grade_table(grades_table)
    index = ScanIndex(tree.scans)
    warnings = list(tree.warnings)
    grades: dict[str, dict] = defaultdict(dict)
    missing: dict[str, list[GradeEntry]] = {}
    problems = []
    for entry in entries:
        try:
            scan = index.resolve(entry.key, entry.row)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        if scan is None:
            missing.setdefault(entry.key, []).append(entry)
            continue
        if entry.label in NEVER_GRADED:
            warnings.append(f"{entry.where}: {entry.key} grades {level_name(entry.label)} ({entry.label}); "
                            "the sacrum and coccyx are never graded (skipped)")
            continue
        previous = grades[scan.stem].get(entry.label)
        if previous is not None and previous[0] != entry.grade:
            problems.append(f"{entry.where}: {scan.stem} {level_name(entry.label)} graded {entry.text!r} here and "
                            f"{previous[1].text!r} at {previous[1].where} (expected one grade per vertebra)")
            continue
        grades[scan.stem][entry.label] = (entry.grade, entry)
    for key, rows in missing.items():
        levels = ", ".join(level_name(e.label) for e in sorted(rows, key=lambda e: spine_order(e.label)))
        line = f"{rows[0].row}: {key!r} has grades ({levels}) but no scan below {verse_root}"
        if allow_missing:
            warnings.append(line + " (skipped: --allow-missing)")
        else:
            problems.append(line + " (expected its CT and label map there; to import part of a release, "
                            "pass --allow-missing)")
    if problems:
        raise DatasetError(join_problems(list(dict.fromkeys(problems))))  # one line per row, not per cell
    graded = [s for s in tree.scans if grades.get(s.stem)]
    for scan in tree.scans:
        if not grades.get(scan.stem):
            warnings.append(f"{scan.ct_path}: no grades for {scan.stem} in {grades_table} (scan not imported)")
    return ImportPlan(graded, {s.stem: dict(grades[s.stem]) for s in graded}, warnings, tree.layout)


# ---------------------------------------------------------------- one scan
def integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    """A label map as ``uint8``; refuses values that are not integers 0-28, naming ``path``.

    Floating-point maps (VerSe stores some as float32 / float64) are checked a slab
    of slices at a time, so the check costs little memory beyond the result.
    """
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path}: label map has shape {data.shape} (expected a 3D volume)")
    out = np.empty(data.shape, np.uint8)
    for start in range(0, data.shape[2], SLAB):
        slab = data[:, :, start:start + SLAB]
        rounded = np.rint(slab) if slab.dtype.kind == "f" else slab
        off = rounded != slab
        if off.any():
            where = tuple(int(i) for i in np.argwhere(off)[0])
            voxel = (where[0], where[1], where[2] + start)
            raise DatasetError(f"{path}: label map holds the non-integer value {float(slab[where]):g} at voxel "
                               f"{voxel} ({int(off.sum())} such voxels in slices {start}-{start + slab.shape[2] - 1} "
                               "alone); expected integer VerSe labels 0-28")
        low, high = (rounded.min(), rounded.max()) if rounded.size else (0, 0)
        if low < 0 or high > MAX_LABEL:
            raise DatasetError(f"{path}: label map holds the value {int(low if low < 0 else high)} (expected VerSe "
                               f"labels 0-{MAX_LABEL}: 0 background, 1-28 vertebrae)")
        out[:, :, start:start + SLAB] = rounded
    return out


def _same_grid(ct_shape, ct_affine, labels: np.ndarray, mask_affine) -> bool:
    if tuple(ct_shape[:3]) == labels.shape and np.allclose(ct_affine, mask_affine, rtol=0.0,
                                                           atol=AFFINE_TOLERANCE_MM):
        return True
    # the same voxels stored in another array order: pre-processing re-orders them (no interpolation)
    return onto_grid(labels, mask_affine, ct_shape[:3], ct_affine) is not None


def _levels(labels) -> str:
    return ", ".join(f"{level_name(l)} ({l})" for l in sorted(labels, key=spine_order))


def check_scan(scan: VerseScan, grades: dict, allow_missing: bool,
               warnings: list) -> tuple[np.ndarray, np.ndarray, dict[int, int], list[str]]:
    """Read one scan and check it against its grades: ``(labels uint8, mask affine, {label: grade}, problems)``.

    Raises :class:`DatasetError` for a file that cannot be used at all (unreadable,
    not integer labels, off the CT's grid); returns the problems of single grades.
    """
    ct_shape, ct_affine, _ = verify_nifti(scan.ct_path)
    data, mask_affine, _ = load_nifti(scan.mask_path)
    labels = integer_labels(data, scan.mask_path)
    del data
    if not _same_grid(ct_shape, ct_affine, labels, mask_affine):
        raise DatasetError(f"{scan.mask_path}: label map of shape {labels.shape} is not on the voxel grid of its "
                           f"CT {scan.ct_path.name} (shape {tuple(ct_shape)}); expected the same grid (shape and "
                           f"affine within {AFFINE_TOLERANCE_MM} mm)")
    present = {int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=MAX_LABEL + 1)) if v}
    _cross_check_centroids(scan, present, warnings)
    kept, problems = {}, []
    for label, (grade, entry) in sorted(grades.items(), key=lambda item: spine_order(item[0])):
        level = f"{scan.stem} {level_name(label)} ({label})"
        if label not in present:
            if grade is None:
                continue  # a mark such as "x" where the scan has no such vertebra: not graded
            line = (f"{entry.where}: {level} is graded {grade} but absent from the label map "
                    f"{scan.mask_path.name} (levels present: {_levels(present) or 'none'})")
            if allow_missing:
                warnings.append(line + " (grade dropped: --allow-missing)")
            else:
                problems.append(line + "; expected grades only for vertebrae in the label map (is the row "
                                "meant for another scan?)")
            continue
        if grade is None:
            problems.append(f"{entry.where}: {level} is in the label map but its grade is {entry.text!r} "
                            "(expected an integer 0-3, or an empty cell if it was not graded)")
            continue
        kept[label] = grade
    return labels, mask_affine, kept, problems


def _cross_check_centroids(scan: VerseScan, present: set[int], warnings: list) -> None:
    if scan.centroids_path is None:
        return
    try:
        _, centroids = read_centroids(scan.centroids_path)
    except DatasetError as exc:
        warnings.append(f"{exc} (centroids not used for the cross-check)")
        return
    absent = set(centroids) - present
    if absent:
        warnings.append(f"{scan.centroids_path}: centroids for {_levels(absent)}, absent from the label map "
                        f"{scan.mask_path.name}")


# ---------------------------------------------------------------- import
def import_verse(verse_root, grades_table, out, overwrite: bool = False, allow_missing: bool = False) -> Path:
    """Write the graded VerSe scans below ``verse_root`` into the original layout at ``out``; returns ``out``.

    Refuses an existing ``out`` unless ``overwrite``, and an ``out`` that is or lies
    inside an input; the folder appears only when complete. The layout found, then
    each warning, goes to stderr (the warnings also when the import is refused).
    """
    verse_root, grades_table, out = Path(verse_root), Path(grades_table), Path(out)
    refuse_outputs_over_inputs({"OUT": out}, {"VERSE_ROOT": verse_root, "GRADES": grades_table}, DatasetError)
    plan = plan_verse_import(verse_root, grades_table, allow_missing=allow_missing)
    print(f"note: {verse_root}: found {plan.layout}; {len(plan.scans)} graded scan(s)", file=sys.stderr)
    warnings = list(plan.warnings)
    try:
        if not plan.scans:
            raise DatasetError(f"{grades_table}: no row grades a scan below {verse_root} (nothing to import)")
        with output_folder(out, overwrite=overwrite) as staging:
            _write_scans(plan, staging, allow_missing, warnings)
    finally:
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return out


def _write_scans(plan: ImportPlan, staging: Path, allow_missing: bool, warnings: list) -> None:
    """Check every planned scan, then (when all passed) write img/, seg/ and the annotation into ``staging``."""
    (staging / "img").mkdir()
    (staging / "seg").mkdir()
    problems, written = [], {}
    for scan in plan.scans:
        try:
            labels, affine, grades, grade_problems = check_scan(scan, plan.grades[scan.stem], allow_missing, warnings)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        problems.extend(grade_problems)
        if not grades:
            warnings.append(f"{scan.ct_path}: none of {scan.stem}'s grades is left (scan not imported)")
            continue
        if problems:
            continue  # nothing will be written: only look for further problems
        name = scan.stem + NIFTI_SUFFIX
        shutil.copyfile(scan.ct_path, safe_member(staging / "img", name, what="case id"))
        save_nifti(safe_member(staging / "seg", name, what="case id"), labels, affine)
        written[name] = grades
    if problems:
        raise DatasetError(join_problems(problems))
    if not written:
        raise DatasetError("no graded vertebra is left to import (see the warnings)")
    write_annotation(staging / ANNOTATION_FILE, written)
