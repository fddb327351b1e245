"""Graded label maps to open beside the CT in 3D Slicer or ITK-SNAP (``vfnb predict --label-map``).

For ``--label-map x.nii.gz`` (with folders of scans, ``--label-map DIR`` gives
``DIR/<scan>.nii.gz`` and its companions for each scan) six files are written:

- ``x.nii.gz``, the **grade map**: every voxel of a vertebra in the input label map
  carries the code of that vertebra's predicted grade (:data:`GRADE_MAP_CODES`):
  0 background, 1 normal (grade 0), 2 mild (grade 1), 3 moderate (grade 2),
  4 severe (grade 3), 5 not assessable (a vertebra vfnb tried to grade and could not:
  its body cut by the field of view, no measurable body, too small or thin for a
  patch), 6 not graded (a labelled bone vfnb never grades: sacrum, coccyx). uint8.
- ``x.ctbl``: its 3D Slicer colour table (Slicer's text format: ``# Color table
  file`` header, then ``index name R G B A`` per line, 0-255, spaces in names as
  underscores); ``x.label.txt``: its ITK-SNAP label description (``IDX -R- -G- -B-
  -A-- VIS MSH "LABEL"``, alpha 0-1). Both list every code 0-6 whatever the scan
  holds, so the legend is the same for every scan.
- ``x_levels.nii.gz``, the **levels map**: the input's vertebra labels (VerSe
  numbers, :mod:`vfnb.levels`), with ``x_levels.ctbl`` and ``x_levels.label.txt``
  naming each level with its grade (``L1 (grade 2 moderate)``) in that grade's colour.

Both maps lie on the CT's own voxel grid: the shape and affine of the CT as it was
read, any orientation, nothing resampled, so they overlay the CT exactly. Colours
are the package's one palette (:data:`vfnb.levels.GRADE_COLORS`,
:data:`~vfnb.levels.NOT_ASSESSABLE_COLOR`, :data:`~vfnb.levels.NOT_GRADED_COLOR`).

Why two maps: in the grade map, neighbours with the same grade merge into one
region with one name, so Slicer's data probe says "moderate" but not which
vertebra. The levels map answers both at once (colour: the grade; name: the level
and its grade) and, imported as a segmentation, gives one segment per vertebra
named with its grade. The grade map is the one to threshold or count by grade, and
its legend never changes between scans.

In Slicer: Add Data, tick "LabelMap" for the map, and add the ``.ctbl`` beside it;
then choose that colour table as the map's lookup table (Volumes module). In
ITK-SNAP: Segmentation > Open Segmentation, then Segmentation > Import Label
Descriptions with the ``.label.txt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import VfnbError
from ..io import NIFTI_ENDINGS, atomic_write_text, refuse_outputs_over_inputs, save_nifti, strip_nifti_suffix
from ..levels import (GRADABLE_LABELS, GRADE_COLORS, GRADE_NAMES, GRADES, NOT_ASSESSABLE_COLOR, NOT_GRADED_COLOR,
                      level_name)
from .outputs import refuse_existing

BACKGROUND_CODE = 0
NOT_ASSESSABLE_CODE = len(GRADES) + 1  # 5
NOT_GRADED_CODE = len(GRADES) + 2  # 6


def grade_code(grade: int) -> int:
    """The grade map's code of Genant grade ``grade`` (0-3 -> 1-4; 0 is the background)."""
    if int(grade) not in GRADES:
        raise VfnbError(f"grade {grade!r} is not a Genant grade (expected one of {list(GRADES)})")
    return int(grade) + 1


@dataclass(frozen=True)
class LabelEntry:
    """One line of a colour table: the voxel ``value``, its ``name``, ``color`` (``#rrggbb``) and opacity 0-1."""

    value: int
    name: str
    color: str
    opacity: float = 1.0

    def rgb(self) -> tuple[int, int, int]:
        """``color`` as three 0-255 integers."""
        r, g, b = bytes.fromhex(self.color.lstrip("#"))
        return r, g, b


