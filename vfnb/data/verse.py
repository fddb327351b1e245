"""Import a VerSe release plus a Genant grade table into the original layout.

VerSe files (STUDY §2), searched anywhere below ``verse_root`` (so a folder
holding several releases works):

    rawdata/sub-<id>/sub-<id>[_<infix>]_ct.nii.gz                 CT
    derivatives/sub-<id>/sub-<id>[_<infix>]_seg-vert_msk.nii.gz   vertebra label map

A CT and a mask pair up by their common stem ``sub-<id>[_<infix>]`` (e.g.
``sub-verse004``, ``sub-gl003_dir-ax``), which becomes the case id.

The grade table comes in one of two forms:

- wide (the published spreadsheet; CSV or XLSX): one row per scan, an id column
  ``verse_ID`` or ``subject_ID`` and one column per level named ``<Level>_fx-g``
  (``T12_fx-g``), values 0-3, empty where not graded;
- long CSV: columns ``subject,level,grade``; level as ``T12`` or a label number.

Ids match robustly: ``sub-verse004``, ``verse004`` and ``4`` all name the same
subject; a full stem (``sub-gl003_dir-ax``) names one scan. A subject-level row
grades every scan of that subject.

Output: ``out/img/<stem>.nii.gz``, ``out/seg/<stem>.nii.gz`` (copies, byte for
byte) and ``out/annotation.yaml``. Scans without grades are not imported; every
such scan and every graded subject without a scan is reported as a warning
(printed to stderr as ``warning: ...`` and returned by :func:`plan_verse_import`).
"""

from __future__ import annotations

import math
import re
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError, VfnbError
from ..io import NIFTI_SUFFIX, output_folder
from ..levels import label_from_level
from .original import ANNOTATION_FILE, write_annotation

CT_PATTERN = re.compile(r"^(sub-[^_/]+(?:_.+)?)_ct\.nii\.gz$")
MASK_PATTERN = re.compile(r"^(sub-[^_/]+(?:_.+)?)_seg-vert_msk\.nii\.gz$")
WIDE_SUFFIX = "_fx-g"
WIDE_ID_COLUMNS = ("verse_id", "subject_id")
NEVER_GRADED = (26, 27)  # sacrum and coccyx


@dataclass
class VerseScan:
    stem: str  # "sub-verse004" or "sub-gl003_dir-ax"
    ct_path: Path
    mask_path: Path

    @property
    def subject(self) -> str:
        return self.stem.split("_", 1)[0]


@dataclass
class ImportPlan:
    scans: list  # VerseScan with grades
    grades: dict  # stem -> {label: grade}
    warnings: list = field(default_factory=list)


