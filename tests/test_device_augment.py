"""Augmentation on the training device (vfnb.data.device_augment), checked on CPU tensors.

The reference for every view is the CPU path's own building blocks applied with the
same drawn parameters: :func:`make_input_channels`, MONAI ``Affine`` (the resampling
``RandAffine`` runs once it has drawn its parameters), ``crop_or_pad_to_cube`` and box
slicing for cutout.

Tolerance of that comparison: the device path evaluates one ``grid_sample`` for the
affine and the crop together, its grid composed in float64 and sampled in float32,
while MONAI composes the grid in float32 and normalises it separately; the sample
positions therefore differ by float rounding (~1e-6 voxel), which moves bilinear
values by ~1e-6 (measured: mean |diff| <= 2e-7, max <= 5e-6 at 24^3). We allow a
mean absolute difference of 1e-5 and a maximum of 1e-3 on the window channels (in
[0, 1]), and for the nearest-neighbour mask channel a voxel agreement >= 0.999 (a
rounding difference can flip a voxel whose position lies on a half-voxel boundary).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Affine

from tests.conftest import tiny_patch
from vfnb.data import device_augment as D
from vfnb.data.channels import crop_or_pad_to_cube, make_input_channels
from vfnb.data.transforms import AUGMENTATIONS, Augmentation, build_dataset
from vfnb.levels import MAX_LABEL

CUBE = 24
SHAPES = [(24, 24, 20), (24, 24, 30), (24, 24, 24)]  # shorter, longer and equal to the cube along Z
LABELS = [17, 20, 24]
WINDOW_MEAN_TOL, WINDOW_MAX_TOL, MASK_AGREEMENT = 1e-5, 1e-3, 0.999


def _batch():
    """Three patches of different Z, padded to one working shape as CachedPatches does."""
    patches = [tiny_patch(i % 4, seed=i, shape=s) for i, s in enumerate(SHAPES)]
    working = tuple(np.max(SHAPES, axis=0))
    pad = lambda a: np.pad(a, [(0, w - s) for s, w in zip(a.shape, working)])  # noqa: E731
    hu = torch.from_numpy(np.stack([pad(h) for h, _ in patches]))
    mask = torch.from_numpy(np.stack([pad(m) for _, m in patches]))
    return patches, hu, mask, torch.tensor(LABELS), torch.tensor(SHAPES)


def _cutout(x, on, edge, corner):
    for box in range(D.CUTOUT_BOXES):
        if on[box]:
            where = [slice(None)]
            for axis in range(3):
                start, e = D.box_start(corner[box][axis], x.shape[1 + axis], edge[box][axis])
                where.append(slice(start, start + e))
            x[tuple(where)] = 0.0
    return x


def reference_view(hu, mask, label, view: dict, cube_size: int) -> np.ndarray:
    """One view made with the CPU path's pieces (MONAI ``Affine`` for the resampling), noise excluded."""
    x = make_input_channels(hu, mask, label)
    x = _cutout(x, view["cutout_before_on"], view["cutout_before_edge"], view["cutout_before_corner"])
    if view["affine_on"]:
        affine = Affine(rotate_params=view["rotate"], scale_params=[view["zoom"]] * 3,
                        translate_params=view["shift"], padding_mode="zeros", image_only=True)
        windows = np.asarray(affine(torch.as_tensor(x[:2]), mode="bilinear")) * np.float32(view["intensity"])
        code = np.asarray(affine(torch.as_tensor(x[2:]), mode="nearest"))
        x = np.concatenate([np.clip(windows, 0.0, 1.0), code]).astype(np.float32)
    offset = [D.crop_offset(view["crop"][a], x.shape[1 + a], cube_size) for a in range(3)]
    x = crop_or_pad_to_cube(x, cube_size, offset)
    return _cutout(x, view["cutout_after_on"], view["cutout_after_edge"], view["cutout_after_corner"])


