"""Training augmentation on the training device, for a whole batch and all its views at once.

The CPU (MONAI) path, :func:`vfnb.data.transforms.augment_transform`, augments one view
at a time in DataLoader workers; on a GPU that cannot feed the step (issue 14). Here the
loader only reads the cached patches (:class:`CachedPatches`: int16 HU + uint8 mask,
zero-padded to one working shape so they collate, plus each patch's true shape, label
and grade) and :func:`augment_batch` makes the views on the device. The steps, their
order, ranges and probabilities are those of the CPU path (module docstring of
:mod:`vfnb.data.transforms`), for the same :class:`~vfnb.data.transforms.Augmentation`:

1. the three input channels (two HU windows, mask * label/28; the constants of
   :mod:`vfnb.data.channels`), zero outside each patch's true shape;
2. cutout: two boxes, each with probability ``cutout_prob``, edges uniform in
   1..``cutout_max_edge`` voxels per axis (scaled to the cube; clipped to the patch),
   corner uniform among the positions inside the patch (as MONAI ``RandCoarseDropoutd``);
3. with probability ``affine_prob`` per view: one resampling (rotation uniform in
   +-``rotate_degrees`` about each axis, one zoom factor 1 + U(-``zoom_range``,
   ``zoom_range``) for all axes, shift uniform in +-``shift_voxels`` per axis),
   composed as MONAI ``RandAffine`` does (input position = R (zoom * p + shift), ``p``
   the output voxel relative to the patch centre, in voxels; MONAI's ``create_rotate``
   builds R), bilinear for the windows, nearest for the mask, zeros outside; then an
   intensity factor 1 + U(-``intensity_scale``, ``intensity_scale``) on both windows,
   Gaussian noise of sigma ``noise_sigma`` on the windows, a clip to [0, 1]. The mask
   channel is never scaled nor noised: it keeps the values {0, label/28};
4. crop or zero-pad to ``cube_size^3`` at a uniformly random offset per axis;
5. cutout again (in the cube).

Steps 3 and 4 are one ``grid_sample``: the crop is an integer translation of the
resampled patch, so the grid is evaluated directly at the cube's voxels, and voxels
that the crop/pad takes from outside the patch are set to zero. A view without the
affine step goes through the same call with the identity (which reproduces the voxels
up to float rounding).

Randomness: :func:`draw_params` draws every parameter (a few numbers per view) with a
CPU ``torch.Generator``, separate from :func:`apply`, which only applies them; the
Gaussian noise is drawn in :func:`apply` on the device from a seed that is one of the
parameters. The same generator seed therefore gives the same views, and tests can
apply the same parameters with MONAI (``tests/test_device_augment.py``). Views of a
batch are independent draws. The device path does not reproduce the CPU path's
random streams (the CPU path draws with NumPy per view); it reproduces its
distributions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..levels import MAX_LABEL
from .channels import BONE_WINDOW, SOFT_TISSUE_WINDOW
from .transforms import Augmentation, augmentation_named, scaled_voxels

CUTOUT_BOXES = 2  # per cutout step, each with probability cutout_prob (as the CPU path)


@dataclass
class AugmentParams:
    """The drawn parameters of ``N = batch * views`` views (tensors on the CPU, leading dim ``N``).

    ``views`` views per vertebra, view ``v`` of vertebra ``b`` at row ``b * views + v``.
    Cutout boxes ``[N, 2, ...]``: ``*_on`` bool, ``*_edge`` int64 voxels per axis (before
    clipping to the patch), ``*_corner`` float in [0, 1): the corner is
    ``floor(corner * (size - edge + 1))`` along each axis, so that a draw does not depend
    on the patch shape. ``affine_on`` [N] bool; ``rotate`` [N, 3] radians; ``zoom`` [N]
    factor; ``shift`` [N, 3] voxels; ``intensity`` [N] factor; ``crop`` [N, 3] in [0, 1)
    (offset ``floor(crop * (|size - cube| + 1))``); ``noise_seed``: the seed of the noise
    generator; ``noise_sigma`` the noise's sigma (0: none).
    """

    views: int
    cutout_before_on: torch.Tensor
    cutout_before_edge: torch.Tensor
    cutout_before_corner: torch.Tensor
    affine_on: torch.Tensor
    rotate: torch.Tensor
    zoom: torch.Tensor
    shift: torch.Tensor
    intensity: torch.Tensor
    crop: torch.Tensor
    cutout_after_on: torch.Tensor
    cutout_after_edge: torch.Tensor
    cutout_after_corner: torch.Tensor
    noise_seed: int
    noise_sigma: float

    def view(self, n: int) -> dict:
        """The parameters of view row ``n`` as plain Python numbers (for a reference implementation)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value[n].tolist() if isinstance(value, torch.Tensor) else value
        return out


