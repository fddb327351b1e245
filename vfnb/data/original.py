"""The original layout (STUDY §1.1): full CT scans, label maps and Genant grades.

    dataset_root/
      img/<case>.nii.gz       CT volume, HU (or img/<case>/: a folder holding its DICOM series)
      seg/<case>.nii.gz       vertebra label map, VerSe labels 1-28 (0 = background)
      annotation.yaml         grades per scan and vertebra

``annotation.yaml`` maps each CT file name (with or without ``.nii.gz``) to a
mapping ``{<vertebra label 1-28>: <Genant grade 0-3>}``:

    verse004.nii.gz:
      19: 0
      20: 2

The grades' keys are always VerSe labels, whatever numbering the label map uses.
A label map is read into VerSe labels by :func:`vfnb.data.label_schemes.read_vertebra_labels`:
``seg/<case>.nii.gz`` in VerSe labels or TotalSegmentator ``total`` IDs, or a folder
``seg/<case>/`` of TotalSegmentator's per-structure masks (``vertebrae_L1.nii.gz``, ...).
Its numbering is found per case (``auto``; a map whose numbering cannot be told
without guessing is refused) unless the optional ``label_scheme.yaml`` says it,
either for every case or per CT file name (cases it does not list stay ``auto``)::

    totalsegmentator          # every case

    verse004.nii.gz: verse    # or per case: auto | verse | totalsegmentator
    ts017.nii.gz: totalsegmentator

A case appears in the dataset only if it is annotated; its image and label map
must both exist. Nothing here reads voxels (see :mod:`vfnb.data.check` for that).
"""

from __future__ import annotations

import numbers
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import DatasetError
from ..io import NIFTI_SUFFIX, atomic_write_yaml, link_outside, load_yaml, safe_member, strip_nifti_suffix
from ..levels import GRADES, LEVEL_NAMES
from .label_schemes import SCHEME_CHOICES as LABEL_SCHEMES
from .processed import join_problems

ANNOTATION_FILE = "annotation.yaml"
LABEL_SCHEME_FILE = "label_scheme.yaml"


@dataclass
class Case:
    """One annotated scan: ``grades[label] = genant_grade``; ``label_scheme``: its label map's numbering."""

    case_id: str
    image_path: Path
    seg_path: Path
    grades: dict = field(default_factory=dict)
    label_scheme: str = "auto"


def _is_int(value: Any) -> bool:
    # bool is a subclass of int, but "yes"/"true" is not a label or a grade
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_grades(where: str, grades: Any) -> tuple[dict[int, int], list[str]]:
    """Check one case's ``{label: grade}`` mapping; returns ``(good grades, problems)``."""
    if grades is None:
        return {}, []
    if not isinstance(grades, Mapping):
        return {}, [f"{where}: grades are a {type(grades).__name__} "
                    "(expected a mapping {vertebra label 1-28: Genant grade 0-3})"]
    good, problems = {}, []
    for label, grade in grades.items():
        if not _is_int(label) or int(label) not in LEVEL_NAMES:
            problems.append(f"{where}: vertebra label {label!r} is not an integer 1-28 (VerSe label)")
            continue
        if not _is_int(grade) or int(grade) not in GRADES:
            problems.append(f"{where}: label {label}: grade {grade!r} is not an integer 0-3 (Genant grade)")
            continue
        good[int(label)] = int(grade)
    return good, problems


