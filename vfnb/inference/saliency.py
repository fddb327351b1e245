"""Where the network looks: saliency maps for one vertebra, and where they fall.

Two of MONAI's methods (``monai.visualize``):

- **Grad-CAM** on the encoder's last convolutional block: the block's feature
  maps weighted by the gradient of the chosen grade's logit, upsampled to the
  input cube and scaled to [0, 1]. Coarse (the last block of resnet10 at a
  32 cube is 4 voxels wide) but cheap: one forward and one backward pass.
- **Occlusion sensitivity** as a check: how much the chosen grade's probability
  drops when a cube of the input is replaced by the image mean, for every
  position of a sliding cube. Model-agnostic but costs one forward pass per
  position, so the study runs it on a sample only.

:func:`region_masks` splits the network input into anatomical regions
(endplate zones of the vertebral body, the rest of the body, the posterior
elements, neighbouring bone, background) and :func:`saliency_shares` says what
fraction of a map falls in each, against the fraction a uniform map would put
there (the region's volume share). A model that grades by the level code, the
neighbours or the background shows it here.

:func:`heat_to_scan` maps a cube's map back into the CT's own voxel grid, for
overlays in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from monai.visualize import GradCAM, OcclusionSensitivity
from scipy import ndimage
from torch import nn

from ..data.channels import BONE_WINDOW, centred_cube_offset
from ..morphometry.heights import mid_sagittal_slice, vertebral_body

TARGET_LAYER = "model.encoder.layer4"  # the last convolutional block of every backbone in vfnb.models.networks
REGIONS = ("endplates", "body core", "posterior elements", "neighbouring bone", "background")
ENDPLATE_FRACTION = 0.2  # the top and bottom 20 % of each body column are its endplate zones
BONE_HU = 200.0          # voxels outside the vertebra above this are counted as (neighbouring) bone


class GradeLogits(nn.Module):
    """A :class:`vfnb.models.networks.GradingModel` seen as ``x -> grade logits`` (what MONAI's tools expect)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def _unchanged(maps: torch.Tensor) -> torch.Tensor:
    return maps


def scale_map(heat: np.ndarray) -> np.ndarray:
    """One map min-max scaled to [0, 1], its strongest evidence at 1; a flat map is all 0."""
    heat = np.asarray(heat, dtype=float)
    low, high = float(heat.min()), float(heat.max())
    return (heat - low) / (high - low) if high > low else np.zeros_like(heat)


def grad_cam(model: nn.Module, x: torch.Tensor, grade: int | Sequence[int] | None = None,
             scaled: bool = True) -> np.ndarray:
    """Grad-CAM maps ``[B, X, Y, Z]`` for inputs ``x`` ``[B, C, X, Y, Z]``.

    ``grade``: the grade whose logit is explained (one per input, or one for all);
    ``None`` explains each input's predicted grade. ``scaled``: each map min-max
    scaled to [0, 1] (:func:`scale_map`), 1 where the evidence for the grade is
    strongest; ``False`` gives MONAI's unscaled map (ReLU of the gradient-weighted
    activations, upsampled), whose values compare across inputs of one model, for
    figures that put several maps on one colour scale. MONAI's own default scaling
    maps the largest value to 0 (it reverses the map), so it is replaced here. The
    model is put in eval mode; its parameters are left as they were (frozen ones included).
    """
    model.eval()
    cam = GradCAM(nn_module=GradeLogits(model), target_layers=TARGET_LAYER, postprocessing=_unchanged)
    # gradients flow from the input, not into the parameters: no .grad is left behind
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.enable_grad():
            heat = cam(x.detach().clone().requires_grad_(True), class_idx=grade)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    maps = heat[:, 0].detach().cpu().numpy().astype(np.float32)
    return np.stack([scale_map(m) for m in maps]).astype(np.float32) if scaled else maps


def occlusion(model: nn.Module, x: torch.Tensor, grade: int, mask_size: int = 8, overlap: float = 0.5,
              n_batch: int = 32) -> np.ndarray:
    """Occlusion sensitivity ``[X, Y, Z]`` of one input ``x`` ``[1, C, X, Y, Z]`` for ``grade``.

    The drop in the grade's probability when a ``mask_size`` cube around each voxel
    is replaced by the input's mean (positive: the region supported the grade),
    averaged over the overlapping windows that cover the voxel.
    """
    model.eval()
    sensitivity = OcclusionSensitivity(nn_module=GradeLogits(model), mask_size=mask_size, n_batch=n_batch,
                                       mode="mean_img", overlap=overlap, activate=True, verbose=False)
    with torch.no_grad(), warnings.catch_warnings():
        # MONAI indexes with a list (a torch deprecation notice per call): not ours to fix, not the reader's concern
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        occluded, _ = sensitivity(x)
        base = torch.softmax(GradeLogits(model)(x), dim=1)[0, grade]
    return (base - occluded[0, grade]).cpu().numpy()


def region_masks(x: np.ndarray) -> dict[str, np.ndarray]:
    """Anatomical regions of one network input ``[3, X, Y, Z]`` (channels of :mod:`vfnb.data.channels`).

    The vertebra is channel 2's mask. Its body is the part anterior to the body's
    posterior wall on the mid-sagittal slice (the canal separates body and arch
    there); the endplate zones are the top and bottom :data:`ENDPLATE_FRACTION` of
    every body column along axis 2 (inferior -> superior). Neighbouring bone: voxels
    outside the mask brighter than :data:`BONE_HU` in the bone window. Every voxel
    is in exactly one region.
    """
    vertebra = np.asarray(x[2]) > 0
    level, width = BONE_WINDOW
    bone = (np.asarray(x[1]) * width + level - width / 2 > BONE_HU) & ~vertebra
    body = np.zeros_like(vertebra)
    if vertebra.any():
        posterior_wall = np.nonzero(vertebral_body(mid_sagittal_slice(vertebra)))[0].min()
        body = vertebra.copy()
        body[:, :posterior_wall] = False
    endplates = _endplate_zones(body)
    return {"endplates": endplates, "body core": body & ~endplates, "posterior elements": vertebra & ~body,
            "neighbouring bone": bone, "background": ~vertebra & ~bone}


def _endplate_zones(body: np.ndarray) -> np.ndarray:
    """The top and bottom :data:`ENDPLATE_FRACTION` of every (x, y) column of ``body`` along axis 2."""
    z = np.arange(body.shape[2])[None, None, :]
    top = np.where(body, z, -1).max(axis=2, keepdims=True)
    bottom = np.where(body, z, body.shape[2]).min(axis=2, keepdims=True)
    zone = np.maximum(1, np.round(ENDPLATE_FRACTION * (top - bottom + 1)))
    return body & ((z > top - zone) | (z < bottom + zone))


def saliency_shares(heat: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per region: ``share`` of the (positive part of the) map and ``volume`` share of the cube.

    ``share / volume`` above 1: the map is concentrated there. Shares are NaN for an
    all-zero map.
    """
    heat = np.clip(np.asarray(heat, dtype=float), 0, None)
    total = heat.sum()
    out = {}
    for name, region in regions.items():
        out[name] = {"share": float(heat[region].sum() / total) if total > 0 else float("nan"),
                     "volume": float(region.mean())}
    return out


def heat_to_scan(heat: np.ndarray, patch_affine: np.ndarray, patch_shape: Sequence[int],
                 scan_affine: np.ndarray, scan_shape: Sequence[int]) -> np.ndarray:
    """A map on the network's cube ``[S, S, S]`` resampled into the CT's voxel grid (float32, 0 outside).

    Undoes the evaluation transform: the patch (``patch_shape``, voxel -> world
    ``patch_affine``) was resized by ``S / patch_shape[0]`` on every axis (linear,
    pixel centres aligned as in MONAI's ``Resize``) and then centre-cropped or
    padded to ``S``. Each CT voxel is mapped to world, to patch and to cube
    coordinates and the map is interpolated linearly there.
    """
    heat = np.asarray(heat, dtype=np.float32)
    size = heat.shape[0]
    factor = size / patch_shape[0]
    resized = np.array([max(1, int(round(n * factor))) for n in patch_shape])
    offset = np.array(centred_cube_offset(resized, size))
    sign = np.where(resized >= size, -1, 1)  # crop: cube = resized - offset; pad: cube = resized + offset
    to_patch = np.linalg.inv(patch_affine) @ np.asarray(scan_affine, dtype=float)
    box = _patch_box_in_scan(to_patch, patch_shape, scan_shape)
    out = np.zeros(tuple(int(n) for n in scan_shape), dtype=np.float32)
    if box is None:
        return out
    grid = np.stack(np.meshgrid(*(np.arange(lo, hi) for lo, hi in box), indexing="ij"), axis=0).reshape(3, -1)
    patch = to_patch[:3, :3] @ grid + to_patch[:3, 3:4]
    scale = (resized / np.asarray(patch_shape, dtype=float))[:, None]
    cube = (patch + 0.5) * scale - 0.5 + sign[:, None] * offset[:, None]
    values = ndimage.map_coordinates(heat, cube, order=1, mode="constant", cval=0.0)
    out[tuple(slice(lo, hi) for lo, hi in box)] = values.reshape([hi - lo for lo, hi in box])
    return out


def _patch_box_in_scan(to_patch: np.ndarray, patch_shape: Sequence[int], scan_shape: Sequence[int]):
    """The CT voxel box ``[(lo, hi)] * 3`` covering the patch (None when they do not overlap)."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in patch_shape], indexing="ij")).reshape(3, -1)
    to_scan = np.linalg.inv(to_patch)
    scan = to_scan[:3, :3] @ corners + to_scan[:3, 3:4]
    lo = np.maximum(np.floor(scan.min(axis=1)).astype(int), 0)
    hi = np.minimum(np.ceil(scan.max(axis=1)).astype(int) + 1, np.asarray(scan_shape))
    if np.any(hi <= lo):
        return None
    return [(int(a), int(b)) for a, b in zip(lo, hi)]


def explain_records(model: nn.Module, records: Sequence[dict], occlusion_check: int = 0) -> list[dict]:
    """Grad-CAM of the predicted grade for each record, with its input and regions.

    Returns one dict per record: ``name``, ``grade`` (the reference), ``pred``,
    ``input`` ``[3, S, S, S]``, ``gradcam`` ``[S, S, S]`` (scaled to [0, 1]), ``gradcam_raw``
    (the same map unscaled, comparable between the records of one model), ``regions`` and ``shares``
    (:func:`saliency_shares`); the first ``occlusion_check`` records also get
    ``occlusion`` and its shares (``occlusion_shares``), to check Grad-CAM against a
    model-agnostic method. The model runs at its own cube size (``input_spec``).
    """
    from ..data.transforms import eval_transform
    from ..models.networks import unwrap_model

    net = unwrap_model(model).cpu().eval()
    transform = eval_transform(net.input_spec.cube_size)
    out = []
    for index, record in enumerate(records):
        x = torch.as_tensor(transform(dict(record))["image"])[None]
        with torch.no_grad():
            pred = int(net(x)[0].argmax(dim=1))
        raw = grad_cam(net, x, grade=pred, scaled=False)[0]
        heat = scale_map(raw).astype(np.float32)
        regions = region_masks(x[0].numpy())
        item = {"name": record.get("name"), "grade": record.get("grade"), "pred": pred, "input": x[0].numpy(),
                "gradcam": heat, "gradcam_raw": raw, "regions": regions, "shares": saliency_shares(heat, regions)}
        if index < occlusion_check:
            item["occlusion"] = occlusion(net, x, pred)
            item["occlusion_shares"] = saliency_shares(item["occlusion"], regions)
        out.append(item)
    return out


def share_table(explained: Sequence[dict], key: str = "shares"):
    """One row per explained record: ``name, grade, pred`` and the share of the map in each region."""
    import pandas as pd

    rows = [{"name": e["name"], "grade": e["grade"], "pred": e["pred"],
             **{region: e[key][region]["share"] for region in REGIONS}} for e in explained if key in e]
    return pd.DataFrame(rows)


def share_summary(explained: Sequence[dict]):
    """Mean share of the Grad-CAM map per region, against the region's mean volume share (uniform map)."""
    import pandas as pd

    rows = {}
    for region in REGIONS:
        shares = np.asarray([e["shares"][region]["share"] for e in explained], dtype=float)
        shares = shares[np.isfinite(shares)]  # an empty map has no share
        share = float(shares.mean()) if shares.size else float("nan")
        volume = np.mean([e["shares"][region]["volume"] for e in explained])
        rows[region] = {"share of the map": share, "share of the cube": volume,
                        "concentration (share / cube)": share / volume if volume else float("nan")}
    return pd.DataFrame(rows).T
