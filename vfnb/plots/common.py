"""What every figure shares: channel names, figure size and layout, saving, line styles (grade colours: vfnb.levels)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import matplotlib.pyplot as plt  # imported so that IPython registers its display hook for Figure
import numpy as np
from matplotlib.figure import Figure

from ..data.channels import BONE_WINDOW, SOFT_TISSUE_WINDOW
from ..errors import ParamsError
from ..io import atomic_path
from ..levels import GRADE_NAMES, MAX_LABEL

#: The network's three input channels, as figures name them.
CHANNEL_NAMES = (
    f"ch 0: soft-tissue window (L {SOFT_TISSUE_WINDOW[0]:g} / W {SOFT_TISSUE_WINDOW[1]:g} HU)",
    f"ch 1: bone window (L {BONE_WINDOW[0]:g} / W {BONE_WINDOW[1]:g} HU)",
    f"ch 2: vertebra mask x label/{MAX_LABEL}",
)


def _grade_label(g: int) -> str:
    return f"{g} ({GRADE_NAMES[g]})"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG to ``path`` (``.png``) atomically, then close it; returns the path.

    An existing file at ``path`` is replaced (figures live inside a run folder
    that the study builds afresh). Parent folders are created.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ParamsError(f"{path}: figure file name must end in .png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)  # no-op for figures not owned by pyplot; frees those that are
    return path


#: Line styles and markers given to the curves of one figure in turn, so that two
#: models with identical curves (e.g. a fine-tuned model that kept its start) stay visible.
LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def _style(i: int) -> dict:
    # earlier curves drawn thicker, so a later identical one (dashed, dotted) shows on top of it
    return {"color": f"C{i}", "ls": LINE_STYLES[i % len(LINE_STYLES)][0], "lw": 2.4 - 0.2 * (i % len(LINE_STYLES))}


def _same_as(data: Mapping[str, Any], key) -> dict[str, str]:
    """name -> the first earlier name whose ``key(data)`` is equal (identical curves get a legend note)."""
    seen: list[tuple[str, Any]] = []
    same = {}
    for name, value in data.items():
        signature = key(value)
        match = next((other for other, sig in seen if _equal(sig, signature)), None)
        if match is not None:
            same[name] = match
        seen.append((name, signature))
    return same


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)


def _legend_name(name: str, same: Mapping[str, str]) -> str:
    return f"{name} (identical to {same[name]})" if name in same else name


def legend_below(fig: Figure, ax) -> None:
    """The axes' legend under the figure, outside the data (a legend inside covers the curves it names)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize=7, ncols=1, frameon=False)
