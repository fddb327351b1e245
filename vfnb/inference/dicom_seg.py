"""``vfnb predict --dicom-seg FILE.dcm``: the graded vertebrae as a DICOM Segmentation of the source series.

When the CT came as a DICOM series, a PACS or a DICOM viewer (OHIF, 3D Slicer's
DICOM module, ...) takes results best as a DICOM object of its own that refers to
that series. This writes one DICOM Segmentation (binary, written with highdicom)
with one segment per graded vertebra: the segment's label names the level and
the grade (``L1 grade 2 (moderate)``, or ``T11 not assessable``), its tracking
ID the level, its property a vertebra (SNOMED CT 51282000), its display colour
the grade's colour of the report; the algorithm is vfnb (artificial
intelligence for a network, the morphometry grader otherwise). Its frames lie on
the source slices (each refers to its source image), so it reads back onto them
with pydicom or highdicom. Sacrum and coccyx are not segments: they are never
graded. Not a medical device: the content description says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import VfnbError
from ..io import atomic_path
from ..levels import GRADE_COLORS, NOT_ASSESSABLE_COLOR
from .grading import ScanGrading

#: Genant's names of the grades, for segment labels.
GRADE_WORDS = {0: "normal", 1: "mild", 2: "moderate", 3: "severe"}
#: Series number given to the segmentation (a viewer lists it beside the CT's).
SEG_SERIES_NUMBER = 901


def segment_label(level: str, grade) -> str:
    """``L1 grade 2 (moderate)``; ``L1 not assessable`` when the vertebra has no grade."""
    if grade is None or pd.isna(grade):
        return f"{level} not assessable"
    return f"{level} grade {int(grade)} ({GRADE_WORDS[int(grade)]})"


def _frames(label_map: np.ndarray, label: int) -> np.ndarray:
    """The vertebra's mask as DICOM frames ``[slice, row, column]`` in the series' file order.

    The inverse of :func:`vfnb.data.dicom.read_series`'s layout: array axis 0 is
    the column, axis 1 the row in reverse, axis 2 the slice along the normal.
    """
    return np.ascontiguousarray((label_map == label)[:, ::-1, :].transpose(2, 1, 0))


def write_dicom_seg(grading: ScanGrading, path: str | Path, overwrite: bool = False) -> Path:
    """Write the segmentation of ``grading`` (a scan read from a DICOM series: ``grading.dicom``) to ``path``, atomically."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from .. import __version__

    path, series = Path(path), grading.dicom
    if series is None:
        raise VfnbError(f"{path}: a DICOM segmentation refers to the DICOM series it segments; this scan was not "
                        "read from one")
    if path.exists() and not overwrite:
        raise VfnbError(f"{path}: file already exists (choose another output, or pass --overwrite)")
    sources = [pydicom.dcmread(p) for p in series.files]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="vfnb" if grading.model is not None else "vfnb morphometry grader",
        family=codes.cid7162.ArtificialIntelligence if grading.model is not None
        else codes.cid7162.MorphologicalOperations,
        version=__version__)
    descriptions, masks = [], []
    for number, (_, row) in enumerate(grading.table.iterrows(), start=1):
        grade = row["pred"]
        colour = NOT_ASSESSABLE_COLOR if pd.isna(grade) else GRADE_COLORS[int(grade)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment_label(str(row["level"]), grade),
            segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=codes.SCT.Vertebra,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=str(row["level"]),
            display_color=hd.color.CIELabColor.from_rgb(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)))))
        masks.append(_frames(grading.label_map, int(row["label"])))
    if not masks:
        raise VfnbError(f"{path}: no graded vertebra to write as a segmentation")
    try:
        seg = _segmentation(hd, sources, masks, descriptions, __version__)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # highdicom's checks of the source headers
        raise VfnbError(f"{path}: cannot write a DICOM segmentation of {series.describe()} ({type(exc).__name__}: "
                        f"{exc}); expected source images with the patient and study attributes DICOM requires") from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def _segmentation(hd, sources, masks, descriptions, version):
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack(masks, axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="vfnb", manufacturer_model_name="vfnb predict",
        software_versions=version, device_serial_number="none",
        content_label="VERTEBRAE", content_description="Genant grades by vfnb; not a medical device")