def _uniform(generator: torch.Generator, shape, half_range: float) -> torch.Tensor:
    """U(-half_range, half_range) in float64 (exactly 0 when ``half_range`` is 0)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (2.0 * u - 1.0) * float(half_range)


def _cutout_draw(generator, n: int, aug: Augmentation, cube_size: int):
    on = torch.rand((n, CUTOUT_BOXES), generator=generator, dtype=torch.float64) < aug.cutout_prob
    max_edge = max(1, int(round(scaled_voxels(aug.cutout_max_edge, cube_size))))
    edge = torch.randint(1, max_edge + 1, (n, CUTOUT_BOXES, 3), generator=generator)
    corner = torch.rand((n, CUTOUT_BOXES, 3), generator=generator, dtype=torch.float64)
    if aug.cutout_prob <= 0 or aug.cutout_max_edge <= 0:  # the CPU path has no cutout step then
        on = torch.zeros_like(on)
    return on, edge, corner


def draw_params(batch_size: int, views: int, aug: "str | Augmentation", cube_size: int,
                generator: torch.Generator) -> AugmentParams:
    """Draw the augmentation of ``batch_size`` vertebrae x ``views`` views with ``generator`` (a CPU generator).

    Distributions (lengths in voxels at ``cube_size``, scaled from the 128 cube like the
    CPU path): cutout box on ~ Bernoulli(``cutout_prob``), edge ~ uniform integer
    1..``round(cutout_max_edge)``, corner fraction ~ U[0, 1); affine on ~
    Bernoulli(``affine_prob``); rotation ~ U(+-``rotate_degrees``) per axis; zoom ~
    1 + U(+-``zoom_range``); shift ~ U(+-``shift_voxels``) per axis; intensity ~
    1 + U(+-``intensity_scale``); crop fraction ~ U[0, 1). Every number is drawn whatever
    the augmentation (zeros give exact 0 ranges), so one seed keeps the same stream.
    """
    aug = augmentation_named(aug)
    n = int(batch_size) * int(views)
    before = _cutout_draw(generator, n, aug, cube_size)
    affine_on = torch.rand(n, generator=generator, dtype=torch.float64) < aug.affine_prob
    rotate = _uniform(generator, (n, 3), np.deg2rad(aug.rotate_degrees))
    zoom = 1.0 + _uniform(generator, (n,), aug.zoom_range)
    shift = _uniform(generator, (n, 3), scaled_voxels(aug.shift_voxels, cube_size))
    intensity = 1.0 + _uniform(generator, (n,), aug.intensity_scale)
    crop = torch.rand((n, 3), generator=generator, dtype=torch.float64)
    after = _cutout_draw(generator, n, aug, cube_size)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return AugmentParams(views=int(views), cutout_before_on=before[0], cutout_before_edge=before[1],
                         cutout_before_corner=before[2], affine_on=affine_on, rotate=rotate, zoom=zoom, shift=shift,
                         intensity=intensity, crop=crop, cutout_after_on=after[0], cutout_after_edge=after[1],
                         cutout_after_corner=after[2], noise_seed=noise_seed,
                         noise_sigma=float(aug.noise_sigma) if aug.noise_sigma > 0 else 0.0)


# ------------------------------------------------------------------ integer geometry (shared with tests)
def box_start(corner: float, size: int, edge: int) -> tuple[int, int]:
    """``(start, clipped edge)`` of a cutout box along one axis of length ``size``."""
    edge = min(int(edge), int(size))
    return int(np.floor(corner * (size - edge + 1))), edge


def crop_offset(fraction: float, size: int, cube_size: int) -> int:
    """The crop start (``size >= cube_size``) or pad-before amount along one axis (see ``crop_or_pad_to_cube``)."""
    return int(np.floor(fraction * (abs(int(size) - int(cube_size)) + 1)))


def affine_matrix(rotate, zoom: float, shift) -> np.ndarray:
    """4x4 (float64): output voxel relative to the centre -> input position, as MONAI ``AffineGrid``.

    ``R @ T(shift) @ S(zoom)`` with MONAI's ``create_rotate`` (its default axis order).
    """
    from monai.transforms.utils import create_rotate, create_scale, create_translate

    return (np.asarray(create_rotate(3, list(rotate), backend="numpy"), dtype=np.float64)
            @ np.asarray(create_translate(3, list(shift), backend="numpy"), dtype=np.float64)
            @ np.asarray(create_scale(3, [zoom] * 3, backend="numpy"), dtype=np.float64))


# ------------------------------------------------------------------ application
def _box_keep(on, edge, corner, sizes, grid_shape, device) -> torch.Tensor:
    """``[N, 1, *grid_shape]`` float: 0 inside any active box, 1 elsewhere.

    ``sizes`` [N, 3] int64: the extent of each view's content (the box must fit in it).
    """
    sizes = sizes.to(torch.int64)[:, None, :]  # [N, 1, 3]
    edge = torch.minimum(edge, sizes)
    start = torch.floor(corner * (sizes - edge + 1).to(torch.float64)).to(torch.int64)
    start, stop, on = start.to(device), (start + edge).to(device), on.to(device)
    inside = on[:, :, None, None, None]
    for axis, length in enumerate(grid_shape):
        coord = torch.arange(length, device=device)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = length
        coord = coord.view(shape)
        lo = start[:, :, axis].view(-1, CUTOUT_BOXES, 1, 1, 1)
        hi = stop[:, :, axis].view(-1, CUTOUT_BOXES, 1, 1, 1)
        inside = inside & (coord >= lo) & (coord < hi)
    return (~inside.any(dim=1, keepdim=True)).to(torch.float32)


def _window(hu: torch.Tensor, level: float, width: float) -> torch.Tensor:
    low = np.float32(level - width / 2.0)
    return ((hu - float(low)) / float(np.float32(width))).clamp_(0.0, 1.0)


def input_channels(hu: torch.Tensor, mask: torch.Tensor, label: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """``hu`` [B, X, Y, Z] int HU, ``mask`` [B, X, Y, Z], ``label`` [B], ``shape`` [B, 3] -> [B, 3, X, Y, Z] float32.

    The channels of :func:`vfnb.data.channels.make_input_channels`, zero outside each
    patch's true ``shape`` (the padding of :class:`CachedPatches`).
    """
    hu = hu.to(torch.float32)
    valid = _inside(shape.to(hu.device), hu.shape[1:])[:, 0]
    code = (label.to(hu.device, torch.float32) / MAX_LABEL).view(-1, 1, 1, 1)
    return torch.stack([_window(hu, *SOFT_TISSUE_WINDOW), _window(hu, *BONE_WINDOW),
                        (mask > 0).to(torch.float32) * code], dim=1) * valid[:, None]


def _inside(shape: torch.Tensor, grid_shape, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, 1, *grid_shape]`` bool: voxel ``k`` with ``0 <= k + offset < shape`` on every axis."""
    n = shape.shape[0]
    out = torch.ones((n, 1) + tuple(grid_shape), dtype=torch.bool, device=shape.device)
    for axis, length in enumerate(grid_shape):
        coord = torch.arange(length, device=shape.device).view(1, -1)
        if offset is not None:
            coord = coord + offset[:, axis:axis + 1]
        ok = (coord >= 0) & (coord < shape[:, axis:axis + 1])
        view = [n, 1, 1, 1, 1]
        view[2 + axis] = length
        out = out & ok.view(view)
    return out


