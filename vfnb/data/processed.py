"""The processed layout (REFERENCE 1.1): per-vertebra patches and split lists.

    dataset_root/
      img/<image id>_<label>_<grade>.nii.gz     CT patch, int16 HU
      seg/<image id>_<label>_<grade>.nii.gz     binary mask of that vertebra
      train_file_list.<tag>.yaml                YAML list of patch file names
      val_file_list.<tag>.yaml                  (vfnb's own: validation carved from training CTs)
      test_file_list.<tag>.yaml

The image id may contain underscores: label and grade are parsed from the right.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError
from ..io import NIFTI_SUFFIX

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PatchName:
    """A processed patch's identity, parsed from its file name."""

    image_id: str
    label: int
    grade: int

    @property
    def filename(self) -> str:
        return patch_filename(self.image_id, self.label, self.grade)


def patch_filename(image_id: str, label: int, grade: int) -> str:
    """``("verse004", 20, 1)`` -> ``"verse004_20_1.nii.gz"``."""
    return f"{image_id}_{int(label)}_{int(grade)}{NIFTI_SUFFIX}"


def parse_patch_name(filename: str, where: str = "") -> PatchName:
    """Parse ``<image id>_<label>_<grade>.nii.gz`` from the right.

    Raises :class:`DatasetError` (prefixed by ``where``, e.g. the list file) when
    the name does not parse, the label is outside 1-28 or the grade outside 0-3.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(filename, str) or not filename.endswith(NIFTI_SUFFIX):
        raise DatasetError(f"{prefix}patch name {filename!r} does not end in {NIFTI_SUFFIX} "
                           "(expected <image id>_<label>_<grade>.nii.gz)")
    stem = filename[: -len(NIFTI_SUFFIX)]
    parts = stem.rsplit("_", 2)
    if len(parts) != 3 or not parts[0]:
        raise DatasetError(f"{prefix}patch name {filename!r} does not parse "
                           "(expected <image id>_<label>_<grade>.nii.gz)")
    image_id, label_text, grade_text = parts
    if not label_text.isdigit() or not 1 <= int(label_text) <= 28:
        raise DatasetError(f"{prefix}patch name {filename!r}: label {label_text!r} is not an integer 1-28")
    if not grade_text.isdigit() or not 0 <= int(grade_text) <= 3:
        raise DatasetError(f"{prefix}patch name {filename!r}: grade {grade_text!r} is not an integer 0-3")
    return PatchName(image_id, int(label_text), int(grade_text))


def list_filename(split: str, tag: str) -> str:
    """``("train", "f0")`` -> ``"train_file_list.f0.yaml"``."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return f"{split}_file_list.{tag}.yaml"
