"""Pre-processing (STUDY §1.2): full CT scans + label maps -> per-vertebra patches.

Geometry
--------
Every patch is sampled in one canonical frame, whatever the source header says
(RAS, LPS, permuted axes, slightly oblique directions): the patch axis convention
of ``docs/ARCHITECTURE.md``, arrays ``[X, Y, Z]`` in RAS+ with axis 0 running
right-ward, axis 1 posterior -> anterior and axis 2 inferior -> superior (the
vertebral body height lies along axis 2).

For each vertebra label:

1. **World box.** The label's voxels (in the label map's own grid) are carried
   through the label map's affine. The box is the tight bounding box, aligned with
   the RAS world axes, of the union of those voxel *cells* (each voxel is a
   parallelepiped spanning +-1/2 voxel around its centre), in mm.
2. **Square in-plane.** The shorter of the two in-plane extents (X, Y) is widened
   symmetrically about the box centre so the in-plane box is square, of side
   ``s`` mm.
3. **Isotropic grid.** Output spacing ``d = s / size`` mm along all three axes;
   ``N = max(1, round(z extent / d))`` slices, centred on the box along Z. The
   patch is ``size x size x N`` voxels, isotropic in mm. Patch voxel ``(i, j, k)``
   is the centre of a cell of the box, so the patch affine is
   ``diag(d, d, d)`` with translation ``box minimum + d / 2``.
4. **One interpolation.** Each patch voxel centre is mapped patch voxel -> world
   (patch affine) -> source voxel (inverse source affine) and sampled directly from
   the source with :func:`scipy.ndimage.map_coordinates`: the CT with a cubic
   B-spline (order 3), the mask as ``label map == label`` with nearest neighbour
   (order 0; a tie between two source voxels goes to the one on the +RAS side in
   the world, so the mask does not depend on how the scan is stored). This equals the study's "align to identity direction, crop, zoom"
   chain (image cubic, mask order 0) without the intermediate resampling, and is
   exact for any orientation. Points outside the scan's voxel cells get
   -1024 HU (air) in the image and 0 in the mask.

The sampling itself (:mod:`vfnb.data.resample`) filters only the source sub-box
around the patch, so a 512 x 512 x 300 scan is never filtered as a whole.

The image is rounded to int16 (clipped to the int16 range) and the mask stored
as uint8 0/1 for that vertebra only. The CT and the label map are each sampled
through their own affine, so a label map on a different grid still lines up in
world space.

Outputs
-------
:func:`preprocess_dataset` turns an original-layout dataset into the processed
layout (STUDY §1.1)::

    processed/
      img/<case id>_<label>_<grade>.nii.gz   int16 HU patch, patch affine
      seg/<case id>_<label>_<grade>.nii.gz   uint8 0/1 mask of that vertebra
      patches.csv                            one row per patch (see PATCH_COLUMNS)
      preprocess.json                        settings, counts, every warning, how each label map was read

No split lists are written here (``vfnb split`` does that).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from ..errors import DatasetError, ParamsError
from ..io import atomic_write_json, atomic_write_text, output_folder, overlap, save_nifti, spreadsheet_text
from ..levels import LEVEL_NAMES, MAX_LABEL, level_name, spine_order
from .origin import source_origin
from .processed import patch_filename
from .resample import onto_ct_grid, patch_grid, sample_in_world, voxel_spacing, world_box
from .scan_input import read_ct

PAD_HU = -1024  # air: the value of patch voxels that fall outside the scan
MIN_VOLUME_MM3 = 1000.0  # below ~1 cm^3 a "vertebra" is most likely a stray fragment
# A label is skipped (no patch, a warning instead) when its in-plane box side is under
# MIN_PATCH_SIDE_MM or its height exceeds MAX_HEIGHT_PER_SIDE times that side. The
# smallest vertebral bodies (C3-C7) are about 15 mm wide and every body is wider than
# it is tall; a 1-voxel label would otherwise become a patch of 0.01 mm voxels, and a
# thin column a [size, size, 100 x size] array of gigabytes.
MIN_PATCH_SIDE_MM = 5.0
MAX_HEIGHT_PER_SIDE = 10.0
PATCH_COLUMNS = ("patch", "case", "label", "level", "grade", "source_spacing", "box",
                 "patch_shape", "patch_spacing_mm", "warnings")

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass
class Patch:
    """One vertebra sampled into the canonical patch frame.

    - ``label``: VerSe vertebra label (1-28).
    - ``image``: int16 HU, ``[size, size, N]`` (``[X, Y, Z]`` RAS+, isotropic voxels).
    - ``mask``: uint8 0/1, same shape, 1 on that vertebra only.
    - ``affine``: 4x4, patch voxel -> world RAS mm of the source scan.
    - ``box``: the label's bounding box in source (label map) voxel indices,
      ``((i0, i1), (j0, j1), (k0, k1))``, inclusive-exclusive per axis.
    - ``spacing``: the source voxel spacing in mm, per source array axis.
    - ``warnings``: human-readable notes (cut off at the scan border, fragments, ...).
    """

    label: int
    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    box: Box
    spacing: tuple[float, float, float]
    warnings: list[str] = field(default_factory=list)

    @property
    def patch_spacing_mm(self) -> float:
        """Isotropic patch voxel size in mm."""
        return float(self.affine[0, 0])

    @property
    def level(self) -> str:
        return level_name(self.label)


def _to_int16(hu: np.ndarray) -> np.ndarray:
    info = np.iinfo(np.int16)
    return np.clip(np.rint(hu), info.min, info.max).astype(np.int16)


# ------------------------------------------------------------------ label maps
def as_label_map(seg: np.ndarray, where: str) -> np.ndarray:
    """Validate a label map and return it as uint8 (VerSe labels 0-28)."""
    seg = np.asarray(seg)
    if seg.ndim != 3:
        raise DatasetError(f"{where}: label map has {seg.ndim} dimensions; expected a 3D volume")
    if seg.dtype.kind == "f":
        if not np.all(np.isfinite(seg)) or not np.array_equal(seg, np.round(seg)):
            raise DatasetError(f"{where}: label map holds non-integer values; expected integer VerSe labels 0-{MAX_LABEL}")
    elif seg.dtype.kind not in "iub":
        raise DatasetError(f"{where}: label map has data type {seg.dtype}; expected integer VerSe labels")
    low, high = (seg.min(), seg.max()) if seg.size else (0, 0)
    if low < 0 or high > MAX_LABEL:
        bad = (low if low < 0 else high).item()
        raise DatasetError(f"{where}: label map holds the value {bad:g}; expected VerSe labels 0-{MAX_LABEL} (0 = background)")
    return seg.astype(np.uint8, copy=False)


def label_boxes(label_map: np.ndarray) -> dict[int, Box]:
    """``{label: ((i0, i1), (j0, j1), (k0, k1))}`` for every non-zero label present.

    ``find_objects`` visits every voxel in a slow generic loop, so it runs only on
    the box around all non-zero voxels (found with two fast projections): the
    spine fills a few percent of a CT volume.
    """
    in_plane = label_map.any(axis=2)
    if not in_plane.any():
        return {}
    xs, ys = np.nonzero(in_plane.any(axis=1))[0], np.nonzero(in_plane.any(axis=0))[0]
    x0, x1, y0, y1 = xs[0], xs[-1] + 1, ys[0], ys[-1] + 1
    zs = np.nonzero(label_map[x0:x1, y0:y1].any(axis=(0, 1)))[0]
    z0, z1 = zs[0], zs[-1] + 1
    offset = (int(x0), int(y0), int(z0))
    slices = ndimage.find_objects(label_map[x0:x1, y0:y1, z0:z1])
    return {index + 1: tuple((int(s.start) + o, int(s.stop) + o) for s, o in zip(sl, offset))
            for index, sl in enumerate(slices) if sl is not None}


# ------------------------------------------------------------------ extraction
def extract_patches_from_arrays(image: np.ndarray, label_map: np.ndarray, affine: np.ndarray,
                                size: int = 128, labels: Iterable[int] | None = None,
                                seg_affine: np.ndarray | None = None, where: str = "scan",
                                skipped: list | None = None) -> list[Patch]:
    """Per-vertebra patches from in-memory arrays (what ``vfnb predict`` uses).

    ``image``: CT in HU, any 3D shape/dtype, with ``affine`` (voxel -> world RAS mm).
    ``label_map``: VerSe labels 0-28, with ``seg_affine`` (default: ``affine``; then
    its shape must equal the image's). ``labels``: which vertebrae (default: every
    label present, in spine order); a requested label absent from the map raises
    :class:`DatasetError`. ``where`` names the scan in messages.
    Returns one :class:`Patch` per label, ``[size, size, N]``, except labels too
    small or too thin to be a vertebra (:data:`MIN_PATCH_SIDE_MM`,
    :data:`MAX_HEIGHT_PER_SIDE`): those get no patch, and ``(label, reason)`` is
    appended to ``skipped`` when given (else the reason goes to stderr).
    """
    image, label_map, affine, seg_affine = _checked_scan(image, label_map, affine, seg_affine, size, where)
    boxes = label_boxes(label_map)
    if labels is None:
        wanted = sorted(boxes, key=spine_order)
    else:
        wanted = [int(label) for label in labels]
        missing = [label for label in wanted if label not in boxes]
        if missing:
            raise DatasetError(f"{where}: label(s) {missing} not found in the label map (present: {sorted(boxes)})")
    grid_notes = []
    if seg_affine is not affine and not np.allclose(seg_affine, affine, atol=1e-3):
        grid_notes.append("label map affine differs from the CT affine, each was sampled through its own")
    patches = []
    for label in wanted:
        patch = _vertebra_patch(image, affine, label_map, seg_affine, label, boxes[label], size)
        if isinstance(patch, str):
            if skipped is None:
                print(f"warning: {where}: {vertebra_name(label)}: {patch}", file=sys.stderr)
            else:
                skipped.append((label, patch))
            continue
        patch.warnings.extend(grid_notes)
        patches.append(patch)
    return patches


def _checked_scan(image, label_map, affine, seg_affine, size, where: str):
    """The arrays of :func:`extract_patches_from_arrays` checked and converted; errors name ``where``."""
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ParamsError(f"patch size {size!r} is not valid; expected an integer >= 2 voxels")
    image = np.asarray(image)
    if image.ndim != 3:
        raise DatasetError(f"{where}: CT has {image.ndim} dimensions; expected a 3D volume")
    affine = np.asarray(affine, dtype=np.float64)
    seg_affine = affine if seg_affine is None else np.asarray(seg_affine, dtype=np.float64)
    for name, a in (("CT", affine), ("label map", seg_affine)):
        if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-9:
            raise DatasetError(f"{where}: {name} affine is not an invertible 4x4 matrix")
    label_map = as_label_map(label_map, where)
    if seg_affine is affine and label_map.shape != image.shape:
        raise DatasetError(f"{where}: label map shape {label_map.shape} differs from CT shape {image.shape}")
    return image, label_map, affine, seg_affine


#: The anatomical direction (RAS world axis, sign) an edge of the scan faces.
_DIRECTIONS = {(0, 1): "right", (0, -1): "left", (1, 1): "anterior", (1, -1): "posterior",
               (2, 1): "superior", (2, -1): "inferior"}


def _edges_touched(box: Box, shape, affine: np.ndarray) -> list[str]:
    """The scan edges (``superior``, ``left``, ...) that the label's bounding ``box`` reaches."""
    edges = []
    for axis, (a, b) in enumerate(box):
        direction = np.asarray(affine[:3, axis], float)
        world = int(np.argmax(np.abs(direction)))
        sign = 1 if direction[world] > 0 else -1
        if a == 0:
            edges.append(_DIRECTIONS[(world, -sign)])
        if b == shape[axis]:
            edges.append(_DIRECTIONS[(world, sign)])
    return edges