#: What each code of the grade map means: code -> (name, colour).
GRADE_MAP_CODES: dict[int, tuple[str, str]] = {
    **{grade_code(g): (f"grade {g} {GRADE_NAMES[g]}", GRADE_COLORS[g]) for g in GRADES},
    NOT_ASSESSABLE_CODE: ("not assessable", NOT_ASSESSABLE_COLOR),
    NOT_GRADED_CODE: ("not graded", NOT_GRADED_COLOR),
}
BACKGROUND = LabelEntry(BACKGROUND_CODE, "background", "#000000", opacity=0.0)


def grade_legend() -> list[LabelEntry]:
    """The grade map's colour table: the background and every code, whatever one scan holds."""
    return [BACKGROUND] + [LabelEntry(code, name, color) for code, (name, color) in GRADE_MAP_CODES.items()]


def labels_present(label_map: np.ndarray) -> list[int]:
    """The non-zero labels of a label map, ascending (a histogram: no sort of the whole volume)."""
    counts = np.bincount(np.asarray(label_map).ravel(), minlength=1)
    return [int(v) for v in np.nonzero(counts)[0] if v]


def vertebra_codes(table: pd.DataFrame, present: Sequence[int]) -> dict[int, int]:
    """``{label: grade map code}`` for every label ``present`` in the label map.

    ``table``: the ``vfnb predict`` table of that scan (``label``, ``pred``; ``pred``
    empty when the vertebra is not assessable). A gradable label without a row was
    left out of grading (too small or thin for a patch): not assessable too. The
    sacrum, the coccyx and any label no grader takes are "not graded".
    """
    preds = {}
    for label, pred in zip(table["label"], table["pred"]):
        preds[int(label)] = None if pd.isna(pred) else int(pred)
    codes = {}
    for label in present:
        if label not in GRADABLE_LABELS:
            codes[label] = NOT_GRADED_CODE
        elif preds.get(label) is None:
            codes[label] = NOT_ASSESSABLE_CODE
        else:
            codes[label] = grade_code(preds[label])
    return codes


def grade_map(label_map: np.ndarray, codes: Mapping[int, int]) -> np.ndarray:
    """The label map with each label replaced by its code (uint8, same shape; background stays 0)."""
    label_map = np.asarray(label_map)
    lookup = np.zeros(max([int(label_map.max(initial=0)), *codes]) + 1, dtype=np.uint8)
    for label, code in codes.items():
        lookup[int(label)] = code
    return lookup[label_map]


def level_legend(codes: Mapping[int, int]) -> list[LabelEntry]:
    """The levels map's colour table: each label named ``<level> (<its grade>)`` in its grade's colour."""
    entries = [BACKGROUND]
    for label, code in sorted(codes.items()):
        state, color = GRADE_MAP_CODES[code]
        entries.append(LabelEntry(label, f"{level_name(label)} ({state})", color))
    return entries


# ---------------------------------------------------------------- the two colour-table formats
def slicer_color_table(entries: Sequence[LabelEntry], title: str) -> str:
    """3D Slicer's discrete colour table text (``.ctbl``): ``index name R G B A``, 0-255, no spaces in names."""
    lines = [f"# Color table file {title}", f"# {len(entries)} values"]
    for e in entries:
        name = "_".join(e.name.split())
        lines.append(f"{e.value} {name} {' '.join(str(c) for c in e.rgb())} {round(e.opacity * 255)}")
    return "\n".join(lines) + "\n"


ITKSNAP_HEADER = """\
################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def itksnap_label_description(entries: Sequence[LabelEntry]) -> str:
    """ITK-SNAP's label description text: ``IDX R G B A VIS MSH "LABEL"`` (alpha 0-1; the background hidden)."""
    lines = []
    for e in entries:
        if '"' in e.name:
            raise VfnbError(f"label name {e.name!r}: a double quote cannot appear in an ITK-SNAP label description")
        shown = int(e.value != BACKGROUND_CODE)
        r, g, b = e.rgb()
        lines.append(f"{e.value:5d} {r:5d} {g:4d} {b:4d} {e.opacity:9.2f} {shown:2d} {shown:2d}    \"{e.name}\"")
    return ITKSNAP_HEADER + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the files
