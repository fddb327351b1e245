"""Validate a dataset folder, original or processed layout, and summarise it.

``check_dataset(root)`` tells the layout apart (``annotation.yaml`` -> original;
``img/`` + ``seg/`` or ``<split>_file_list.<tag>.yaml`` -> processed), then collects
*every* problem it finds, each one line naming the file and what was expected:

errors
    list entries with a path component or a name that does not parse; YAML with
    Python tags or not of the expected shape; labels outside 1-28 / grades outside
    0-3; corrupt or truncated NIfTI (every file is decompressed in full, once);
    image/mask shape or affine mismatch (affine tolerance 1e-3 mm); list entries
    with no file; a CT in two lists of one tag (patient leakage); annotated
    cases whose image or label map is missing; a label map whose numbering (VerSe or
    TotalSegmentator, ``label_scheme.yaml``) cannot be told without guessing, or whose
    IDs fit neither (:func:`vfnb.data.label_schemes.read_vertebra_labels`).
warnings
    (original) graded labels absent from the label map, labels in the map but not
    graded, CTs in ``img/`` that are not annotated; (processed) empty or non-binary
    masks, a tag without a train or test list, no lists at all, a list without a
    fractured vertebra (grade >= 1).

``require_valid(root)`` raises :class:`DatasetError` listing the errors; every
command that reads a dataset calls it first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..io import AFFINE_TOLERANCE_MM, NIFTI_SUFFIX, load_nifti, load_yaml, strip_nifti_suffix, verify_nifti
from ..levels import GRADES, LEVEL_NAMES, level_name, spine_order
from .label_schemes import read_vertebra_labels
from .original import ANNOTATION_FILE, outside_links, scan_original
from .resample import onto_ct_grid
from .scan_input import read_ct
from .processed import (LIST_INFIX, LIST_SUFFIX, SPLITS, parse_list_filename, parse_patch_name,
                        validate_list_entries)


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    ``grade_counts[label][grade]``: vertebrae per level and Genant grade;
    ``list_counts[tag][split][grade]``: listed vertebrae per grade (processed only);
    ``list_cts[tag][split]``: number of CTs (image ids) per list.
    """

    root: Path
    kind: str = "unknown"  # "original" | "processed" | "unknown"
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    cases: int = 0
    vertebrae: int = 0
    grade_counts: dict = field(default_factory=lambda: defaultdict(Counter))
    list_counts: dict = field(default_factory=dict)
    list_cts: dict = field(default_factory=dict)
    label_schemes: dict = field(default_factory=dict)  # original: case id -> how its label map was read

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary_text(self) -> str:
        lines = [f"dataset: {self.root} ({self.kind} layout)",
                 f"cases (CTs): {self.cases}    vertebrae: {self.vertebrae}"]
        if self.grade_counts:
            lines += ["", "vertebrae per level and Genant grade:", _grade_table(self.grade_counts)]
        if self.label_schemes:
            lines += ["", _scheme_summary(self.label_schemes)]
        for tag in sorted(self.list_counts):
            lines += ["", f"lists of tag {tag!r} (vertebrae per grade):"]
            header = f"  {'list':<6}{'CTs':>6}" + "".join(f"{'g' + str(g):>7}" for g in GRADES) + f"{'total':>8}"
            lines.append(header)
            for split, counts in self.list_counts[tag].items():
                cts = self.list_cts.get(tag, {}).get(split, 0)
                lines.append(f"  {split:<6}{cts:>6}" + "".join(f"{counts.get(g, 0):>7}" for g in GRADES)
                             + f"{sum(counts.values()):>8}")
        lines.append("")
        # one line per problem, whatever a library put in its message
        lines += [f"warning: {_one_line(w)}" for w in self.warnings]
        lines += [f"error: {_one_line(e)}" for e in self.errors]
        if self.errors:
            lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        else:
            lines.append(f"ok: no errors, {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def _scheme_summary(schemes: dict) -> str:
    """How the label maps were numbered: counts per scheme, then each case not read as a VerSe map."""
    counts = Counter(how.split(" ", 1)[0] for how in schemes.values())
    lines = ["label maps: " + ", ".join(f"{n} {scheme}" for scheme, n in sorted(counts.items()))]
    lines += [f"  {case}: {how}" for case, how in schemes.items() if not how.startswith("verse (multilabel")]
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _grade_table(grade_counts) -> str:
    rows = [f"  {'level':<7}" + "".join(f"{'g' + str(g):>7}" for g in GRADES) + f"{'total':>8}"]
    totals = Counter()
    for label in sorted(grade_counts, key=spine_order):
        counts = grade_counts[label]
        totals.update(counts)
        rows.append(f"  {level_name(label):<7}" + "".join(f"{counts.get(g, 0):>7}" for g in GRADES)
                    + f"{sum(counts.values()):>8}")
    rows.append(f"  {'total':<7}" + "".join(f"{totals.get(g, 0):>7}" for g in GRADES) + f"{sum(totals.values()):>8}")
    return "\n".join(rows)


# ---------------------------------------------------------------- NIfTI reading
def _read_nifti(path: Path, want_data: bool):
    """``(shape, affine, data or None)`` checked exactly as pre-processing will read the file.

    :func:`vfnb.io.load_nifti` with ``want_data``, else :func:`vfnb.io.verify_nifti`
    (the stream is read through, not kept): a truncated stream, a bad CRC, a broken
    geometry, NaN/Inf voxels or an oversized header raise :class:`DatasetError`.
    """
    if want_data:
        data, affine, _ = load_nifti(path)
        return tuple(int(s) for s in data.shape), affine, data
    shape, affine, _ = verify_nifti(path)
    return shape, affine, None


def _read_ct_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine)`` of a CT: a NIfTI checked as :func:`_read_nifti` does, or a DICOM series read through."""
    if path.is_dir():
        scan = read_ct(path)
        return tuple(int(s) for s in scan.image.shape), scan.affine
    shape, affine, _ = _read_nifti(path, want_data=False)
    return shape, affine


def _compare_geometry(image_path, image_geo, mask_path, mask_geo, errors) -> None:
    (shape_i, affine_i), (shape_m, affine_m) = image_geo, mask_geo
    if len(shape_i) != 3:
        errors.append(f"{image_path}: image has shape {shape_i} (expected a 3-D volume)")
    if shape_i != shape_m:
        errors.append(f"{mask_path}: shape {shape_m} differs from its image {image_path.name} {shape_i} "
                      "(expected the same voxel grid)")
    elif not np.allclose(affine_i, affine_m, rtol=0.0, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.max(np.abs(affine_i - affine_m)))
        errors.append(f"{mask_path}: affine differs from its image {image_path.name} by up to {worst:.4g} mm "
                      f"(expected the same affine within {AFFINE_TOLERANCE_MM} mm)")


# ---------------------------------------------------------------- layouts
def detect_layout(root) -> str:
    """``"original"``, ``"processed"`` or ``"unknown"``: which layout ``root`` is meant to be.

    Original: it has ``annotation.yaml``, or ``img/`` + ``seg/`` holding scans whose
    names are not patch names (then the missing annotation is reported as an error,
    not taken for a processed dataset). Processed: split lists, ``patches.csv`` /
    ``preprocess.json``, or ``img/`` + ``seg/`` of patch-named files.
    """
    root = Path(root)
    if (root / ANNOTATION_FILE).is_file():
        return "original"
    if any(parse_list_filename(p.name) for p in root.glob(f"*{LIST_INFIX}*{LIST_SUFFIX}")):
        return "processed"
    if (root / "patches.csv").is_file() or (root / "preprocess.json").is_file():
        return "processed"
    if (root / "img").is_dir() and (root / "seg").is_dir():
        names = _nifti_names(root / "img")
        return "processed" if names and all(_is_patch_name(n) for n in names) else "original"
    return "unknown"


def _is_patch_name(name: str) -> bool:
    try:
        parse_patch_name(name)
    except DatasetError:
        return False
    return True


def check_dataset(root) -> CheckReport:
    """Check an original- or processed-layout folder; never raises for dataset problems."""
    root = Path(root)
    report = CheckReport(root=root)
    if not root.is_dir():
        report.errors.append(f"{root}: dataset folder not found")
        return report
    report.kind = detect_layout(root)
    if report.kind == "original":
        _check_original(root, report)
    elif report.kind == "processed":
        _check_processed(root, report)
    else:
        report.errors.append(f"{root}: not a dataset (expected {ANNOTATION_FILE} with img/ and seg/ "
                             "for the original layout, or img/, seg/ and <split>_file_list.<tag>.yaml "
                             "for the processed layout)")
    return report


def require_valid(root) -> CheckReport:
    """Run :func:`check_dataset`; raise :class:`DatasetError` listing every error, else return the report."""
    report = check_dataset(root)
    if report.errors:
        raise DatasetError(f"{root}: {len(report.errors)} problem(s) in the dataset "
                           f"(run `vfnb check {root}` for the full report):\n  " + "\n  ".join(report.errors))
    return report


def _nifti_names(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    # hidden names are temporary files of atomic writes in progress
    return {p.name for p in folder.glob("*" + NIFTI_SUFFIX) if not p.name.startswith(".")}


def _check_original(root: Path, report: CheckReport) -> None:
    cases, problems = scan_original(root)
    report.errors.extend(problems)
    report.warnings.extend(outside_links(root, cases))
    annotated = {c.case_id for c in cases}
    annotation = root / ANNOTATION_FILE
    for name in sorted(_nifti_names(root / "img")):
        if strip_nifti_suffix(name) not in annotated and not any(
                f"{annotation}: {strip_nifti_suffix(name)}" in p for p in problems):
            report.warnings.append(f"{root / 'img' / name}: CT is not in {ANNOTATION_FILE} (it will be ignored)")
    for case in cases:
        report.cases += 1
        for label, grade in case.grades.items():
            report.grade_counts[label][grade] += 1
            report.vertebrae += 1
        try:
            ct_shape, ct_affine = _read_ct_geometry(case.image_path)
            labels = read_vertebra_labels(case.seg_path, case.label_scheme)  # into VerSe labels, or refused
        except DatasetError as exc:
            report.errors.append(str(exc))
            continue
        report.label_schemes[case.case_id] = labels.describe()
        report.warnings.extend(f"{case.seg_path}: {note}" for note in labels.notes)
        # the same voxels in another array order: pre-processing re-orders them too
        seg, seg_affine = onto_ct_grid(labels.array, labels.affine, ct_shape, ct_affine)
        _compare_geometry(case.image_path, (ct_shape, ct_affine), case.seg_path, (seg.shape, seg_affine),
                          report.errors)
        present = {int(v) for v in np.unique(seg).tolist() if v != 0}
        where = f"{annotation}: {case.case_id}"
        missing = sorted(set(case.grades) - present, key=spine_order)
        if missing:
            report.warnings.append(f"{where}: graded vertebrae {_levels(missing)} are absent from "
                                   f"the label map {case.seg_path.name} (they will be skipped)")
        ungraded = sorted((present - set(case.grades)) & set(LEVEL_NAMES) - {26, 27}, key=spine_order)
        if ungraded:
            report.warnings.append(f"{where}: vertebrae {_levels(ungraded)} in the label map "
                                   f"{case.seg_path.name} have no grade (they will be skipped)")


def _levels(labels) -> str:
    return ", ".join(f"{level_name(l)} ({l})" for l in labels)


def _check_processed(root: Path, report: CheckReport) -> None:
    img_dir, seg_dir = root / "img", root / "seg"
    for folder in (img_dir, seg_dir):
        if not folder.is_dir():
            report.errors.append(f"{root}: no {folder.name}/ folder (expected the processed layout: "
                                 "img/, seg/, <split>_file_list.<tag>.yaml)")
    img_names, seg_names = _nifti_names(img_dir), _nifti_names(seg_dir)
    patches = {}
    for name in sorted(img_names):
        try:
            patches[name] = parse_patch_name(name, where=str(img_dir))
        except DatasetError as exc:
            report.errors.append(str(exc))
    for name in sorted(seg_names - img_names):
        report.errors.append(f"{seg_dir / name}: mask has no image img/{name} (expected a pair)")
    report.cases = len({p.image_id for p in patches.values()})
    report.vertebrae = len(patches)
    for name, patch in patches.items():
        report.grade_counts[patch.label][patch.grade] += 1
        image_path, mask_path = img_dir / name, seg_dir / name
        if name not in seg_names:
            report.errors.append(f"{image_path}: image has no mask seg/{name} (expected a pair)")
            continue
        try:
            image_shape, image_affine, _ = _read_nifti(image_path, want_data=False)
        except DatasetError as exc:
            report.errors.append(str(exc))
            image_shape = None
        try:
            mask_shape, mask_affine, mask = _read_nifti(mask_path, want_data=True)
        except DatasetError as exc:
            report.errors.append(str(exc))
            continue
        if image_shape is not None:
            _compare_geometry(image_path, (image_shape, image_affine), mask_path, (mask_shape, mask_affine),
                              report.errors)
        if not np.any(mask):
            report.warnings.append(f"{mask_path}: mask is empty (expected the vertebra's voxels set to 1)")
        elif not np.all((mask == 0) | (mask == 1)):
            report.warnings.append(f"{mask_path}: mask is not binary (expected 0/1; nonzero is read as the vertebra)")
    _check_lists(root, img_names, seg_names, report)


def _no_fracture_warning(path: Path, split: str, vertebrae: int) -> str:
    consequence = {"train": "a model trained on it never sees a fracture",
                   "val": "checkpoints cannot be selected, nor an operating point chosen, on fractures",
                   "test": "sensitivity and fracture AUC cannot be measured on it"}[split]
    return (f"{path}: no fractured vertebra (grade >= 1) among its {vertebrae} vertebrae; {consequence} "
            "(expected some of every grade)")


def _check_lists(root: Path, img_names: set, seg_names: set, report: CheckReport) -> None:
    lists_by_tag: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for path in sorted(root.glob(f"*{LIST_INFIX}*{LIST_SUFFIX}")):
        parsed = parse_list_filename(path.name)
        if parsed is None:
            report.warnings.append(f"{path}: not a list name vfnb reads "
                                   f"(expected <split>_file_list.<tag>.yaml with split one of {', '.join(SPLITS)})")
            continue
        split, tag = parsed
        try:
            data = load_yaml(path)
        except DatasetError as exc:
            report.errors.append(str(exc))
            lists_by_tag[tag][split] = []
            continue
        names, problems = validate_list_entries(path, data)
        report.errors.extend(problems)
        for name in names:
            for sub, present in (("img", img_names), ("seg", seg_names)):
                if name not in present:
                    report.errors.append(f"{path}: lists {name!r} but {sub}/{name} does not exist")
        lists_by_tag[tag][split] = names
    if not lists_by_tag:
        report.warnings.append(f"{root}: no <split>_file_list.<tag>.yaml lists (run `vfnb split`)")
    for tag, lists in sorted(lists_by_tag.items()):
        for split in ("train", "test"):
            if split not in lists:
                report.warnings.append(f"{root / f'{split}_file_list.{tag}.yaml'}: missing (tag {tag!r} has "
                                       f"{', '.join(sorted(lists))} only)")
        splits_of_ct: dict[str, list[str]] = defaultdict(list)
        report.list_counts[tag], report.list_cts[tag] = {}, {}
        for split in SPLITS:
            if split not in lists:
                continue
            parsed = [parse_patch_name(n) for n in lists[split]]
            report.list_counts[tag][split] = Counter(p.grade for p in parsed)
            if not any(p.grade >= 1 for p in parsed):
                report.warnings.append(_no_fracture_warning(root / f"{split}_file_list.{tag}.yaml", split,
                                                            len(parsed)))
            image_ids = sorted({p.image_id for p in parsed})
            report.list_cts[tag][split] = len(image_ids)
            for image_id in image_ids:
                splits_of_ct[image_id].append(split)
        for image_id, splits in sorted(splits_of_ct.items()):
            if len(splits) > 1:
                files = " and ".join(f"{s}_file_list.{tag}.yaml" for s in splits)
                report.errors.append(f"{root}: CT {image_id!r} appears in {files} (patient leakage: "
                                     "expected all vertebrae of one CT in one list)")