def _vertebra_patch(image, affine, label_map, seg_affine, label: int, box: Box, size: int) -> "Patch | str":
    """The patch of one label, with its notes; or, for a label too small or too thin to be a vertebra, the reason."""
    region = tuple(slice(a, b) for a, b in box)
    in_region = label_map[region] == label
    voxels = np.array(np.nonzero(in_region), dtype=np.float64) + np.array([a for a, _ in box], float)[:, None]
    world_lo, world_hi = world_box(voxels, seg_affine)
    extent = world_hi - world_lo
    side = float(max(extent[0], extent[1]))
    if side < MIN_PATCH_SIDE_MM or extent[2] > MAX_HEIGHT_PER_SIDE * side:
        return (f"spans {extent[0]:.1f} x {extent[1]:.1f} x {extent[2]:.1f} mm: too small or too thin for a "
                f"vertebra (in-plane side < {MIN_PATCH_SIDE_MM:g} mm or height > {MAX_HEIGHT_PER_SIDE:g} x side), "
                "no patch")
    patch_affine, shape = patch_grid(world_lo, world_hi, size)
    notes = []
    edges = _edges_touched(box, label_map.shape, seg_affine)
    if edges:
        notes.append(f"touches the scan's {' and '.join(edges)} edge: the vertebra may be cut off (part of it "
                     "outside the scan)")
    pieces = ndimage.label(in_region)[1]
    if pieces > 1:
        notes.append(f"label map holds {pieces} separate pieces of this label, the patch box covers all of them")
    volume_mm3 = voxels.shape[1] * float(abs(np.linalg.det(seg_affine[:3, :3])))
    if volume_mm3 < MIN_VOLUME_MM3:
        notes.append(f"only {volume_mm3:.0f} mm^3 of this label (< {MIN_VOLUME_MM3:.0f}): likely a fragment")
    hu, outside = sample_in_world(image, affine, patch_affine, shape, order=3, fill=PAD_HU)
    if outside:
        notes.append(f"patch extends beyond the scan, padded with {PAD_HU} HU")
    mask, _ = sample_in_world(_LabelView(label_map, label), seg_affine, patch_affine, shape,
                              order=0, fill=0, out_dtype=np.uint8)
    return Patch(label=label, image=_to_int16(hu), mask=mask, affine=patch_affine, box=box,
                 spacing=voxel_spacing(seg_affine), warnings=notes)