def _theta(params: AugmentParams, shape: np.ndarray, working: tuple, cube_size: int):
    """``([N, 3, 4] theta for affine_grid, [N, 3] int64 source offset of the crop)``.

    Output cube voxel ``k`` -> resampled-patch voxel ``i = k + offset`` (the crop/pad)
    -> centred ``i - (d - 1) / 2`` -> the view's affine -> input voxel -> the working
    tensor's normalised coordinate (``align_corners=False``). Composed in float64.
    """
    n = params.affine_on.shape[0]
    thetas = np.empty((n, 3, 4))
    offsets = np.empty((n, 3), dtype=np.int64)
    reverse = np.eye(4)[[2, 1, 0, 3]]  # array axes (X, Y, Z) <-> grid_sample's (x=Z, y=Y, z=X)
    w = np.asarray(working, dtype=np.float64)
    for row in range(n):
        d = shape[row // params.views].astype(np.float64)
        for axis in range(3):
            off = crop_offset(float(params.crop[row, axis]), int(d[axis]), cube_size)
            offsets[row, axis] = off if d[axis] >= cube_size else -off
        if bool(params.affine_on[row]):
            a = affine_matrix(params.rotate[row].tolist(), float(params.zoom[row]), params.shift[row].tolist())
        else:
            a = np.eye(4)
        # normalised output n -> centred output voxel: k = (S n + S - 1) / 2, c = k + offset - (d - 1) / 2
        out_to_centred = np.eye(4)
        out_to_centred[:3, :3] *= cube_size / 2.0
        out_to_centred[:3, 3] = (cube_size - 1) / 2.0 + offsets[row] - (d - 1) / 2.0
        # centred input voxel -> normalised working coordinate: n = (2 j + 1) / W - 1, j = c + (d - 1) / 2
        centred_to_in = np.diag(np.append(2.0 / w, 1.0))
        centred_to_in[:3, 3] = d / w - 1.0
        thetas[row] = (reverse @ centred_to_in @ a @ out_to_centred @ reverse)[:3]
    return thetas, offsets


def apply(hu: torch.Tensor, mask: torch.Tensor, label: torch.Tensor, shape: torch.Tensor, params: AugmentParams,
          cube_size: int) -> torch.Tensor:
    """Apply drawn ``params`` to a batch of cached patches on their device.

    ``hu`` [B, X, Y, Z] int16 HU and ``mask`` [B, X, Y, Z] (uint8, binary), zero-padded to
    one working shape; ``label`` [B] VerSe labels; ``shape`` [B, 3] each patch's true
    shape (voxels). Returns ``[B, V, 3, S, S, S]`` float32 on ``hu``'s device,
    ``S = cube_size``, ``V = params.views``.
    """
    device, cube_size, views = hu.device, int(cube_size), params.views
    b, working = hu.shape[0], tuple(int(s) for s in hu.shape[1:])
    shape_cpu = shape.detach().to("cpu", torch.int64)
    view_shape = shape_cpu.repeat_interleave(views, dim=0)  # [N, 3]
    x = input_channels(hu, mask, label, shape).repeat_interleave(views, dim=0)  # [N, 3, *working]
    x = x * _box_keep(params.cutout_before_on, params.cutout_before_edge, params.cutout_before_corner,
                      view_shape, working, device)

    thetas, offsets = _theta(params, shape_cpu.numpy(), working, cube_size)
    grid = F.affine_grid(torch.as_tensor(thetas, dtype=torch.float32, device=device),
                         [x.shape[0], 1] + [cube_size] * 3, align_corners=False)
    windows = F.grid_sample(x[:, :2], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    code = F.grid_sample(x[:, 2:], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    del x, grid

    affine_on = params.affine_on.to(device)
    factor = torch.where(affine_on, params.intensity.to(device), torch.ones_like(params.intensity, device=device))
    windows = windows * factor.to(torch.float32).view(-1, 1, 1, 1, 1)
    if params.noise_sigma > 0:
        generator = torch.Generator(device=device).manual_seed(params.noise_seed)
        noise = torch.randn(windows.shape, generator=generator, device=device, dtype=torch.float32)
        windows = windows + noise * (params.noise_sigma * affine_on.to(torch.float32)).view(-1, 1, 1, 1, 1)
    windows = windows.clamp_(0.0, 1.0)  # a no-op for views without the affine step (already in [0, 1])

    inside = _inside(view_shape.to(device), (cube_size,) * 3, torch.as_tensor(offsets, device=device))
    cube = torch.cat([windows, code], dim=1) * inside
    cube_sizes = torch.full_like(view_shape, cube_size)
    cube = cube * _box_keep(params.cutout_after_on, params.cutout_after_edge, params.cutout_after_corner,
                            cube_sizes, (cube_size,) * 3, device)
    return cube.view(b, views, 3, cube_size, cube_size, cube_size)


def augment_batch(batch: Mapping[str, Any], views: int, aug: "str | Augmentation", cube_size: int,
                  generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """A collated :class:`CachedPatches` batch -> ``[B, views, 3, S, S, S]`` float32 views on ``device``.

    Draws the parameters with ``generator`` (CPU) and applies them on ``device``.
    """
    hu = batch["hu"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    params = draw_params(hu.shape[0], views, aug, cube_size, generator)
    return apply(hu, mask, torch.as_tensor(batch["label"]), torch.as_tensor(batch["shape"]), params, cube_size)


# ------------------------------------------------------------------ the loader side
class CachedPatches(torch.utils.data.Dataset):
    """The cached patches of a training :class:`~vfnb.data.transforms.PatchDataset`, un-augmented.

    ``dataset[i]`` or ``dataset[(i, seed)]`` (the seed is ignored: the device draws the
    augmentation) -> ``hu`` [X, Y, Z] int16 and ``mask`` uint8, zero-padded at the end of
    each axis to the largest shape in the dataset (``working_shape``) so a batch
    collates; ``shape`` [3] the true shape; ``label``, ``grade``, ``name``,
    ``image_id``, ``index``. Shares the dataset's cache (read once per vertebra).
    """

    def __init__(self, dataset):
        self.loaded = dataset.loaded
        shapes = [np.shape(self.loaded[i]["hu"]) for i in range(len(self.loaded))]
        self.working_shape = tuple(int(s) for s in np.max(np.asarray(shapes), axis=0))

    def __len__(self) -> int:
        return len(self.loaded)

    def __getitem__(self, key):
        index = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        item = self.loaded[index]
        hu, mask = np.asarray(item["hu"]), np.asarray(item["mask"])
        pad = [(0, w - s) for s, w in zip(hu.shape, self.working_shape)]
        out = {k: item[k] for k in ("label", "grade", "name", "image_id") if k in item}
        out.update(hu=torch.from_numpy(np.pad(hu, pad).astype(np.int16)),
                   mask=torch.from_numpy(np.pad(mask, pad).astype(np.uint8)),
                   shape=torch.as_tensor(hu.shape, dtype=torch.int64), index=index)
        return out
