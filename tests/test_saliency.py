"""Saliency: MONAI's Grad-CAM and occlusion on the study's model, regions, shares, and the way back to the CT."""

import numpy as np
import pytest
import torch

from vfnb.data.channels import make_input_channels
from vfnb.data.preprocess import patch_grid, sample_in_world
from vfnb.data.transforms import eval_transform
from vfnb.io import save_nifti
from vfnb.models.networks import build_model
from vfnb.inference.saliency import (REGIONS, grad_cam, heat_to_scan, occlusion, region_masks, saliency_shares,
                                    share_summary)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet10", feature_dim=16)


def test_grad_cam_maps_cover_the_input_and_leave_the_model_as_it_was(model):
    x = torch.rand(2, 3, 32, 32, 32)  # 32: the last block is 2 voxels wide (at 16 it is 1 and the map flat)
    for p in model.encoder.parameters():  # a frozen encoder (linear probe) must still be explained
        p.requires_grad_(False)
    heat = grad_cam(model, x, grade=[1, 3])
    assert heat.shape == (2, 32, 32, 32)
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)  # each map scaled to [0, 1]
    other = grad_cam(model, x, grade=[0, 2])
    assert not np.allclose(heat, other)  # the explained grade matters
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.parameters())
    for p in model.encoder.parameters():
        p.requires_grad_(True)


def test_grad_cam_is_highest_where_the_unscaled_evidence_is(model):
    # MONAI's default scaling reverses a map (its largest value becomes 0): the scaled map must keep the order
    x = torch.rand(2, 3, 32, 32, 32)
    raw = grad_cam(model, x, grade=[1, 3], scaled=False)
    heat = grad_cam(model, x, grade=[1, 3])
    assert raw.min() >= 0 and raw.max() > 0
    for r, h in zip(raw, heat):
        if r.max() == r.min():  # no positive evidence anywhere: a flat map stays flat, at 0
            assert not h.any()
            continue
        assert h.flat[r.argmax()] == pytest.approx(1.0) and h.flat[r.argmin()] == pytest.approx(0.0)
        assert np.corrcoef(r.ravel(), h.ravel())[0, 1] > 0.999  # the same map, scaled


def test_occlusion_finds_the_only_region_that_matters():
    """A model whose grade-1 logit reads one corner of channel 0: occluding that corner lowers grade 1."""

    class CornerReader(torch.nn.Module):
        def forward(self, x):
            corner = x[:, 0, :4, :4, :4].mean(dim=(1, 2, 3))
            logits = torch.stack([torch.zeros_like(corner), 10 * corner, torch.zeros_like(corner),
                                  torch.zeros_like(corner)], dim=1)
            return logits, logits

    x = torch.zeros(1, 3, 16, 16, 16)
    x[0, 0, :4, :4, :4] = 1.0
    sensitivity = occlusion(CornerReader(), x, grade=1, mask_size=4, overlap=0.5)
    assert sensitivity.shape == (16, 16, 16)
    assert sensitivity[:4, :4, :4].mean() > 0.1
    assert np.abs(sensitivity[8:, 8:, 8:]).max() < 1e-6


def _vertebra_input(n=24):
    """An input cube: body (a box) + arch behind a canal + a neighbour's bone above, known geometry."""
    hu = np.full((n, n, n), -100.0)
    mask = np.zeros((n, n, n), dtype=np.uint8)
    mask[6:18, 12:22, 6:16] = 1   # body: y 12-21 (anterior), z 6-15
    mask[10:14, 2:8, 8:13] = 1    # arch, behind the canal (y 8-11 empty)
    hu[mask > 0] = 600.0
    hu[6:18, 12:22, 18:22] = 600.0  # the vertebra above: bone outside the mask
    return make_input_channels(hu, mask, label=20), mask