class _LabelView:
    """``label_map == label`` computed lazily on the slices that are read (no full-size copy)."""

    def __init__(self, label_map: np.ndarray, label: int):
        self.label_map, self.label = label_map, label
        self.shape = label_map.shape

    def __getitem__(self, region):
        return (self.label_map[region] == self.label).astype(np.uint8)


def _load_scan(ct_path, seg_path, label_scheme: str = "auto"):
    """``(image, affine, label map, label-map affine, how it was read)`` of one scan, checked to belong together.

    The CT is a NIfTI file or a DICOM series folder (:func:`vfnb.data.scan_input.read_ct`).
    The label map comes back in VerSe labels, read in ``label_scheme``
    (:func:`vfnb.data.label_schemes.read_vertebra_labels`: refused when it cannot be told);
    one storing the CT's voxels in another array order is re-ordered onto the CT's
    grid (:func:`vfnb.data.resample.onto_grid`), never interpolated.
    """
    from .label_schemes import read_vertebra_labels

    scan = read_ct(ct_path)
    image, affine = scan.image, scan.affine
    labels = read_vertebra_labels(seg_path, label_scheme)
    for note in labels.notes:
        print(f"warning: {seg_path}: {note}", file=sys.stderr)
    seg, seg_affine = onto_ct_grid(labels.array, labels.affine, image.shape, affine)
    if seg.shape != image.shape:
        raise DatasetError(f"{seg_path}: label map shape {seg.shape} differs from the CT {ct_path} shape {image.shape}")
    if image.dtype.kind not in "iuf":
        raise DatasetError(f"{ct_path}: CT has data type {image.dtype}; expected numeric HU values")
    return image, affine, seg, seg_affine, labels.describe()