@dataclass(frozen=True)
class LabelMapFiles:
    """The six files of one scan's label maps, named from the grade map's path (see the module's text)."""

    grades: Path
    grades_slicer: Path
    grades_itksnap: Path
    levels: Path
    levels_slicer: Path
    levels_itksnap: Path

    @classmethod
    def beside(cls, path: str | Path) -> "LabelMapFiles":
        """``x.nii.gz`` -> itself, ``x.ctbl``, ``x.label.txt``, ``x_levels.nii.gz``, ``x_levels.ctbl``, ``x_levels.label.txt``."""
        path = Path(path)
        ending = next((e for e in NIFTI_ENDINGS if path.name.endswith(e)), None)
        if ending is None or not strip_nifti_suffix(path.name):
            raise VfnbError(f"--label-map {path}: expected the path of a NIfTI file to write (ending in .nii.gz "
                            "or .nii); its colour tables are written beside it")
        stem = path.with_name(strip_nifti_suffix(path.name))
        levels = stem.with_name(stem.name + "_levels")
        return cls(path, stem.with_name(stem.name + ".ctbl"), stem.with_name(stem.name + ".label.txt"),
                   levels.with_name(levels.name + ending), levels.with_name(levels.name + ".ctbl"),
                   levels.with_name(levels.name + ".label.txt"))

    def paths(self) -> list[Path]:
        return [self.grades, self.grades_slicer, self.grades_itksnap, self.levels, self.levels_slicer,
                self.levels_itksnap]


def plan_label_maps(target, scan_names: Sequence[str], folder_mode: bool, inputs: Mapping[str, object],
                    overwrite: bool) -> dict[str, LabelMapFiles]:
    """``{scan name: its files}`` for ``--label-map target``, checked before any scan is graded.

    One scan: ``target`` is the grade map's NIfTI path. Folders of scans: ``target``
    is a folder, ``target/<scan>.nii.gz`` and companions per scan. Refused: a folder
    where a file is expected and the reverse, an output on, inside or containing
    an input (``inputs``: what each is called -> path; ``--overwrite`` or not), and
    existing files unless ``overwrite``.
    """
    if target is None:
        return {}
    target = Path(target)
    if folder_mode:
        if target.exists() and not target.is_dir():
            raise VfnbError(f"{target}: --label-map is a file; with folders of scans it names a folder for "
                            "each scan's label maps")
        files = {name: LabelMapFiles.beside(target / f"{name}.nii.gz") for name in scan_names}
        refuse_outputs_over_inputs({"--label-map": target}, dict(inputs))
    else:
        if target.is_dir():
            raise VfnbError(f"{target}: --label-map is a folder; expected the path of a NIfTI file to write "
                            "(a folder only when --ct and --seg are folders)")
        files = {name: LabelMapFiles.beside(target) for name in scan_names}
        for path in files[scan_names[0]].paths():
            refuse_outputs_over_inputs({"--label-map (or a file written beside it)": path}, dict(inputs))
    for planned in files.values():
        refuse_existing(planned.paths(), overwrite)
    return files


def write_label_maps(grading, files: LabelMapFiles, overwrite: bool = False) -> None:
    """Write one graded scan's grade map, levels map and their colour tables (each file atomically).

    ``grading``: a :class:`vfnb.inference.grading.ScanGrading` (its table, label map
    and the CT's affine). The colour tables go first, so a map on disk always has its legend.
    """
    label_map = np.asarray(grading.label_map)
    if label_map.shape != tuple(grading.image.shape):
        raise VfnbError(f"{files.grades}: the label map's shape {label_map.shape} is not the CT's "
                        f"{tuple(grading.image.shape)}; expected the label map on the CT's grid")
    refuse_existing(files.paths(), overwrite)  # again: something may have appeared while the scan was graded
    codes = vertebra_codes(grading.table, labels_present(label_map))
    grades_legend, levels_legend = grade_legend(), level_legend(codes)
    atomic_write_text(files.grades_slicer, slicer_color_table(grades_legend, files.grades_slicer.name))
    atomic_write_text(files.grades_itksnap, itksnap_label_description(grades_legend))
    atomic_write_text(files.levels_slicer, slicer_color_table(levels_legend, files.levels_slicer.name))
    atomic_write_text(files.levels_itksnap, itksnap_label_description(levels_legend))
    save_nifti(files.grades, grade_map(label_map, codes), grading.affine)
    save_nifti(files.levels, label_map.astype(np.uint8, copy=False), grading.affine)