# ---------------------------------------------------------------- files
def find_verse_scans(verse_root) -> tuple[list[VerseScan], list[str]]:
    """Pair CTs and masks below ``verse_root``; returns ``(scans, warnings)``."""
    root = Path(verse_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: VerSe folder not found")
    found = {"rawdata": {}, "derivatives": {}}
    warnings = []
    for kind, pattern, glob in (("rawdata", CT_PATTERN, "*_ct.nii.gz"),
                                ("derivatives", MASK_PATTERN, "*_seg-vert_msk.nii.gz")):
        for path in sorted(root.rglob(glob)):
            match = pattern.match(path.name)
            if not match or path.parent.parent.name != kind or not path.parent.name.startswith("sub-"):
                continue
            stem = match.group(1)
            if stem in found[kind]:
                warnings.append(f"{path}: {stem} also at {found[kind][stem]} (using the first)")
                continue
            found[kind][stem] = path
    cts, masks = found["rawdata"], found["derivatives"]
    if not cts:
        raise DatasetError(f"{root}: no CT found (expected rawdata/sub-*/sub-*_ct.nii.gz below it)")
    for stem in sorted(set(cts) - set(masks)):
        warnings.append(f"{cts[stem]}: no label map derivatives/.../{stem}_seg-vert_msk.nii.gz (scan skipped)")
    for stem in sorted(set(masks) - set(cts)):
        warnings.append(f"{masks[stem]}: no CT rawdata/.../{stem}_ct.nii.gz (label map skipped)")
    scans = [VerseScan(stem, cts[stem], masks[stem]) for stem in sorted(set(cts) & set(masks))]
    return scans, warnings


# ---------------------------------------------------------------- grade table
def _subject_key(text: str) -> tuple[str, str]:
    """``"sub-verse004"`` / ``"verse004"`` -> ``("verse", "4")``; ``"4"`` / ``4.0`` -> ``("", "4")``."""
    text = str(text).strip().lower()
    if text.startswith("sub-"):
        text = text[4:]
    if re.fullmatch(r"\d+\.0*", text):  # a number read as float from a spreadsheet
        text = text.split(".")[0]
    match = re.fullmatch(r"([a-z]*?)(\d+)", text)
    if match:
        return match.group(1), str(int(match.group(2)))
    return text, ""


def _normalise_stem(text: str) -> str:
    text = str(text).strip().lower()
    for suffix in (NIFTI_SUFFIX, "_ct"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return text if text.startswith("sub-") else "sub-" + text


def _is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _parse_grade(value, where: str) -> int:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != int(number) or int(number) not in (0, 1, 2, 3):
        raise DatasetError(f"{where}: grade {value!r} is not an integer 0-3 (Genant grade; leave empty if not graded)")
    return int(number)


def _read_table(path: Path):
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"{path}: grade table not found")
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            table = pd.read_excel(path, dtype=object)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=True)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read the grade table ({type(exc).__name__}: {exc}); "
                           "expected CSV or XLSX") from None
    table.columns = [str(c).strip() for c in table.columns]
    return table


def read_grade_table(path) -> list[tuple[str, int, int, str]]:
    """Rows ``(subject or scan id as written, label, grade, where)`` from a wide or long table."""
    path = Path(path)
    table = _read_table(path)
    lower = {c.lower(): c for c in table.columns}
    entries = []
    if {"subject", "level", "grade"} <= set(lower):
        for i, row in enumerate(table.to_dict("records")):
            where = f"{path}: row {i + 2}"  # 1-based, after the header line
            subject, level, grade = row[lower["subject"]], row[lower["level"]], row[lower["grade"]]
            if _is_blank(subject) or _is_blank(level):
                raise DatasetError(f"{where}: empty subject or level (expected e.g. sub-verse004,T12,1)")
            if _is_blank(grade):
                continue
            try:
                text = str(level).strip()
                # "20.0" is how a spreadsheet may write the label number 20
                label = label_from_level(text.split(".")[0] if re.fullmatch(r"\d+\.0*", text) else text)
            except VfnbError as exc:
                raise DatasetError(f"{where}: {exc}") from None
            entries.append((str(subject).strip(), label, _parse_grade(grade, f"{where}, column grade"), where))
        return entries
    id_columns = [lower[c] for c in WIDE_ID_COLUMNS if c in lower]
    grade_columns = [c for c in table.columns if c.lower().endswith(WIDE_SUFFIX.lower())]
    if not id_columns or not grade_columns:
        raise DatasetError(f"{path}: columns {list(table.columns)[:8]}... are neither the wide form "
                           f"(an id column verse_ID or subject_ID and <Level>{WIDE_SUFFIX} columns) nor the "
                           "long form (subject, level, grade)")
    labels = {}
    for column in grade_columns:
        try:
            labels[column] = label_from_level(column[: -len(WIDE_SUFFIX)])
        except VfnbError as exc:
            raise DatasetError(f"{path}: column {column!r}: {exc}") from None
    for i, row in enumerate(table.to_dict("records")):
        where = f"{path}: row {i + 2}"
        ids = [row[c] for c in id_columns if not _is_blank(row[c])]
        if not ids:
            if all(_is_blank(row[c]) for c in grade_columns):
                continue  # a blank line
            raise DatasetError(f"{where}: no id in {' or '.join(id_columns)} but grades are given")
        for column in grade_columns:
            if not _is_blank(row[column]):
                entries.append((str(ids[0]).strip(), labels[column],
                                _parse_grade(row[column], f"{where}, column {column}"), where))
    return entries


