"""The network input (STUDY §1.3): three channels per patch, each in [0, 1].

- channel 0: soft-tissue window, level 40 HU, width 200 HU;
- channel 1: bone window, level 400 HU, width 1500 HU;
- channel 2: the vertebra's binary mask times ``label / 28`` (a position code).

Arrays are ``[X, Y, Z]`` patches in the patch axis convention (axis 2 runs
inferior -> superior); the input is ``[3, X, Y, Z]`` float32.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..levels import MAX_LABEL

SOFT_TISSUE_WINDOW = (40.0, 200.0)  # (level, width) in HU
BONE_WINDOW = (400.0, 1500.0)
# The channels in words: what a checkpoint records, so that a model is never fed channels made differently
INPUT_CHANNELS = (f"soft-tissue window {SOFT_TISSUE_WINDOW[0]:g}/{SOFT_TISSUE_WINDOW[1]:g} HU",
                  f"bone window {BONE_WINDOW[0]:g}/{BONE_WINDOW[1]:g} HU",
                  f"vertebra mask x label/{MAX_LABEL}")


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Clip HU to ``[level - width/2, level + width/2]`` and scale to [0, 1] (float32)."""
    low = level - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def make_input_channels(image_hu: np.ndarray, mask: np.ndarray, label: int) -> np.ndarray:
    """``[X, Y, Z]`` HU patch + binary mask + VerSe label -> ``[3, X, Y, Z]`` float32."""
    image_hu = np.asarray(image_hu)
    mask = np.asarray(mask)
    if image_hu.shape != mask.shape:
        raise ValueError(f"image shape {image_hu.shape} and mask shape {mask.shape} differ")
    if not 1 <= int(label) <= MAX_LABEL:
        raise ValueError(f"vertebra label {label} outside 1-{MAX_LABEL}")
    out = np.empty((3,) + image_hu.shape, dtype=np.float32)
    out[0] = window(image_hu, *SOFT_TISSUE_WINDOW)
    out[1] = window(image_hu, *BONE_WINDOW)
    out[2] = (mask > 0).astype(np.float32) * np.float32(int(label) / MAX_LABEL)
    return out


def centred_cube_offset(shape: Sequence[int], size: int) -> tuple[int, ...]:
    """Per spatial axis: crop start (dim > size) or pad before (dim < size), centred."""
    return tuple(abs(int(d) - size) // 2 for d in shape)


def random_cube_offset(shape: Sequence[int], size: int, rng: np.random.Generator) -> tuple[int, ...]:
    """Per spatial axis: a uniformly random crop start or pad-before amount."""
    return tuple(int(rng.integers(0, abs(int(d) - size) + 1)) for d in shape)


def crop_or_pad_to_cube(x: np.ndarray, size: int, offset: Sequence[int] | None = None) -> np.ndarray:
    """Crop or zero-pad the spatial axes of ``x`` (``[C, X, Y, Z]``) to ``size^3``.

    ``offset[i]`` is the crop start along axis i when that axis is longer than
    ``size``, and the padding placed before the data when it is shorter; ``None``
    centres the patch (test time).
    """
    x = np.asarray(x)
    spatial = x.shape[1:]
    if offset is None:
        offset = centred_cube_offset(spatial, size)
    if len(offset) != len(spatial):
        raise ValueError(f"offset {tuple(offset)} does not match spatial shape {spatial}")
    out = np.zeros((x.shape[0],) + (size,) * len(spatial), dtype=x.dtype)
    src, dst = [slice(None)], [slice(None)]
    for dim, off in zip(spatial, offset):
        off = int(off)
        if dim >= size:
            if not 0 <= off <= dim - size:
                raise ValueError(f"crop start {off} outside 0..{dim - size}")
            src.append(slice(off, off + size))
            dst.append(slice(0, size))
        else:
            if not 0 <= off <= size - dim:
                raise ValueError(f"pad {off} outside 0..{size - dim}")
            src.append(slice(0, dim))
            dst.append(slice(off, off + dim))
    out[tuple(dst)] = x[tuple(src)]
    return out