def test_regions_partition_the_cube_and_place_endplates_top_and_bottom():
    x, mask = _vertebra_input()
    regions = region_masks(x)
    assert tuple(regions) == REGIONS
    stack = np.stack(list(regions.values()))
    assert np.all(stack.sum(axis=0) == 1)  # every voxel in exactly one region
    body = regions["endplates"] | regions["body core"]
    assert body.sum() == 12 * 10 * 10 and regions["posterior elements"].sum() == 4 * 6 * 5
    # body columns are 10 high: endplate zones are the 2 top and 2 bottom voxels
    assert regions["endplates"][:, :, [6, 7, 14, 15]].sum() == 12 * 10 * 4
    assert not regions["endplates"][:, :, 8:14].any()
    assert regions["neighbouring bone"].sum() == 12 * 10 * 4


def test_shares_against_hand_computed_values():
    regions = {"a": np.array([True, True, False, False]), "b": np.array([False, False, True, True])}
    out = saliency_shares(np.array([3.0, 1.0, -5.0, 0.0]), regions)  # negative parts do not count
    assert out["a"] == {"share": 1.0, "volume": 0.5}
    assert out["b"] == {"share": 0.0, "volume": 0.5}
    assert np.isnan(saliency_shares(np.zeros(4), regions)["a"]["share"])


@pytest.mark.parametrize("scan_affine", [
    np.diag([0.8, 0.8, 1.5, 1.0]),                                          # RAS, anisotropic
    np.array([[-0.9, 0, 0, 40.0], [0, -0.9, 0, 30.0], [0, 0, 1.2, -20.0], [0, 0, 0, 1]]),  # LPS
    np.array([[0, 0, 1.1, -10.0], [1.0, 0, 0, 5.0], [0, 1.0, 0, 0.0], [0, 0, 0, 1]]),     # permuted axes
])
def test_heat_returns_to_the_voxel_it_came_from(tmp_path, scan_affine):
    """A bright spot in a CT, through the real patch sampling and evaluation transform, back to the CT.

    The spot is sampled into a patch (pre-processing), the patch into the network's
    cube (the evaluation transform, resize + centred crop/pad); the cube's bone
    channel, used as a 'heat map', is mapped back to the CT grid: its peak must be
    on the spot, and the map has the CT's shape.
    """
    shape = (40, 44, 36)
    spot = (21, 17, 19)
    ct = np.full(shape, -1000.0)
    ct[spot[0] - 1:spot[0] + 2, spot[1] - 1:spot[1] + 2, spot[2] - 1:spot[2] + 2] = 1000.0
    voxels = np.array(np.meshgrid(*[(s - 8, s + 8) for s in spot], indexing="ij")).reshape(3, -1)
    world = scan_affine[:3, :3] @ voxels + scan_affine[:3, 3:4]
    patch_affine, patch_shape = patch_grid(world.min(axis=1), world.max(axis=1), 20)
    patch, _ = sample_in_world(ct, scan_affine, patch_affine, patch_shape, order=1, fill=-1000.0)
    save_nifti(tmp_path / "img.nii.gz", patch.astype(np.int16), patch_affine)
    save_nifti(tmp_path / "seg.nii.gz", (patch > 0).astype(np.uint8), patch_affine)
    record = {"image": str(tmp_path / "img.nii.gz"), "seg": str(tmp_path / "seg.nii.gz"), "label": 20, "grade": 0,
              "name": "x", "image_id": "x"}
    cube = np.asarray(eval_transform(16)(record)["image"])[1]
    back = heat_to_scan(cube, patch_affine, patch_shape, scan_affine, shape)
    assert back.shape == shape and back.dtype == np.float32
    peak = np.unravel_index(np.argmax(back), shape)
    assert np.abs(np.array(peak) - np.array(spot)).max() <= 1
    far = list(spot)
    far[0] = 2
    assert back[tuple(far)] == 0.0  # outside the patch: no heat


def test_share_summary_skips_empty_maps_and_stays_quiet_when_all_are_empty(recwarn):
    """An empty map has no share: the mean is over the others, and NaN (no warning on the page) when none has one."""
    def entry(share):
        return {"shares": {r: {"share": share, "volume": 0.25} for r in REGIONS}}

    mixed = share_summary([entry(0.5), entry(float("nan"))])
    assert mixed["share of the map"].tolist() == [0.5] * len(REGIONS)
    assert mixed["concentration (share / cube)"].tolist() == [2.0] * len(REGIONS)
    empty = share_summary([entry(float("nan"))] * 2)
    assert empty["share of the map"].isna().all()
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
