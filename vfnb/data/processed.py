"""The processed layout (STUDY §1.1): per-vertebra patches and split lists.

    dataset_root/
      img/<image id>_<label>_<grade>.nii.gz     CT patch, int16 HU
      seg/<image id>_<label>_<grade>.nii.gz     binary mask of that vertebra
      train_file_list.<tag>.yaml                YAML list of patch file names
      val_file_list.<tag>.yaml                  (vfnb's own: validation carved from training CTs)
      test_file_list.<tag>.yaml

The image id may contain underscores: label and grade are parsed from the right.
A list file is a plain YAML list (no tags) of bare patch file names: no path
component (``../x``, ``/abs``, ``sub/x``), each parsing as a patch name, each once.
A tag may hold letters, digits, dots, underscores and dashes (``t0``, ``v1.2-f3``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import DatasetError
from ..io import NIFTI_SUFFIX, atomic_write_yaml, load_yaml, safe_member

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


# ---------------------------------------------------------------- split lists
LIST_INFIX = "_file_list."
LIST_SUFFIX = ".yaml"


def check_tag(tag: str) -> str:
    """A tag names a set of lists (``train_file_list.<tag>.yaml``); letters, digits, ``. _ -``."""
    if not isinstance(tag, str) or not tag or not all(c.isalnum() or c in "._-" for c in tag) \
            or tag.startswith(".") or tag.endswith("."):
        raise DatasetError(f"tag {tag!r} is not valid (expected letters, digits, '.', '_' or '-', "
                           "not starting or ending with '.')")
    return tag


def list_path(root, split: str, tag: str) -> Path:
    """``root / "<split>_file_list.<tag>.yaml"``."""
    return Path(root) / list_filename(split, check_tag(tag))


def validate_list_entries(path, data: Any) -> tuple[list[str], list[str]]:
    """Check a loaded list file's content; returns ``(good names, problems)``.

    Every problem is one line naming ``path`` and the entry. A good name is a bare
    file name (no path component) that parses as a patch name, listed once.
    """
    path = Path(path)
    if data is None:
        return [], [f"{path}: empty file (expected a YAML list of patch file names)"]
    if not isinstance(data, list):
        return [], [f"{path}: top level is a {type(data).__name__} (expected a YAML list of patch file names)"]
    names, problems, seen = [], [], set()
    for i, entry in enumerate(data):
        try:
            # the list file stands in for the root so the message names it
            safe_member(path, entry, what=f"entry {i}")
            parse_patch_name(entry, where=f"{path}: entry {i}")
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        if entry in seen:
            problems.append(f"{path}: entry {i} {entry!r} is listed twice (expected each patch once)")
            continue
        seen.add(entry)
        names.append(entry)
    return names, problems


def read_file_list(root, split: str, tag: str) -> list[str]:
    """The patch file names in ``<split>_file_list.<tag>.yaml`` (a YAML list of bare names).

    Raises :class:`DatasetError` naming the list file when it is missing, is not
    plain YAML (Python tags are refused), is not a list, or holds an entry with a
    path component (``../x``, ``/abs``, ``sub/x``), a name that does not parse as
    ``<image id>_<label>_<grade>.nii.gz`` or a duplicate.
    """
    path = list_path(root, split, tag)
    names, problems = validate_list_entries(path, load_yaml(path))
    if problems:
        raise DatasetError(join_problems(problems))
    return names


def write_file_list(root, split: str, tag: str, names: Iterable[str]) -> Path:
    """Write ``<split>_file_list.<tag>.yaml`` atomically (names validated first)."""
    path = list_path(root, split, tag)
    names = list(names)
    good, problems = validate_list_entries(path, names)
    if problems:
        raise DatasetError(join_problems(problems))
    return atomic_write_yaml(path, good)


def parse_list_filename(filename: str) -> tuple[str, str] | None:
    """``"val_file_list.a.b-1.yaml"`` -> ``("val", "a.b-1")``; ``None`` for other names."""
    for split in SPLITS:
        prefix = split + LIST_INFIX
        if filename.startswith(prefix) and filename.endswith(LIST_SUFFIX):
            tag = filename[len(prefix): -len(LIST_SUFFIX)]
            if tag:
                return split, tag
    return None


def list_tags(root) -> list[str]:
    """Tags that have at least one ``<split>_file_list.<tag>.yaml`` in ``root``, sorted."""
    tags = set()
    for path in Path(root).glob(f"*{LIST_INFIX}*{LIST_SUFFIX}"):
        parsed = parse_list_filename(path.name)
        if parsed is not None and path.is_file():
            tags.add(parsed[1])
    return sorted(tags)


def join_problems(problems: list[str]) -> str:
    """One problem as is; several as a count followed by one problem per line."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------- dataset
class ProcessedDataset:
    """A processed-layout folder: ``img/``, ``seg/`` and split lists.

    ``.patches``: every ``img/*.nii.gz`` parsed as a :class:`PatchName` (sorted by
    file name). ``.records(split, tag)``: one dict per listed patch with keys
    ``image``, ``seg`` (absolute paths as str), ``image_id``, ``label``, ``grade``,
    ``name``. Nothing is read from the NIfTI files here.
    """

    def __init__(self, root):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: processed dataset folder not found")
        for sub in ("img", "seg"):
            if not (self.root / sub).is_dir():
                raise DatasetError(f"{self.root}: no {sub}/ folder (expected the processed layout: "
                                   "img/, seg/, <split>_file_list.<tag>.yaml)")
        self._patches: list[PatchName] | None = None

    @property
    def img_dir(self) -> Path:
        return self.root / "img"

    @property
    def seg_dir(self) -> Path:
        return self.root / "seg"

    @property
    def patches(self) -> list[PatchName]:
        if self._patches is None:
            self._patches = [parse_patch_name(p.name, where=str(p.parent))
                             for p in sorted(self.img_dir.glob("*" + NIFTI_SUFFIX))
                             if not p.name.startswith(".")]  # hidden: temporary files of atomic writes
        return list(self._patches)

    def tags(self) -> list[str]:
        return list_tags(self.root)

    def records(self, split: str, tag: str) -> list[dict]:
        """Records for the patches in ``<split>_file_list.<tag>.yaml``, in list order."""
        names = read_file_list(self.root, split, tag)
        where = list_path(self.root, split, tag)
        records, problems = [], []
        for name in names:
            patch = parse_patch_name(name)
            image, seg = self.img_dir / name, self.seg_dir / name
            for sub, path in (("img", image), ("seg", seg)):
                if not path.is_file():
                    problems.append(f"{where}: lists {name!r} but {sub}/{name} does not exist in {self.root}")
            records.append({"image": str(image), "seg": str(seg), "image_id": patch.image_id,
                            "label": patch.label, "grade": patch.grade, "name": name})
        if problems:
            raise DatasetError(join_problems(problems))
        return records

    def __repr__(self) -> str:
        return f"ProcessedDataset({str(self.root)!r})"