def extract_patches(ct_path: str | os.PathLike, seg_path: str | os.PathLike, size: int = 128,
                    labels: Iterable[int] | None = None, label_scheme: str = "auto") -> list[Patch]:
    """Per-vertebra patches of one scan on disk (CT NIfTI + vertebra label map).

    See the module docstring for the geometry. The label map is read into VerSe labels
    (``label_scheme``: :mod:`vfnb.data.label_schemes`); ``labels`` (VerSe) defaults to
    every label in the map. Returns a list of :class:`Patch` (image int16 ``[size, size, N]``).
    """
    image, affine, seg, seg_affine, _ = _load_scan(ct_path, seg_path, label_scheme)
    return extract_patches_from_arrays(image, seg, affine, size=size, labels=labels,
                                       seg_affine=seg_affine, where=str(seg_path))


# ------------------------------------------------------------------ datasets
def _fmt_floats(values: Iterable[float]) -> str:
    return json.dumps([round(float(v), 4) for v in values])


def _process_case(case_id: str, ct_path: str, seg_path: str, grades: dict[int, int],
                  staging: str, size: int, label_scheme: str = "auto") -> dict:
    """Worker: all graded vertebrae of one scan -> patch files in ``staging``.

    Returns ``{"rows": [patches.csv rows], "warnings": [{case, label, level, message}],
    "label_map": how its label map was read}``
    (metadata only: the arrays never travel between processes).
    """
    image, affine, seg, seg_affine, label_map_read = _load_scan(ct_path, seg_path, label_scheme)
    seg = as_label_map(seg, seg_path)
    present = set(label_boxes(seg))
    graded = {int(label): int(grade) for label, grade in grades.items()}

    warnings = []

    def warn(label: int, message: str, patch: bool) -> None:
        warnings.append({"case": case_id, "label": label, "level": LEVEL_NAMES.get(label, "?"), "message": message,
                         "patch": patch})

    for label in sorted(present - set(graded), key=spine_order):
        warn(label, f"in the label map {seg_path} but not graded, no patch", False)
    for label in sorted(set(graded) - present, key=spine_order):
        warn(label, f"graded but absent from the label map {seg_path}, no patch", False)

    labels = sorted(present & set(graded), key=spine_order)
    skipped: list = []
    patches = extract_patches_from_arrays(image, seg, affine, size=size, labels=labels,
                                          seg_affine=seg_affine, where=str(seg_path), skipped=skipped)
    for label, reason in skipped:
        warn(label, f"{seg_path}: {reason}", False)
    del image, seg
    rows = []
    for patch in patches:
        grade = graded[patch.label]
        name = patch_filename(case_id, patch.label, grade)
        save_nifti(Path(staging) / "img" / name, patch.image, patch.affine)
        save_nifti(Path(staging) / "seg" / name, patch.mask, patch.affine)
        for message in patch.warnings:
            warn(patch.label, message, True)
        rows.append({
            "patch": name, "case": case_id, "label": patch.label, "level": patch.level, "grade": grade,
            "source_spacing": _fmt_floats(patch.spacing),
            "box": json.dumps([list(axis) for axis in patch.box]),
            "patch_shape": json.dumps(list(patch.image.shape)),
            "patch_spacing_mm": round(patch.patch_spacing_mm, 6),
            "warnings": "; ".join(patch.warnings),
        })
    return {"rows": rows, "warnings": warnings, "label_map": label_map_read}


