"""Vertebra label maps in VerSe or TotalSegmentator numbering, read into VerSe labels.

Inside vfnb every vertebra is a VerSe label (:mod:`vfnb.levels`: 1-7 C1-C7, 8-19
T1-T12, 20-25 L1-L6, 26 sacrum, 27 coccyx, 28 T13). Users bring label maps from two
conventions, and the same number means another bone (or an organ) in each:

- **VerSe**: the labels above; the number rises caudally.
- **TotalSegmentator v2, task ``total``** (:data:`TOTALSEG_TOTAL_VERTEBRAE`): IDs 1-24
  are organs (spleen, kidneys, liver, lungs, colon, ...), 25 the sacrum, 26-50 the
  vertebrae from S1 up to C1 (27 L5, 31 L1, 32 T12, 43 T1, 44 C7, 50 C1), 51-117 vessels,
  muscles and other bones; the number falls caudally. TotalSegmentator has no T13 and
  no L6 (a sixth lumbar or thirteenth thoracic vertebra gets a neighbour's name), so a
  map read from it never holds VerSe 25 or 28. Its sacrum (25) and S1 (26) both become
  the VerSe sacrum (26); the coccyx, where a file names one, becomes 27. Neither is
  ever graded.

:func:`read_vertebra_labels` reads, from one path:

1. a multilabel NIfTI in either numbering;
2. a folder of per-structure masks, as TotalSegmentator writes without ``--ml``: the
   files whose name says a level (below) are read, every other file (``liver.nii.gz``,
   ``rib_left_1.nii.gz``, ...) is ignored, empty masks are skipped; two masks claiming
   one voxel for different levels are refused;
3. a single 0/1 mask of one vertebra, whose level its file name says.

File names that say a level (case-insensitive, ``.nii`` or ``.nii.gz``): an optional
``vertebrae_`` prefix, the level, an optional ``_mask`` / ``_msk`` / ``_seg`` /
``_label`` suffix: ``vertebrae_L1.nii.gz``, ``L1.nii.gz``, ``T12_mask.nii.gz``,
``vertebrae_S1.nii.gz``, ``sacrum.nii.gz``, ``coccyx.nii.gz``. Levels: C1-C7, T1-T13,
L1-L6, S1, sacrum, coccyx (:data:`FILE_LEVEL_PATTERN`).

How the numbering is decided
----------------------------
The scheme is given (``verse`` | ``totalsegmentator``) or found (``auto``), in this
order; every refusal names the file, the IDs found and what was expected:

1. **Label names in the header.** TotalSegmentator stores the name of every label in
   a NIfTI header extension (an XML ``CaretExtension`` with a ``LabelTable`` of
   ``<Label Key="31">vertebrae_L1</Label>``). Where one is present the names decide:
   each ID becomes the level its name says, names that are not vertebrae (organs)
   are background, and an ID in the voxels that the table does not name is refused.
   A given scheme that contradicts the names is refused.
2. **A single 0/1 mask.** A file holding only 0 and 1 is one structure, not a map of
   C1 (VerSe) or of the spleen (TotalSegmentator): its file name must say the level,
   else it is refused. Only ``verse`` given says it is a VerSe map holding C1 alone.
3. **IDs above 28.** No VerSe map holds them: only TotalSegmentator explains them
   (IDs above 117 fit neither numbering and are refused). IDs above 28 that cover
   only a few voxels (less than :data:`MIN_EVIDENCE_MM3` each) are stray values in a
   VerSe map, not evidence, and are refused.
4. **IDs 1-28 only.** Both numberings are possible; each is tried and must be
   *plausible* (below). Organs of a ``total`` map (1-24) never form a stack of
   vertebra-sized structures in label order, so when IDs 1-24 are present a
   plausible VerSe reading wins; otherwise a plausible TotalSegmentator reading with
   a vertebra to grade (a ``total`` map with IDs above 28 removed by hand); a VerSe
   stack running the wrong way is read (with a note) only when no TotalSegmentator
   reading fits; both or neither fitting is refused. When only IDs
   25-28 are present (VerSe L6, sacrum, coccyx, T13; TotalSegmentator sacrum, S1, L5,
   L4) the spatial order decides: C1 is superior; the VerSe number rises caudally,
   the TotalSegmentator one falls. When both orders fit (a single level, or two
   levels whose order both numberings allow), the distance between the levels along
   the body axis decides when it fits the number of levels between them
   (:data:`STEP_MM`) in one numbering only. Otherwise the map is refused as
   ambiguous: give the scheme.

Plausibility of a reading (each vertebra after conversion to VerSe labels):

- *anatomical order*: the centroids, in world millimetres through the affine (so any
  storage orientation, RAS, LPS or oblique, reads alike), run along the superior axis
  in spine order (T13 between T12 and L1). A stack running the wrong way (C1
  inferior: a header whose superior axis is reversed) is read, with a note, except
  where the direction is what decides the numbering;
- *sizes per level*, on the box of a structure's voxels less :data:`SPECK_SHARE` at
  either end of each axis (so stray specks do not count): no label over half the scan
  or over 150 mm along an axis (the bounds of :mod:`vfnb.data.plausibility`); a vertebra at most
  :data:`MAX_HEIGHT_MM` tall along the body axis and :data:`MAX_VOLUME_ML` in volume
  (the sacrum and the coccyx have their own bounds). Only upper bounds: a vertebra
  cut by the scan's edge is small, and is left to pre-processing to skip;
- *spacing* (contiguity): the distance along the body axis between successive
  levels fits the levels between them (:data:`STEP_MM` per level step), used to
  decide between two readings that both pass the order and sizes.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import DatasetError, ParamsError
from ..io import AFFINE_TOLERANCE_MM, NIFTI_ENDINGS, load_nifti
from ..levels import GRADABLE_LABELS, MAX_LABEL, label_from_level, level_name, spine_order

SCHEMES = ("verse", "totalsegmentator")
SCHEME_CHOICES = ("auto",) + SCHEMES

#: TotalSegmentator v2, task ``total``: the IDs of the sacrum and the vertebrae (every other
#: ID of the task, 1-24 and 51-117, is an organ, a vessel, a muscle or another bone).
TOTALSEG_TOTAL_VERTEBRAE: dict[int, str] = {
    25: "sacrum", 26: "vertebrae_S1",
    27: "vertebrae_L5", 28: "vertebrae_L4", 29: "vertebrae_L3", 30: "vertebrae_L2", 31: "vertebrae_L1",
    32: "vertebrae_T12", 33: "vertebrae_T11", 34: "vertebrae_T10", 35: "vertebrae_T9", 36: "vertebrae_T8",
    37: "vertebrae_T7", 38: "vertebrae_T6", 39: "vertebrae_T5", 40: "vertebrae_T4", 41: "vertebrae_T3",
    42: "vertebrae_T2", 43: "vertebrae_T1",
    44: "vertebrae_C7", 45: "vertebrae_C6", 46: "vertebrae_C5", 47: "vertebrae_C4", 48: "vertebrae_C3",
    49: "vertebrae_C2", 50: "vertebrae_C1",
}
TOTALSEG_TOTAL_MAX_ID = 117  # the task's last ID (costal cartilages)

_LEVEL = r"(C[1-7]|T1[0-3]|T[1-9]|L[1-6]|S1|sacrum|coccyx)"
#: A structure name that is a vertebra: ``vertebrae_L1``, ``L1``, ``sacrum``, ``coccyx``.
STRUCTURE_PATTERN = re.compile(rf"(?:vertebrae?[_-])?{_LEVEL}", re.IGNORECASE)
#: A file name (without ``.nii`` / ``.nii.gz``) that says a level: ``vertebrae_L1``, ``T12_mask``.
FILE_LEVEL_PATTERN = re.compile(rf"(?:vertebrae?[_-])?{_LEVEL}(?:[_-](?:mask|msk|seg|label))?", re.IGNORECASE)

SACRUM, COCCYX = 26, 27
MAX_HEIGHT_MM = {"vertebra": 80.0, SACRUM: 160.0, COCCYX: 80.0}  # along the body axis
MAX_VOLUME_ML = {"vertebra": 300.0, SACRUM: 800.0, COCCYX: 60.0}
SPECK_SHARE = 0.005  # sizes are measured on the box of all but this share of voxels at each end of an axis
MIN_EVIDENCE_MM3 = 50.0  # IDs above 28 smaller than this are specks, not TotalSegmentator structures
#: Centroid distance along the body axis from one level to the next, by the lower level's
#: region (mm, adult anatomy with wide margins: a collapsed vertebra shortens a step).
STEP_MM = {"C": (4.0, 40.0), "T": (10.0, 55.0), "L": (15.0, 75.0), SACRUM: (15.0, 130.0), COCCYX: (15.0, 150.0)}
_VERSE_SEQUENCE = list(range(1, 20)) + [28] + list(range(20, 28))  # C1 .. T12, T13, L1 .. L6, sacrum, coccyx
_TOTALSEG_SEQUENCE = list(range(1, 25)) + [SACRUM]  # C1 .. L5, sacrum
_OPTIONAL = {25, 28}  # L6, T13: most spines have neither
MAX_XML_BYTES = 1_000_000


@dataclass
class VertebraLabels:
    """A label map read into VerSe numbering.

    ``array``: uint8 VerSe labels (0 background) on the file's grid; ``affine``: voxel
    -> world mm (RAS+); ``scheme``: the numbering it was read in, ``"verse"`` or
    ``"totalsegmentator"`` (per-structure masks are TotalSegmentator's format);
    ``source``: the path, for messages; ``layout``: ``"multilabel"``,
    ``"structure folder"`` or ``"structure mask"``; ``how``: how the scheme was
    decided, in words; ``notes``: things to tell the user (e.g. a reversed stack).
    """

    array: np.ndarray
    affine: np.ndarray
    scheme: str
    source: str
    layout: str = "multilabel"
    how: str = ""
    notes: list = field(default_factory=list)

    def describe(self) -> str:
        """One line for a report: the scheme, the layout and how it was decided."""
        return f"{self.scheme} ({self.layout}; {self.how})"


# ---------------------------------------------------------------- names
def structure_label(name: str) -> int | None:
    """The VerSe label of a structure name (``vertebrae_L1`` -> 20, ``sacrum`` -> 26); None for organs."""
    match = STRUCTURE_PATTERN.fullmatch(str(name).strip())
    return None if match is None else label_from_level(match.group(1))


def file_level(path: str | Path) -> int | None:
    """The VerSe label a file name says (``vertebrae_L1.nii.gz``, ``T12_mask.nii.gz``); None if it says none."""
    name = Path(path).name
    stem = next((name[:-len(end)] for end in NIFTI_ENDINGS if name.endswith(end)), name)
    match = FILE_LEVEL_PATTERN.fullmatch(stem)
    return None if match is None else label_from_level(match.group(1))


def header_label_names(header, where: str) -> dict[int, str] | None:
    """``{ID: name}`` from the label table TotalSegmentator writes in a NIfTI header extension; None without one.

    The table is XML (``CaretExtension`` / ``LabelTable`` / ``Label Key=...``). A document
    type declaration (entities) is refused rather than expanded.
    """
    for extension in getattr(header, "extensions", None) or []:
        content = extension.get_content()
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, (bytes, bytearray)) or b"LabelTable" not in content:
            continue
        if len(content) > MAX_XML_BYTES or b"<!DOCTYPE" in content or b"<!ENTITY" in content:
            raise DatasetError(f"{where}: the label table in the NIfTI header extension is over "
                               f"{MAX_XML_BYTES} bytes or declares entities; expected TotalSegmentator's plain "
                               "XML label table")
        try:
            root = ElementTree.fromstring(bytes(content).rstrip(b"\x00 \n\r\t").decode("utf-8"))
            return {int(label.get("Key")): (label.text or "").strip() for label in root.iter("Label")}
        except (ElementTree.ParseError, UnicodeDecodeError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: the label table in the NIfTI header extension cannot be read "
                               f"({type(exc).__name__}: {exc}); expected <Label Key=\"ID\">name</Label> "
                               "entries as TotalSegmentator writes them") from None
    return None


# ---------------------------------------------------------------- geometry of each structure
@dataclass
class _Blob:
    """Where one structure lies: voxel count, centroid and box (specks left out) in world mm, voxel volume."""

    count: int
    centroid: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    voxel_mm3: float

    def merged(self, other: "_Blob") -> "_Blob":
        count = self.count + other.count
        centroid = (self.centroid * self.count + other.centroid * other.count) / count
        return _Blob(count, centroid, np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi), self.voxel_mm3)

    @property
    def height_mm(self) -> float:
        return float(self.hi[2] - self.lo[2])

    @property
    def volume_ml(self) -> float:
        return self.count * self.voxel_mm3 / 1000.0


class _Map:
    """A label map's IDs and the geometry of each (computed once, on demand), for every reading tried."""

    def __init__(self, data: np.ndarray, affine: np.ndarray):
        from scipy import ndimage

        self.data, self.affine = data, affine
        self.boxes = ndimage.find_objects(data)  # one pass over the voxels: the box of every ID
        self.ids = [value for value, box in enumerate(self.boxes, start=1) if box is not None]
        self.voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
        self._cache: dict[int, _Blob] = {}

    def blob(self, value: int) -> _Blob | None:
        """Count, centroid and box (world mm) of ID ``value``; None when absent."""
        if value not in self._cache:
            box = self.boxes[value - 1] if 0 < value <= len(self.boxes) else None
            if box is None:
                return None
            inside = self.data[box] == value
            count = int(inside.sum())
            profiles = [inside.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
            index = [box[axis].start + float((np.arange(len(p)) * p).sum()) / count for axis, p in enumerate(profiles)]
            # the box holding all but SPECK_SHARE of the voxels at either end of each axis: a few stray
            # voxels far away (a segmentation's specks) do not make a vertebra tall
            cut = [np.cumsum(p) / count for p in profiles]
            span = [(b.start + int(np.searchsorted(c, SPECK_SHARE, side="right")),
                     b.start + int(np.searchsorted(c, 1.0 - SPECK_SHARE, side="left")) + 1) for b, c in zip(box, cut)]
            corners = np.array([[lo - 0.5 if bit == 0 else hi - 0.5 for (lo, hi), bit in zip(span, bits)]
                                for bits in np.ndindex(2, 2, 2)])
            world = corners @ self.affine[:3, :3].T + self.affine[:3, 3]
            centroid = self.affine[:3, :3] @ np.array(index) + self.affine[:3, 3]
            self._cache[value] = _Blob(count, centroid, world.min(0), world.max(0), self.voxel_mm3)
        return self._cache[value]


# ---------------------------------------------------------------- readings
@dataclass
class _Reading:
    """One way to read the IDs: ``lut[ID] = VerSe label`` for the vertebrae (other IDs are background)."""

    scheme: str
    lut: dict
    how: str
    problems: list = field(default_factory=list)
    order: str = "single"  # "anatomical" | "reversed" | "single" | "none"
    spacing_ok: bool = True

    @property
    def anatomical(self) -> bool:
        return not self.problems and self.order in ("anatomical", "single")

    def levels(self, ids) -> list[int]:
        return sorted({self.lut[i] for i in ids if i in self.lut}, key=spine_order)

    def gradable(self, ids) -> bool:
        return any(label in GRADABLE_LABELS for label in self.levels(ids))


def _verse_reading(ids) -> _Reading:
    return _Reading("verse", {i: i for i in ids if 1 <= i <= MAX_LABEL}, "VerSe labels")


def _totalseg_reading(ids) -> _Reading:
    lut = {i: structure_label(name) for i, name in TOTALSEG_TOTAL_VERTEBRAE.items()}
    return _Reading("totalsegmentator", lut, "TotalSegmentator v2 `total` IDs")


def _named(ids, what: str, reading: _Reading) -> str:
    levels = [f"{level_name(reading.lut[i])} (ID {i})" for i in sorted(ids) if i in reading.lut]
    return f"{what}: {', '.join(levels) or 'no vertebra'}"


def _level_blobs(reading: _Reading, voxels: _Map) -> dict[int, _Blob]:
    """The geometry of each VerSe level of ``reading`` (IDs of one level merged, e.g. sacrum and S1)."""
    out: dict[int, _Blob] = {}
    for value in voxels.ids:
        label = reading.lut.get(value)
        if label:
            blob = voxels.blob(value)
            out[label] = blob if label not in out else out[label].merged(blob)
    return out


def _step_bounds(label: int) -> tuple[float, float]:
    if label in (SACRUM, COCCYX):
        return STEP_MM[label]
    return STEP_MM[level_name(label)[0]]


def _spacing_ok(reading: _Reading, ordered: list[int], heights: list[float]) -> bool:
    """Whether the distance between successive levels fits the level steps between them."""
    sequence = _VERSE_SEQUENCE if reading.scheme == "verse" else _TOTALSEG_SEQUENCE
    present = set(ordered)
    for (a, za), (b, zb) in zip(zip(ordered, heights), zip(ordered[1:], heights[1:])):
        if a not in sequence or b not in sequence:
            return False
        path = sequence[sequence.index(a) + 1:sequence.index(b) + 1]
        low = sum(_step_bounds(l)[0] for l in path if l not in _OPTIONAL or l in present)
        high = sum(_step_bounds(l)[1] for l in path)
        if not low <= abs(za - zb) <= high:
            return False
    return True


def _assess(reading: _Reading, voxels: _Map) -> _Reading:
    """Fill ``reading.problems``, ``order`` and ``spacing_ok`` (see the module docstring)."""
    from .plausibility import MAX_LABEL_SHARE, MAX_VERTEBRA_MM

    levels = _level_blobs(reading, voxels)
    if not levels:
        reading.problems.append("no vertebra")
        reading.order = "none"
        return reading
    names = {label: level_name(label) for label in levels}
    for label, blob in sorted(levels.items(), key=lambda item: spine_order(item[0])):
        kind = label if label in (SACRUM, COCCYX) else "vertebra"
        extent = blob.hi - blob.lo
        if blob.count > MAX_LABEL_SHARE * voxels.data.size:
            reading.problems.append(f"{names[label]} covers {100 * blob.count / voxels.data.size:.0f} % of the "
                                    "scan: a background or body outline, not a vertebra")
        elif max(extent) > MAX_VERTEBRA_MM:
            reading.problems.append(f"{names[label]} spans {' x '.join(f'{e:.0f}' for e in extent)} mm (one "
                                    f"vertebra spans at most about {MAX_VERTEBRA_MM:.0f} mm along any axis)")
        elif blob.height_mm > MAX_HEIGHT_MM[kind] or blob.volume_ml > MAX_VOLUME_ML[kind]:
            reading.problems.append(f"{names[label]} is {blob.height_mm:.0f} mm tall and {blob.volume_ml:.0f} cm3 "
                                    f"(a {'vertebra' if kind == 'vertebra' else names[label]} is at most "
                                    f"{MAX_HEIGHT_MM[kind]:.0f} mm and {MAX_VOLUME_ML[kind]:.0f} cm3: an organ?)")
    ordered = sorted(levels, key=spine_order)
    heights = [float(levels[label].centroid[2]) for label in ordered]
    steps = np.diff(heights)
    if len(ordered) > 1:
        if np.all(steps < 0):
            reading.order = "anatomical"
        elif np.all(steps > 0):
            reading.order = "reversed"
        else:
            i = int(np.argmax(steps >= 0))
            reading.order = "none"
            reading.problems.append(f"{names[ordered[i + 1]]} lies {steps[i]:.0f} mm above {names[ordered[i]]} "
                                    "(expected the levels stacked in spine order along the body axis)")
    reading.spacing_ok = _spacing_ok(reading, ordered, heights)
    return reading


def _convert(data: np.ndarray, lut: Mapping[int, int]) -> np.ndarray:
    table = np.zeros(int(data.max(initial=0)) + 1, dtype=np.uint8)
    for value, label in lut.items():
        if value < table.size and label:
            table[value] = label
    return table[data]


# ---------------------------------------------------------------- decisions
def _as_ids(data: np.ndarray, where: str) -> np.ndarray:
    """The voxels as non-negative integer IDs (uint8 or uint16), refused when they cannot be label IDs."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise DatasetError(f"{where}: label map has shape {data.shape}; expected a 3D volume of label IDs")
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            raise DatasetError(f"{where}: label map holds non-integer values; expected integer label IDs")
    elif data.dtype.kind not in "iu":
        raise DatasetError(f"{where}: label map has data type {data.dtype}; expected integer label IDs")
    low, high = (data.min(), data.max()) if data.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint16).max:
        raise DatasetError(f"{where}: label map holds the value {(low if low < 0 else high).item():g}; expected "
                           "label IDs 0-28 (VerSe) or 0-117 (TotalSegmentator `total`), 0 = background")
    return data.astype(np.uint8 if high <= 255 else np.uint16, copy=False)


def _refusal(where: str, ids, why: str, readings=()) -> DatasetError:
    tried = "; ".join(f"read as {r.how}: {_named(ids, 'levels', r)}" +
                      (f", but {'; '.join(r.problems)}" if r.problems else f" ({r.order} order)")
                      for r in readings)
    return DatasetError(f"{where}: not a vertebra label map vfnb can read without guessing: label IDs found "
                        f"{_id_list(ids)}; {why}{'; ' + tried if tried else ''}. Expected VerSe labels (1-7 "
                        "C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 27 coccyx, 28 T13) or TotalSegmentator v2 "
                        "`total` IDs (26 S1 ... 50 C1); say which with --labels verse|totalsegmentator "
                        "(label_scheme.yaml in a dataset)")


def _id_list(ids) -> str:
    ids = list(ids)
    return str(ids) if len(ids) <= 40 else f"{ids[:40]} ... ({len(ids)} IDs)"


def _decide(voxels: _Map, scheme: str, where: str) -> _Reading:
    """The reading of a multilabel map without a label table: given, or found (module docstring, rules 3-4)."""
    ids = voxels.ids
    verse, total = _verse_reading(ids), _totalseg_reading(ids)
    above = [i for i in ids if i > MAX_LABEL]
    if scheme == "verse":
        if above:
            raise _refusal(where, ids, f"values {_id_list(above)} are above 28 and no VerSe label "
                                       "(--labels verse was given)")
        return _accepted(_assess(verse, voxels), ids, where)
    too_high = [i for i in ids if i > TOTALSEG_TOTAL_MAX_ID]
    if scheme == "totalsegmentator" or above:
        if too_high:
            raise _refusal(where, ids, f"values {_id_list(too_high)} are no VerSe label (1-28) nor "
                                       f"TotalSegmentator `total` ID (1-{TOTALSEG_TOTAL_MAX_ID})")
        if scheme == "auto":
            if all(voxels.blob(i).count * voxels.voxel_mm3 < MIN_EVIDENCE_MM3 for i in above):
                raise _refusal(where, ids, f"the label map holds values {_id_list(above)} above 28 (no VerSe "
                                           f"label) on fewer than {MIN_EVIDENCE_MM3:.0f} mm3 each: stray values, "
                                           "not TotalSegmentator structures")
            total.how += " (IDs above 28 exist only there)"
        return _accepted(_assess(total, voxels), ids, where)
    verse, total = _assess(verse, voxels), _assess(total, voxels)
    if _convert_same(verse, total, ids):
        return _accepted(verse, ids, where)
    if any(i <= 24 for i in ids):
        if verse.anatomical:
            verse.how += " (a stack of vertebra-sized labels in VerSe order; no organ map is one)"
            return verse
        total_ok = total.anatomical and total.gradable(ids)
        verse_reversed = not verse.problems and verse.order == "reversed"
        if total_ok and not verse_reversed:
            total.how += " (IDs 1-24 are not vertebrae in VerSe order: organs; IDs above 28 removed?)"
            return total
        if verse_reversed and not total_ok:
            return _accepted(verse, ids, where)
        why = "both readings fit" if total_ok else "neither reading fits"
        raise _refusal(where, ids, why, (verse, total))
    candidates = [r for r in (verse, total) if r.anatomical]
    if len(candidates) == 2:
        candidates = [r for r in candidates if r.spacing_ok]
        if len(candidates) == 1:
            candidates[0].how += " (only IDs 25-28: the distances between the levels decide)"
    elif len(candidates) == 1:
        candidates[0].how += " (only IDs 25-28: the order of the levels along the body axis decides)"
    if len(candidates) != 1:
        why = ("only IDs 25-28, and neither the order of the levels along the body axis nor their distances "
               "tell VerSe (L6, sacrum, coccyx, T13) from TotalSegmentator (sacrum, S1, L5, L4)"
               if candidates or (verse.anatomical and total.anatomical) else "neither reading fits")
        raise _refusal(where, ids, why, (verse, total))
    return candidates[0]


def _convert_same(a: _Reading, b: _Reading, ids) -> bool:
    return all(a.lut.get(i, 0) == b.lut.get(i, 0) for i in ids)


def _accepted(reading: _Reading, ids, where: str) -> _Reading:
    """``reading`` if plausible (a reversed stack gets a note), else refused."""
    if reading.problems and reading.problems != ["no vertebra"]:
        raise _refusal(where, ids, "the levels are not plausible", (reading,))
    return reading


def _notes(reading: _Reading) -> list[str]:
    if reading.order == "reversed":
        return ["the vertebrae are stacked with C1 inferior along the affine's superior axis (expected C1 "
                "superior): is the header's orientation right?"]
    return []


def _header_reading(names: dict[int, str], ids, scheme: str, where: str) -> _Reading:
    """The reading the header's label names give (module docstring, rule 1)."""
    unnamed = [i for i in ids if i not in names]
    if unnamed:
        raise DatasetError(f"{where}: label IDs {_id_list(unnamed)} are in the voxels but not in the label table "
                           f"of the NIfTI header extension (it names {len(names)} IDs); expected every ID named")
    lut = {i: label for i in ids if (label := structure_label(names[i])) is not None}
    totalseg = {i: structure_label(n) for i, n in TOTALSEG_TOTAL_VERTEBRAE.items()}
    if not lut:  # organs only: the table is TotalSegmentator's
        found = "totalsegmentator" if scheme == "auto" else scheme
    elif all(i == label for i, label in lut.items()):
        found = "verse"
    elif all(totalseg.get(i) == label for i, label in lut.items()) or any(
            names[i].lower().startswith("vertebra") for i in lut):
        found = "totalsegmentator"
    else:
        raise DatasetError(f"{where}: the header's label table names levels under IDs of neither numbering "
                           f"({', '.join(f'{i}: {names[i]}' for i in sorted(lut))}); expected VerSe labels or "
                           "TotalSegmentator names (vertebrae_L1, ...)")
    if scheme != "auto" and scheme != found:
        raise DatasetError(f"{where}: --labels {scheme} was given but the header's label table names the IDs as "
                           f"{found} does ({', '.join(f'{i}: {names[i]}' for i in sorted(lut)[:6])}); expected the "
                           "two to agree (leave --labels auto to follow the names)")
    return _Reading(found, lut, "the label names in the NIfTI header extension")


# ---------------------------------------------------------------- reading files
def _check_grid(where: str, data_shape, data_affine, shape, affine, against: str = "the CT") -> None:
    if shape is not None and tuple(data_shape) != tuple(shape):
        raise DatasetError(f"{where}: label map shape {tuple(data_shape)} does not match {against} shape "
                           f"{tuple(shape)}; expected the label map of this CT, on the same voxel grid")
    if affine is not None and not np.allclose(data_affine, affine, rtol=0.0, atol=AFFINE_TOLERANCE_MM):
        raise DatasetError(f"{where}: label map affine does not match {against} affine (they differ by up to "
                           f"{np.abs(np.asarray(data_affine) - np.asarray(affine)).max():.4g} mm); expected the "
                           "label map of this CT, on the same voxel grid and orientation")


def _check_scheme(scheme: str) -> str:
    if scheme not in SCHEME_CHOICES:
        raise ParamsError(f"label scheme {scheme!r} is not known; expected one of {', '.join(SCHEME_CHOICES)}")
    return scheme


def read_vertebra_labels(path, scheme: str = "auto", shape=None, affine=None) -> VertebraLabels:
    """Read a vertebra label map (file or folder of per-structure masks) into VerSe labels.

    ``scheme``: ``"auto"`` (decided from the file: module docstring), ``"verse"`` or
    ``"totalsegmentator"``. ``shape`` / ``affine``: the CT's grid, when the map must lie
    on it (refused otherwise). Raises :class:`DatasetError` naming the file, the IDs
    found and what was expected when the numbering cannot be decided without guessing.
    """
    scheme = _check_scheme(scheme)
    path = Path(path)
    if path.is_dir():
        return _read_structure_folder(path, scheme, shape, affine)
    if not path.is_file():
        raise DatasetError(f"{path}: label map not found (expected a NIfTI file or a folder of per-structure masks)")
    raw, data_affine, header = load_nifti(path)
    _check_grid(str(path), raw.shape, data_affine, shape, affine)
    data = _as_ids(raw, str(path))
    del raw
    voxels = _Map(data, data_affine)
    ids = voxels.ids
    names = header_label_names(header, str(path))
    if not ids:
        return VertebraLabels(np.zeros(data.shape, np.uint8), data_affine, "verse" if scheme == "auto" else scheme,
                              str(path), how="empty map")
    if names is not None:
        reading = _header_reading(names, ids, scheme, str(path))
        reading = _accepted(_assess(reading, voxels), ids, str(path))
    elif ids == [1]:
        return _single_mask(path, data, data_affine, scheme)
    else:
        reading = _decide(voxels, scheme, str(path))
    how = reading.how if scheme == "auto" else f"{reading.how}, as given"
    return VertebraLabels(_convert(data, reading.lut), data_affine, reading.scheme, str(path), "multilabel", how,
                          _notes(reading))


def _single_mask(path: Path, data: np.ndarray, affine: np.ndarray, scheme: str) -> VertebraLabels:
    """A file holding only 0 and 1 (module docstring, rule 2)."""
    level = file_level(path)
    if scheme == "verse":
        if level is not None and level != 1:
            raise DatasetError(f"{path}: --labels verse reads the value 1 as C1, but the file name says "
                               f"{level_name(level)}; expected a VerSe map (leave --labels auto to read it as a "
                               f"mask of {level_name(level)})")
        return VertebraLabels(data.astype(np.uint8), affine, "verse", str(path), how="VerSe labels, as given")
    if level is None:
        raise DatasetError(f"{path}: the map holds only the values 0 and 1: a mask of one structure, and its file "
                           "name does not say which vertebra (expected a name such as vertebrae_L1.nii.gz, "
                           "L1.nii.gz or T12_mask.nii.gz; or --labels verse if it is a VerSe map of C1 alone)")
    return VertebraLabels((data > 0).astype(np.uint8) * np.uint8(level), affine, "totalsegmentator", str(path),
                          "structure mask", f"one structure, {level_name(level)} by its file name")


def _read_structure_folder(folder: Path, scheme: str, shape, affine) -> VertebraLabels:
    """A folder of per-structure 0/1 masks (module docstring, layout 2)."""
    if scheme == "verse":
        raise DatasetError(f"{folder}: a folder of per-structure masks, but --labels verse expects one "
                           "VerSe-numbered label map file; expected a file (or --labels auto)")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_ENDINGS) and not p.name.startswith("."))
    levels = {p: file_level(p) for p in files}
    masks = [p for p in files if levels[p] is not None]
    if not masks:
        raise DatasetError(f"{folder}: no per-structure vertebra mask in this folder ({len(files)} NIfTI files); "
                           "expected files named like vertebrae_L1.nii.gz, L1.nii.gz or T12_mask.nii.gz")
    seen: dict[int, Path] = {}
    array, grid = None, None
    for mask_path in masks:
        level = levels[mask_path]
        if level in seen and {level} != {SACRUM}:
            raise DatasetError(f"{mask_path}: a second mask of {level_name(level)} (also {seen[level].name}); "
                               "expected one file per level")
        seen[level] = mask_path
        data, mask_affine, _ = load_nifti(mask_path)
        if grid is None:
            _check_grid(str(mask_path), data.shape, mask_affine, shape, affine)
            grid = (data.shape, mask_affine)
            array = np.zeros(data.shape, np.uint8)
        else:
            _check_grid(str(mask_path), data.shape, mask_affine, *grid, against=f"{masks[0].name}'s")
        data = _as_ids(data, str(mask_path))
        if data.max(initial=0) > 1:
            raise DatasetError(f"{mask_path}: a per-structure mask holds values up to {int(data.max())}; expected "
                               "0/1 (one structure per file in a folder of masks)")
        inside = data > 0
        clash = inside & (array > 0) & (array != level)
        if clash.any():
            other = level_name(int(array[clash][0]))
            raise DatasetError(f"{mask_path}: {int(clash.sum())} voxel(s) are also in the mask of {other}; "
                               "expected masks that do not overlap")
        array[inside] = level
    voxels = _Map(array, grid[1])
    ids = voxels.ids
    if ids:
        reading = _Reading("totalsegmentator", {i: i for i in ids}, "per-structure masks named by level")
        _accepted(_assess(reading, voxels), ids, str(folder))
        notes = _notes(reading)
    else:
        notes = ["every vertebra mask in the folder is empty"]
    return VertebraLabels(array, grid[1], "totalsegmentator", str(folder), "structure folder",
                          f"{len(masks)} masks named by level ({len(files) - len(masks)} other files ignored)", notes)