def _draw(aug="paper", seed=0, batch=3, views=4, cube=CUBE):
    return D.draw_params(batch, views, aug, cube, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("aug", [Augmentation(noise_sigma=0.0), AUGMENTATIONS["weak"]],
                         ids=["paper-without-noise", "weak"])
def test_same_parameters_same_views_as_the_monai_path(aug):
    patches, hu, mask, label, shape = _batch()
    params = _draw(aug, seed=0)
    out = D.apply(hu, mask, label, shape, params, CUBE)
    assert out.shape == (3, 4, 3, CUBE, CUBE, CUBE) and out.dtype == torch.float32
    kinds = set()
    for n in range(12):
        b, v = divmod(n, params.views)
        view = params.view(n)
        kinds.add(view["affine_on"])
        ref = reference_view(*patches[b], LABELS[b], view, CUBE)
        got = out[b, v].numpy()
        diff = np.abs(got[:2] - ref[:2])
        assert diff.mean() <= WINDOW_MEAN_TOL and diff.max() <= WINDOW_MAX_TOL, (n, view)
        assert (got[2] == ref[2]).mean() >= MASK_AGREEMENT, (n, view)
    assert kinds == {True, False}  # both branches compared


def test_cutout_boxes_are_compared_too():
    # force every box on so the cutout geometry (edges clipped to the patch, corners) is checked
    patches, hu, mask, label, shape = _batch()
    params = _draw(Augmentation(noise_sigma=0.0, cutout_prob=1.0, cutout_max_edge=60.0), seed=5)
    out = D.apply(hu, mask, label, shape, params, CUBE)
    for n in range(12):
        b, v = divmod(n, params.views)
        ref = reference_view(*patches[b], LABELS[b], params.view(n), CUBE)
        assert np.abs(out[b, v, :2].numpy() - ref[:2]).mean() <= WINDOW_MEAN_TOL
        assert (out[b, v, 2].numpy() == ref[2]).mean() >= MASK_AGREEMENT


def test_drawn_parameters_follow_their_distributions():
    aug = AUGMENTATIONS["paper"]
    cube = 128  # the ranges as given
    p = _draw(aug, seed=1, batch=500, views=4, cube=cube)  # N = 2000 views
    # Bernoulli means: 4 standard errors
    for on, prob in ((p.affine_on, aug.affine_prob), (p.cutout_before_on, aug.cutout_prob),
                     (p.cutout_after_on, aug.cutout_prob)):
        flat = on.double().flatten()
        assert abs(flat.mean().item() - prob) <= 4 * np.sqrt(prob * (1 - prob) / flat.numel())
    # uniform ranges: inside the bounds, mean 0 (4 SE), spread close to the uniform's (half-range / sqrt 3)
    for values, half in ((p.rotate, np.deg2rad(aug.rotate_degrees)), (p.zoom - 1, aug.zoom_range),
                         (p.shift, aug.shift_voxels), (p.intensity - 1, aug.intensity_scale)):
        v = values.flatten()
        assert v.abs().max().item() <= half
        assert abs(v.mean().item()) <= 4 * half / np.sqrt(3) / np.sqrt(v.numel())
        assert v.std().item() == pytest.approx(half / np.sqrt(3), rel=0.08)
    # cutout edges: uniform integers 1..20 at 128, all values seen
    edges = p.cutout_before_edge.flatten()
    assert edges.min().item() == 1 and edges.max().item() == aug.cutout_max_edge
    assert edges.double().mean().item() == pytest.approx((1 + aug.cutout_max_edge) / 2, abs=0.3)
    for fraction in (p.crop, p.cutout_after_corner):
        assert 0.0 <= fraction.min().item() and fraction.max().item() < 1.0
        assert fraction.double().mean().item() == pytest.approx(0.5, abs=0.02)
    # rotations about the three axes and the views are independent draws (no shared numbers)
    assert abs(np.corrcoef(p.rotate[:, 0], p.rotate[:, 1])[0, 1]) < 0.1
    assert abs(np.corrcoef(p.zoom[0::4], p.zoom[1::4])[0, 1]) < 0.1
    assert p.noise_sigma == aug.noise_sigma
    # integer offsets are uniform over every position
    assert {D.crop_offset(f, 30, 24) for f in p.crop[:, 0].tolist()} == set(range(7))


def test_weak_preset_draws_no_noise_intensity_or_cutout():
    p = _draw("weak", seed=2, batch=50)
    assert not p.cutout_before_on.any() and not p.cutout_after_on.any()
    assert torch.all(p.intensity == 1.0) and p.noise_sigma == 0.0
    assert p.rotate.abs().max().item() <= np.deg2rad(3.0) and (p.zoom - 1).abs().max().item() <= 0.05
    _, hu, mask, label, shape = _batch()
    zero_noise = D.apply(hu, mask, label, shape, _draw("weak", seed=2), CUBE)
    assert torch.equal(zero_noise, D.apply(hu, mask, label, shape, _draw("weak", seed=2), CUBE))


def test_mask_channel_keeps_its_values_and_is_never_noised_or_scaled():
    _, hu, mask, label, shape = _batch()
    aug = Augmentation(affine_prob=1.0, intensity_scale=0.5, noise_sigma=0.3)
    params = _draw(aug, seed=4)
    out = D.apply(hu, mask, label, shape, params, CUBE)
    for b in range(3):
        values = set(np.unique(out[b, :, 2].numpy()).tolist())
        assert values <= {0.0, np.float32(LABELS[b] / MAX_LABEL)}, values
        assert len(values) == 2
    windows = out[:, :, :2]
    assert windows.min() >= 0.0 and windows.max() <= 1.0
    # the noise sits on the windows with its sigma: same parameters without noise, difference on unclipped voxels
    quiet = D.apply(hu, mask, label, shape, _draw(Augmentation(affine_prob=1.0, intensity_scale=0.5, noise_sigma=0.0),
                                                   seed=4), CUBE)
    noisy = D.apply(hu, mask, label, shape, _draw(Augmentation(affine_prob=1.0, intensity_scale=0.5, noise_sigma=0.05),
                                                   seed=4), CUBE)
    unclipped = (quiet[:, :, :2] > 0.3) & (quiet[:, :, :2] < 0.7)
    residual = (noisy[:, :, :2] - quiet[:, :, :2])[unclipped]
    assert residual.numel() > 10_000
    assert residual.std().item() == pytest.approx(0.05, rel=0.05) and abs(residual.mean().item()) < 0.002
    assert torch.equal(noisy[:, :, 2], quiet[:, :, 2])
    assert torch.equal(out[:, :, 2], quiet[:, :, 2])  # same geometry: the mask channel is untouched by them


def test_views_are_independent_and_seeds_reproduce():
    _, hu, mask, label, shape = _batch()
    a = D.apply(hu, mask, label, shape, _draw(seed=7), CUBE)
    again = D.apply(hu, mask, label, shape, _draw(seed=7), CUBE)
    other = D.apply(hu, mask, label, shape, _draw(seed=8), CUBE)
    assert torch.equal(a, again)
    assert not torch.equal(a, other)
    for b in range(3):
        for v in range(1, 4):
            assert not torch.equal(a[b, 0], a[b, v])
    p = _draw(seed=7)
    assert len({tuple(r) for r in p.rotate.tolist()}) == 12 and len(set(p.zoom.tolist())) == 12


def test_cached_patches_pad_to_one_shape_and_keep_the_true_one(tiny_processed):
    from vfnb.data.processed import ProcessedDataset

    records = ProcessedDataset(tiny_processed).records("train", "t0")[:6]
    train_set = build_dataset(records, 16, train=True)
    cached = D.CachedPatches(train_set)
    item = cached[(2, 12345)]
    assert item["hu"].dtype == torch.int16 and item["mask"].dtype == torch.uint8
    assert tuple(item["hu"].shape) == cached.working_shape
    true = tuple(item["shape"].tolist())
    assert np.array_equal(item["hu"][:true[0], :true[1], :true[2]].numpy(), train_set.loaded[2]["hu"])
    batch = torch.utils.data.default_collate([cached[i] for i in range(4)])
    views = D.augment_batch(batch, 2, "paper", 16, torch.Generator().manual_seed(0), "cpu")
    assert views.shape == (4, 2, 3, 16, 16, 16)


def test_training_with_device_augmentation_runs_and_resumes(tiny_processed, tmp_path):
    from vfnb.models.checkpoints import load_checkpoint
    from vfnb.training.engine import train

    params = dict(tag="t0", cube_size=16, backbone="resnet10", backbone_kwargs={"block_inplanes": [4, 8, 8, 16]},
                  workers=0, threads=1, eval_batch_size=32, progress=False, device="cpu", dataset=str(tiny_processed),
                  mode="joint", epochs=2, epoch_mode="replacement", batches_per_epoch=2, augment_on="device")
    whole = train(params, tmp_path / "whole")
    train(params, tmp_path / "cut", stop_after_epochs=1)
    resumed = train(None, tmp_path / "cut", resume=True)
    a = load_checkpoint(whole.last_checkpoint).state_dict()
    b = load_checkpoint(resumed.last_checkpoint).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cpu = train({**params, "augment_on": "cpu"}, tmp_path / "cpu")  # the other path gives other views
    c = load_checkpoint(cpu.last_checkpoint).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_augment_on_resolves_by_device():
    from vfnb.training.config import validate_params
    from vfnb.data.batches import augments_on_device
    from vfnb.errors import ParamsError

    assert validate_params({})["augment_on"] == "auto"
    with pytest.raises(ParamsError, match="augment_on"):
        validate_params({"augment_on": "gpu"})
    assert augments_on_device("auto", torch.device("cuda", 0)) and augments_on_device("device", torch.device("cuda"))
    # on the CPU the batched path runs in the loader, not in the main process's step
    assert not augments_on_device("auto", torch.device("cpu")) and not augments_on_device("device", torch.device("cpu"))
    assert not augments_on_device("cpu", torch.device("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_match_the_cpu_application():
    _, hu, mask, label, shape = _batch()
    params = _draw(Augmentation(noise_sigma=0.0), seed=9)
    on_cpu = D.apply(hu, mask, label, shape, params, CUBE)
    on_gpu = D.apply(hu.cuda(), mask.cuda(), label, shape, params, CUBE).cpu()
    assert (on_gpu[:, :, :2] - on_cpu[:, :, :2]).abs().mean() <= WINDOW_MEAN_TOL
    assert (on_gpu[:, :, 2] == on_cpu[:, :, 2]).double().mean() >= MASK_AGREEMENT
    noisy = _draw(seed=9)
    first = D.apply(hu.cuda(), mask.cuda(), label, shape, noisy, CUBE)
    assert torch.equal(first, D.apply(hu.cuda(), mask.cuda(), label, shape, noisy, CUBE))  # seeded on the device