# ---------------------------------------------------------------- matching
def plan_verse_import(verse_root, grades_table) -> ImportPlan:
    """Match scans to grades without writing anything; returns an :class:`ImportPlan`."""
    scans, warnings = find_verse_scans(verse_root)
    entries = read_grade_table(grades_table)
    by_stem = {s.stem.lower(): s for s in scans}
    by_key = defaultdict(list)
    by_number = defaultdict(list)
    for scan in scans:
        key = _subject_key(scan.subject)
        by_key[key].append(scan)
        by_number[key[1]].append(scan)
    grades: dict[str, dict[int, int]] = defaultdict(dict)
    unmatched = {}
    for written, label, grade, where in entries:
        stem = _normalise_stem(written)
        if stem in by_stem:
            targets = [by_stem[stem]]
        else:
            key = _subject_key(written)
            targets = by_key.get(key, [])
            if not targets and key[0] == "" and key[1]:
                # a bare number: match when exactly one subject carries it
                subjects = {s.subject for s in by_number.get(key[1], [])}
                if len(subjects) == 1:
                    targets = by_number[key[1]]
                elif len(subjects) > 1:
                    raise DatasetError(f"{where}: id {written!r} matches several subjects "
                                       f"({', '.join(sorted(subjects))}); write the full id")
        if not targets:
            unmatched.setdefault(written, where)
            continue
        if label in NEVER_GRADED:
            warnings.append(f"{where}: {written} grades label {label} (sacrum/coccyx are never graded; skipped)")
            continue
        for scan in targets:
            previous = grades[scan.stem].get(label)
            if previous is not None and previous != grade:
                raise DatasetError(f"{where}: {written} label {label} graded {grade} here and {previous} earlier "
                                   "(expected one grade per vertebra)")
            grades[scan.stem][label] = grade
    for written, where in unmatched.items():
        warnings.append(f"{where}: grades for {written!r} but no matching scan (skipped)")
    graded_scans = [s for s in scans if grades.get(s.stem)]
    for scan in scans:
        if not grades.get(scan.stem):
            warnings.append(f"{scan.ct_path}: no grades for {scan.stem} in {grades_table} (scan not imported)")
    return ImportPlan(graded_scans, {s.stem: dict(sorted(grades[s.stem].items())) for s in graded_scans}, warnings)


def import_verse(verse_root, grades_table, out, overwrite: bool = False) -> Path:
    """Copy graded VerSe scans into the original layout at ``out``; returns ``out``.

    Refuses an existing ``out`` unless ``overwrite``; the folder appears only when
    complete. Warnings (ungraded scans, grades without scans) go to stderr.
    """
    plan = plan_verse_import(verse_root, grades_table)
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not plan.scans:
        raise DatasetError(f"{grades_table}: no grade matches a scan in {verse_root} (nothing to import)")
    out = Path(out)
    with output_folder(out, overwrite=overwrite) as staging:
        (staging / "img").mkdir()
        (staging / "seg").mkdir()
        for scan in plan.scans:
            shutil.copyfile(scan.ct_path, staging / "img" / (scan.stem + NIFTI_SUFFIX))
            shutil.copyfile(scan.mask_path, staging / "seg" / (scan.stem + NIFTI_SUFFIX))
        write_annotation(staging / ANNOTATION_FILE,
                         {scan.stem + NIFTI_SUFFIX: plan.grades[scan.stem] for scan in plan.scans})
    return out