def scan_original(root) -> tuple[list[Case], list[str]]:
    """Read an original-layout folder; returns ``(cases, problems)`` with every problem found.

    Each problem is one line naming the file (``annotation.yaml``, an image or a
    label map) and what was expected. Cases with problems are left out.
    """
    root = Path(root)
    if not root.is_dir():
        return [], [f"{root}: dataset folder not found"]
    problems = []
    for sub in ("img", "seg"):
        if not (root / sub).is_dir():
            problems.append(f"{root}: no {sub}/ folder (expected the original layout: img/, seg/, {ANNOTATION_FILE})")
    annotation_path = root / ANNOTATION_FILE
    if not annotation_path.is_file():
        problems.append(f"{annotation_path}: file not found (expected a mapping of CT file names to grades)")
        return [], problems
    try:
        annotation = load_yaml(annotation_path)
    except DatasetError as exc:
        return [], problems + [str(exc)]
    if not isinstance(annotation, Mapping):
        kind = "empty" if annotation is None else f"a {type(annotation).__name__}"
        return [], problems + [f"{annotation_path}: top level is {kind} "
                               "(expected a mapping {CT file name: {vertebra label: grade}})"]
    schemes, scheme_problems = read_label_schemes(root, annotation)
    problems.extend(scheme_problems)
    cases, seen = [], {}
    for key, grades in annotation.items():
        try:
            safe_member(annotation_path, key, what="CT file name")
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        case_id = strip_nifti_suffix(key)
        if case_id in seen:
            problems.append(f"{annotation_path}: CT {case_id!r} is annotated twice ({seen[case_id]!r} and {key!r})")
            continue
        seen[case_id] = key
        where = f"{annotation_path}: {key}"
        good, grade_problems = validate_grades(where, grades)
        problems.extend(grade_problems)
        image_path = root / "img" / (case_id + NIFTI_SUFFIX)
        if not image_path.is_file() and (root / "img" / case_id).is_dir():
            image_path = root / "img" / case_id  # a DICOM series (vfnb.data.scan_input reads either)
        seg_path = root / "seg" / (case_id + NIFTI_SUFFIX)
        if not seg_path.is_file() and (root / "seg" / case_id).is_dir():
            seg_path = root / "seg" / case_id  # a folder of per-structure masks
        missing = False
        for what, path in (("CT image", image_path), ("label map", seg_path)):
            if not (path.is_file() or path.is_dir()):  # a DICOM series; a folder of per-structure masks
                problems.append(f"{annotation_path}: {key} is annotated but its {what} {path} does not exist")
                missing = True
        if not grade_problems and not missing:
            cases.append(Case(case_id, image_path, seg_path, good, schemes.get(case_id, schemes.get(None, "auto"))))
    return cases, problems


def read_label_schemes(root: Path, annotation: Mapping) -> tuple[dict, list[str]]:
    """``label_scheme.yaml``: ``({case id or None (every case): scheme}, problems)``; empty without the file."""
    path = root / LABEL_SCHEME_FILE
    if not path.is_file():
        return {}, []
    try:
        data = load_yaml(path)
    except DatasetError as exc:
        return {}, [str(exc)]
    expected = f"expected one of {', '.join(LABEL_SCHEMES)}, for every case or per CT file name"
    if isinstance(data, str):
        if data in LABEL_SCHEMES:
            return {None: data}, []
        return {}, [f"{path}: scheme {data!r} is not known; {expected}"]
    if not isinstance(data, Mapping):
        return {}, [f"{path}: top level is {'empty' if data is None else f'a {type(data).__name__}'}; {expected}"]
    annotated = {strip_nifti_suffix(str(k)) for k in annotation}
    schemes, problems = {}, []
    for key, scheme in data.items():
        case_id = strip_nifti_suffix(str(key))
        if case_id not in annotated:
            problems.append(f"{path}: {key!r} is not a CT of {ANNOTATION_FILE}; expected the CT file names it grades")
        elif scheme not in LABEL_SCHEMES:
            problems.append(f"{path}: {key}: scheme {scheme!r} is not known; {expected}")
        else:
            schemes[case_id] = scheme
    return schemes, problems


def read_original(root) -> list[Case]:
    """The annotated cases of an original-layout folder, in annotation order.

    Raises :class:`DatasetError` listing every problem: missing ``annotation.yaml``,
    ``img/`` or ``seg/``; YAML that is not a plain mapping; a CT name with a path
    component; labels outside 1-28 or grades outside 0-3 (or not integers); an
    annotated case whose image or label map is missing.
    """
    cases, problems = scan_original(root)
    if problems:
        raise DatasetError(join_problems(problems))
    for note in outside_links(root, cases):
        print(f"warning: {note}", file=sys.stderr)
    return cases


def outside_links(root, cases: list[Case]) -> list[str]:
    """One warning per CT or label map of ``cases`` that is a symlink leading out of ``root``."""
    notes = [link_outside(root, path) for case in cases for path in (case.image_path, case.seg_path)]
    return [note for note in notes if note]


def write_annotation(path, mapping: Mapping[str, Mapping[int, int]]) -> Path:
    """Write ``annotation.yaml`` atomically: ``{CT file name: {label: grade}}`` (validated first)."""
    path = Path(path)
    out, problems = {}, []
    for key, grades in mapping.items():
        try:
            safe_member(path, key, what="CT file name")
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        good, grade_problems = validate_grades(f"{path}: {key}", grades)
        problems.extend(grade_problems)
        out[key] = dict(sorted(good.items()))
    if problems:
        raise DatasetError(join_problems(problems))
    return atomic_write_yaml(path, out)
