"""Vertebra labels (VerSe convention) and Genant grades.

Labels: 1-7 C1-C7, 8-19 T1-T12, 20-25 L1-L6, 26 sacrum, 27 coccyx, 28 T13
(an extra 13th thoracic vertebra, which lies between T12 and L1).
"""

from __future__ import annotations

from .errors import VfnbError

GRADES = (0, 1, 2, 3)
GRADE_NAMES = {0: "normal", 1: "mild", 2: "moderate", 3: "severe"}
#: The one grade palette of every figure and of the per-scan report: grey for normal, then
#: orange, vermillion, dark red (Okabe-Ito hues and a dark red), ordered light to dark with
#: severity so a reader with red-green colour blindness still reads the order.
GRADE_COLORS = {0: "#6b7b8c", 1: "#e69f00", 2: "#d55e00", 3: "#7f0000"}
#: A vertebra vfnb tried to grade and could not (not assessable): reddish purple (Okabe-Ito), a hue
#: off the grade ramp and unlike the grey-blue of normal, so "no grade" never reads as "normal".
NOT_ASSESSABLE_COLOR = "#cc79a7"
#: A labelled bone that is never graded (sacrum, coccyx): pale grey, context rather than a result.
NOT_GRADED_COLOR = "#d9d9d9"
NUM_GRADES = len(GRADES)
MAX_LABEL = 28  # the position code in the mask channel is label / MAX_LABEL

LEVEL_NAMES: dict[int, str] = {}
for _i in range(7):
    LEVEL_NAMES[1 + _i] = f"C{_i + 1}"
for _i in range(12):
    LEVEL_NAMES[8 + _i] = f"T{_i + 1}"
for _i in range(6):
    LEVEL_NAMES[20 + _i] = f"L{_i + 1}"
LEVEL_NAMES[26] = "S1"  # sacrum
LEVEL_NAMES[27] = "Cx"  # coccyx
LEVEL_NAMES[28] = "T13"
LABELS_BY_NAME = {name.upper(): label for label, name in LEVEL_NAMES.items()}
LABELS_BY_NAME["SACRUM"] = 26
LABELS_BY_NAME["COCCYX"] = 27

# Vertebrae that carry a Genant grade (the sacrum and coccyx are never graded).
GRADABLE_LABELS = tuple(label for label in LEVEL_NAMES if label not in (26, 27))


def level_name(label: int) -> str:
    """VerSe label (1-28) -> level name such as ``"T12"``."""
    try:
        return LEVEL_NAMES[int(label)]
    except (KeyError, ValueError, TypeError):
        raise VfnbError(f"vertebra label {label!r} is not a VerSe label (expected an integer 1-28)") from None


def label_from_level(level: str | int) -> int:
    """``"T12"`` / ``"t12"`` / ``20`` / ``"20"`` -> VerSe label number."""
    text = str(level).strip()
    if text.isdigit():
        label = int(text)
        if label in LEVEL_NAMES:
            return label
    elif text.upper() in LABELS_BY_NAME:
        return LABELS_BY_NAME[text.upper()]
    raise VfnbError(f"vertebra level {level!r} is not known (expected C1-C7, T1-T13, L1-L6 or a label 1-28)")


def spine_order(label: int) -> float:
    """Cranio-caudal position for sorting: T13 (28) sorts between T12 (19) and L1 (20)."""
    return 19.5 if int(label) == 28 else float(label)
