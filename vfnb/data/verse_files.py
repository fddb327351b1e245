"""Find the scans of a VerSe release in the layouts its organisers publish.

The releases (<https://github.com/anjany/verse>) name files after the Brain
Imaging Data Structure (BIDS): a subject folder per subject, under ``rawdata/`` for
the CT and ``derivatives/`` for the annotations::

    <release>/rawdata/sub-verse004/sub-verse004_ct.nii.gz                   CT
    <release>/derivatives/sub-verse004/sub-verse004_seg-vert_msk.nii.gz     vertebra label map
    <release>/derivatives/sub-verse004/sub-verse004_seg-subreg_ctd.json     vertebra centroids

VerSe 2020 adds BIDS entities between the subject and the suffix when one subject
has several scans (``sub-gl003_dir-ax_ct.nii.gz``, ``sub-verse506_split-verse290_ct.nii.gz``);
the *stem* before the suffix (``sub-gl003_dir-ax``) names one scan and becomes its
case id. VerSe 2020 comes as split folders (``01_training``, ``02_validation``,
``03_test``; ``dataset-01training`` ... once unzipped), VerSe 2019 as
``dataset-verse19training`` ...; each holds its own ``rawdata/`` and ``derivatives/``.
The folder given may be one such release or split folder, or any folder above
several: every ``rawdata/`` / ``derivatives/`` pair below it is read, and
:attr:`VerseTree.layout` says which folders were found.

Older VerSe 2019 downloads (the challenge's own structure) used flat names in one
folder, ``verse004.nii.gz`` (CT), ``verse004_seg.nii.gz`` (label map),
``verse004_ctd.json``; they are read too, with the case id ``sub-verse004``, so
either download of a scan imports under one name.

A hostile or damaged tree is refused rather than half read: a CT, label map or
centroid file that is a symbolic link leading out of the folder given, a linked
folder leading out of it, two different files claiming one case id. Names that
are almost VerSe names (a ``_ct.nii.gz`` file whose stem is not BIDS, a subject
folder that does not match its files) are skipped with a warning. Nothing here
reads voxels.
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from ..io import link_outside
from ..levels import LEVEL_NAMES
from .processed import join_problems

# a BIDS stem: the subject entity, then key-value entities, values alphanumeric (no "/", "." or "..")
BIDS_STEM = r"sub-[A-Za-z0-9]+(?:_[A-Za-z0-9]+-[A-Za-z0-9]+)*"
BIDS_FILES = {  # kind -> (folder under the release, file-name pattern)
    "ct": ("rawdata", re.compile(rf"^({BIDS_STEM})_ct\.nii\.gz$")),
    "mask": ("derivatives", re.compile(rf"^({BIDS_STEM})_seg-vert_msk\.nii\.gz$")),
    "centroids": ("derivatives", re.compile(rf"^({BIDS_STEM})_seg-(?:subreg|vb)_ctd\.json$")),
}
BIDS_SUFFIXES = {"ct": "_ct.nii.gz", "mask": "_seg-vert_msk.nii.gz"}
FLAT_STEM = r"[a-z]+[0-9]+"  # verse004, gl017
FLAT_FILES = {
    "ct": re.compile(rf"^({FLAT_STEM})\.nii\.gz$"),
    "mask": re.compile(rf"^({FLAT_STEM})_seg\.nii\.gz$"),
    "centroids": re.compile(rf"^({FLAT_STEM})_ctd\.json$"),
}
SPLIT_NAME = re.compile(r"(training|validation|test)$", re.IGNORECASE)


@dataclass
class VerseScan:
    """One scan: its case id (a BIDS stem), its files and the release folder holding them."""

    stem: str  # "sub-verse004", "sub-gl003_dir-ax", "sub-verse506_split-verse290"
    ct_path: Path
    mask_path: Path
    centroids_path: Path | None = None
    release: str = "."  # the release / split folder, relative to the folder given

    @property
    def subject(self) -> str:
        """The subject entity: ``"sub-verse506"``."""
        return self.stem.split("_", 1)[0]

    @property
    def entities(self) -> dict[str, str]:
        """The other BIDS entities: ``{"split": "verse290"}``, ``{"dir": "ax"}``."""
        return dict(part.split("-", 1) for part in self.stem.split("_")[1:])


@dataclass
class VerseTree:
    """What :func:`find_verse_scans` found: paired scans, warnings, and a line saying which layout."""

    root: Path
    scans: list[VerseScan]
    warnings: list[str] = field(default_factory=list)
    layout: str = ""


# ---------------------------------------------------------------- walking the tree
def _walk(root: Path) -> tuple[list[Path], list[str]]:
    """Every file below ``root`` without following folder links; problems for links leading out of it.

    Hidden folders (``.git``, staging folders) are not entered. A linked folder
    that stays inside ``root`` is not entered either: its files are reached
    through their real path.
    """
    files, problems = [], []
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in list(dirs):
            path = here / name
            if name.startswith(".") or path.is_symlink():
                dirs.remove(name)
                if path.is_symlink() and link_outside(root, path):
                    problems.append(f"{path}: symbolic link to the folder {path.resolve()}, outside the VerSe "
                                    f"folder {root}; refused (expected the release's files inside the folder "
                                    "given: copy them in, or give the real folder)")
        dirs.sort()
        files.extend(here / name for name in sorted(names) if not name.startswith("."))
    return files, problems


def _classify(root: Path, path: Path) -> tuple[str, str, str, str] | None:
    """``(form, kind, release, stem)`` of a VerSe file, None for anything else (raises nothing)."""
    for kind, (folder, pattern) in BIDS_FILES.items():
        match = pattern.match(path.name)
        release = path.parent.parent.parent
        if match and path.parent.parent.name == folder and (release == root or root in release.parents):
            return "bids", kind, _relative(root, release), match.group(1)
    if path.parent.parent.name not in ("rawdata", "derivatives"):
        for kind, pattern in FLAT_FILES.items():
            match = pattern.match(path.name)
            if match:
                return "flat", kind, _relative(root, path.parent), match.group(1)
    return None


def _relative(root: Path, folder: Path) -> str:
    return str(folder.relative_to(root)) if folder != root else "."


def _near_miss(path: Path) -> str | None:
    """A warning for a file that looks meant as a VerSe file but is not named or placed as one."""
    name = path.name
    for kind, suffix in BIDS_SUFFIXES.items():
        if name.endswith(suffix):
            where = path.parent.parent.name
            folder = BIDS_FILES[kind][0]
            if where in ("rawdata", "derivatives") or name.startswith("sub-"):
                return (f"{path}: not read as a VerSe {'CT' if kind == 'ct' else 'label map'} (expected "
                        f"{folder}/sub-<id>/sub-<id>[_<key>-<value>...]{suffix}, letters and digits only; skipped)")
    return None


# ---------------------------------------------------------------- pairing
def find_verse_scans(verse_root) -> VerseTree:
    """Pair CTs and label maps below ``verse_root`` (see the module docstring for the layouts).

    Raises :class:`DatasetError` for a missing folder, a folder holding no VerSe CT,
    links leading out of the folder, and two different files for one case id.
    A CT without a label map (or a label map without a CT) is a warning.
    """
    root = Path(verse_root)
    if not root.is_dir():
        raise DatasetError(f"{root}: VerSe folder not found")
    files, problems = _walk(root)
    found: dict[str, dict[str, list[tuple[str, Path]]]] = {"ct": {}, "mask": {}, "centroids": {}}
    forms: dict[str, set[str]] = {"bids": set(), "flat": set()}
    warnings = []
    for path in files:
        what = _classify(root, path)
        if what is None:
            note = _near_miss(path)
            if note:
                warnings.append(note)
            continue
        form, kind, release, stem = what
        if form == "bids" and path.parent.name != stem.split("_", 1)[0]:
            warnings.append(f"{path}: in the subject folder {path.parent.name}, not {stem.split('_', 1)[0]} "
                            "(expected each subject's files in its own sub-<id> folder; skipped)")
            continue
        if form == "flat":
            if kind == "ct" and not (path.parent / f"{stem}_seg.nii.gz").exists():
                continue  # a NIfTI with a short name, not a flat VerSe CT
            stem = "sub-" + stem
        outside = link_outside(root, path)
        if outside:
            problems.append(f"{path}: symbolic link to {path.resolve()}, outside the VerSe folder {root}; refused "
                            "(expected the release's files inside the folder given: copy them in, or give the "
                            "real folder)")
            continue
        forms[form].add(release)
        found[kind].setdefault(stem, []).append((release, path))
    if problems:
        raise DatasetError(join_problems(problems))
    scans = _pair(root, found, warnings)
    if not scans:
        raise DatasetError(f"{root}: no VerSe scan found (expected rawdata/sub-<id>/sub-<id>_ct.nii.gz with "
                           "derivatives/sub-<id>/sub-<id>_seg-vert_msk.nii.gz in the folder or in release "
                           "folders below it, or the flat names verse004.nii.gz with verse004_seg.nii.gz)")
    return VerseTree(root, scans, warnings, describe_layout(root, forms))


def _pair(root: Path, found: dict, warnings: list[str]) -> list[VerseScan]:
    """One :class:`VerseScan` per case id with both a CT and a label map in one release folder."""
    scans, problems = [], []
    for stem in sorted(set(found["ct"]) | set(found["mask"])):
        cts, masks = dict(found["ct"].get(stem, [])), dict(found["mask"].get(stem, []))
        ctds = dict(found["centroids"].get(stem, []))
        releases = sorted(set(cts) & set(masks))
        for release in sorted(set(cts) - set(masks)):
            warnings.append(f"{cts[release]}: no label map {stem}_seg-vert_msk.nii.gz (or flat {stem[4:]}_seg.nii.gz) "
                            "beside it in the release (scan skipped)")
        for release in sorted(set(masks) - set(cts)):
            warnings.append(f"{masks[release]}: no CT {stem}_ct.nii.gz (or flat {stem[4:]}.nii.gz) in the release "
                            "(label map skipped)")
        if not releases:
            continue
        first = releases[0]
        for other in releases[1:]:
            if _same_file(cts[first], cts[other]) and _same_file(masks[first], masks[other]):
                warnings.append(f"{cts[other]}: the same scan as {cts[first]} (identical files; read once)")
            else:
                problems.append(f"{root}: two different scans are named {stem}: {cts[first]} and {cts[other]} "
                                "(their files differ); expected one scan per case id: give one release "
                                "as the VerSe folder")
        scans.append(VerseScan(stem, cts[first], masks[first], ctds.get(first), first))
    if problems:
        raise DatasetError(join_problems(problems))
    return scans


def _same_file(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def describe_layout(root: Path, forms: dict[str, set[str]]) -> str:
    """One line: which release / split folders (and which naming) were found below ``root``."""
    parts = []
    bids = sorted(forms.get("bids", ()))
    if bids == ["."]:
        kind = "split folder" if SPLIT_NAME.search(root.resolve().name) else "release folder"
        parts.append(f"one {kind} ({root.resolve().name}: rawdata/, derivatives/)")
    elif len(bids) == 1:
        kind = "split folder" if SPLIT_NAME.search(Path(bids[0]).name) else "release folder"
        parts.append(f"one {kind} below it ({bids[0]}: rawdata/, derivatives/)")
    elif bids:
        splits = all(SPLIT_NAME.search(Path(r).name) for r in bids if r != ".")
        parts.append(f"{len(bids)} {'split' if splits else 'release'} folders with rawdata/ and derivatives/ "
                     f"({', '.join(bids)})")
    flat = sorted(forms.get("flat", ()))
    if flat:
        parts.append(f"flat VerSe 2019 names (verse<id>.nii.gz, verse<id>_seg.nii.gz) in {', '.join(flat)}")
    return "; ".join(parts)


# ---------------------------------------------------------------- centroids
def read_centroids(path) -> tuple[tuple[str, ...] | None, dict[int, tuple[float, float, float]]]:
    """``(direction, {label: (X, Y, Z)})`` of a VerSe centroid file.

    The file is a JSON list whose first entry may give the axis codes of the
    coordinates (``{"direction": ["P", "I", "R"]}``), then one entry per vertebra
    (``{"label": 20, "X": ..., "Y": ..., "Z": ...}``). Entries with NaN coordinates
    (the organisers' files hold some) are left out. Raises :class:`DatasetError`
    naming the file for anything else.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the centroid file ({type(exc).__name__}: {exc}); expected a "
                           "JSON list such as [{\"direction\": [\"P\", \"I\", \"R\"]}, {\"label\": 20, "
                           "\"X\": 1.0, \"Y\": 2.0, \"Z\": 3.0}]") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: top level is a {type(entries).__name__} (expected a JSON list of centroids)")
    direction, centroids = None, {}
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and "direction" in entry:
            direction = tuple(str(code) for code in entry["direction"])
            continue
        label = entry.get("label") if isinstance(entry, dict) else None
        coords = [entry.get(axis) for axis in "XYZ"] if isinstance(entry, dict) else []
        if not (isinstance(label, (int, float)) and label == int(label) and int(label) in LEVEL_NAMES) or not all(
                isinstance(c, (int, float)) for c in coords):
            raise DatasetError(f"{path}: entry {i} is {entry!r} (expected {{\"label\": 1-28, \"X\": <number>, "
                               "\"Y\": <number>, \"Z\": <number>}})")
        if all(math.isfinite(c) for c in coords):
            centroids[int(label)] = tuple(float(c) for c in coords)
    return direction, centroids