def exit_with_parent(parent_pid: int, every_s: float = 0.5) -> None:
    """Pool-worker initializer: a daemon thread ends this process once ``parent_pid`` has gone.

    A killed parent (SIGKILL) cannot stop its pool; without this the workers finish
    their scan and then wait on the task queue for ever.
    """
    import threading
    import time

    def watch():
        while True:
            time.sleep(every_s)
            if os.getppid() != parent_pid:  # re-parented: the parent is dead
                os._exit(1)

    threading.Thread(target=watch, name="vfnb-exit-with-parent", daemon=True).start()


def _patches_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PATCH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: spreadsheet_text(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _refuse_overlap(original: Path, processed: Path) -> None:
    if overlap(original, processed):
        raise ParamsError(f"{processed}: the output folder overlaps the input dataset {original} "
                          "(it is, contains or lies inside it); choose a folder outside the input")


def preprocess_dataset(original: str | os.PathLike, processed: str | os.PathLike, size: int = 128,
                       workers: int = 1, overwrite: bool = False) -> Path:
    """Original layout -> processed layout (STUDY §1.2); returns the output folder.

    Every graded vertebra of every case becomes ``img/`` + ``seg/`` patches named
    ``<case id>_<label>_<grade>.nii.gz`` (``[size, size, N]``, int16 HU / uint8 mask,
    isotropic mm; geometry in the module docstring). Labels present but not graded,
    and graded labels absent from the label map, are reported on stderr and recorded
    in ``preprocess.json``; per-patch notes also go to ``patches.csv``.
    ``workers > 1`` processes scans in parallel (one task per scan); the output does
    not depend on it. The output folder is built atomically and an existing one is
    refused unless ``overwrite``; the input is only read.
    """
    from tqdm import tqdm

    from .original import read_original

    original, processed = Path(original), Path(processed)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 2:
        raise ParamsError(f"patch size {size!r} is not valid; expected an integer >= 2 voxels")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ParamsError(f"workers {workers!r} is not valid; expected an integer >= 1")
    _refuse_overlap(original, processed)
    cases = read_original(original)  # raises DatasetError naming the problem
    if not cases:
        raise DatasetError(f"{original}: no cases to pre-process (annotation lists no scans)")

    results: dict[int, dict] = {}
    with output_folder(processed, overwrite) as staging:
        (staging / "img").mkdir()
        (staging / "seg").mkdir()
        tasks = [(c.case_id, str(c.image_path), str(c.seg_path), dict(c.grades), str(staging), int(size),
                  c.label_scheme) for c in cases]
        with tqdm(total=len(tasks), desc="preprocess", unit="scan", file=sys.stderr) as bar:
            def done(index: int, result: dict) -> None:
                results[index] = result
                for w in result["warnings"]:
                    tqdm.write(f"warning: {w['case']} {vertebra_name(w['label'])}: {w['message']}", file=sys.stderr)
                bar.update(1)

            _run_cases(tasks, workers, done)
        rows = [row for index in range(len(tasks)) for row in results[index]["rows"]]
        warnings = [w for index in range(len(tasks)) for w in results[index]["warnings"]]
        atomic_write_text(staging / "patches.csv", _patches_csv(rows))
        label_maps = {tasks[index][0]: results[index]["label_map"] for index in range(len(tasks))}
        atomic_write_json(staging / "preprocess.json",
                          _manifest(original, size, len(tasks), len(rows), warnings, label_maps))
    return processed


def _run_cases(tasks: list, workers: int, done) -> None:
    """:func:`_process_case` on every task, ``workers`` at a time; ``done(index, result)`` as each finishes."""
    if workers == 1:
        for index, task in enumerate(tasks):
            done(index, _process_case(*task))
        return
    # spawn: no inherited threads or locks (tqdm's monitor) in the workers
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=get_context("spawn"),
                             initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_process_case, *task): index for index, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                done(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _manifest(original: Path, size: int, cases: int, patches: int, warnings: list,
              label_maps: dict | None = None) -> dict:
    """What ``preprocess.json`` records: the settings, the counts, every warning, how each label map was read."""
    from .. import __version__

    return {
        "vfnb_version": __version__,
        "source": str(original.resolve()),
        "dataset": source_origin(original),  # name, and whether its scans are generated (SynthSpine)
        "size": int(size),
        "orientation": "RAS+ [X, Y, Z]: axis 0 right-ward, axis 1 posterior->anterior, axis 2 inferior->superior",
        "box": "tight RAS-aligned box of the label's voxel cells; shorter in-plane extent widened to a square",
        "spacing": "isotropic, in-plane box side / size (mm)",
        "image_interpolation": "cubic B-spline (scipy map_coordinates order 3), rounded to int16",
        "mask_interpolation": "nearest neighbour (order 0) of label map == label, ties to the +RAS side, uint8 0/1",
        "pad_hu": PAD_HU,
        "cases": cases,
        "patches": patches,
        "warning_counts": count_warnings(warnings),
        "warnings": warnings,
        "label_maps": label_maps or {},  # case -> numbering and layout (vfnb.data.label_schemes)
    }


def vertebra_name(label: int) -> str:
    """``"L1 (label 20)"``: how warnings name a vertebra."""
    return f"{LEVEL_NAMES.get(int(label), '?')} (label {int(label)})"


def count_warnings(warnings: Sequence[dict]) -> dict:
    """Counts of pre-processing warnings, as ``preprocess.json`` records them and notebook 00 shows them.

    ``notes``: every warning; ``on_patches``: notes on a vertebra that got a patch (the
    notes of ``patches.csv``'s ``warnings`` column, one per note); ``without_patch``:
    notes on vertebrae that got none (not graded, absent, too small);
    ``vertebrae``: distinct vertebrae (case, label) with at least one note.
    """
    return {"notes": len(warnings), "on_patches": sum(1 for w in warnings if w["patch"]),
            "without_patch": sum(1 for w in warnings if not w["patch"]),
            "vertebrae": len({(w["case"], w["label"]) for w in warnings})}


def recorded_patch_size(processed: str | os.PathLike, records: Sequence[dict] = ()) -> int | None:
    """The in-plane size (voxels) the patches of a processed dataset were pre-processed to.

    ``preprocess.json``'s ``size`` when vfnb made the dataset; otherwise the in-plane
    size of ``records``' patches (NIfTI headers only) when they all share one; else None.
    """
    import nibabel as nib

    record = Path(processed) / "preprocess.json"
    if record.is_file():
        size = json.loads(record.read_text(encoding="utf-8")).get("size")
        if isinstance(size, int) and not isinstance(size, bool):
            return size
    sizes = {int(nib.load(str(r["image"])).shape[0]) for r in records}
    return sizes.pop() if len(sizes) == 1 else None
