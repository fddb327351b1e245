"""Augmentation and evaluation transforms (STUDY §1.3, 1.4) on real NIfTI patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vfnb.data.transforms as T
from vfnb.data.channels import crop_or_pad_to_cube, make_input_channels
from vfnb.data.processed import ProcessedDataset
from vfnb.errors import DatasetError
from vfnb.io import load_nifti, save_nifti
from vfnb.levels import MAX_LABEL


@pytest.fixture
def records(tiny_processed):
    return ProcessedDataset(tiny_processed).records("train", "t0")


def test_train_item_is_two_views_in_unit_range(records):
    ds = T.build_dataset(records[:4], cube_size=24, train=True)
    item = ds[(1, 7)]
    assert item["image"].shape == (2, 3, 24, 24, 24)
    assert item["image"].dtype == torch.float32
    assert type(item["image"]) is torch.Tensor  # no MetaTensor: default collate stays cheap
    assert item["grade"] == records[1]["grade"] and item["name"] == records[1]["name"] and item["index"] == 1
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    # the two views are independent draws
    assert not torch.equal(item["image"][0], item["image"][1])


def test_mask_channel_is_never_noised_or_scaled(records):
    ds = T.build_dataset(records, cube_size=24, train=True)
    for i, record in list(enumerate(records))[::3]:
        for seed in range(2):
            mask = ds[(i, 1000 * i + seed)]["image"][:, 2]
            values = set(torch.unique(mask).tolist())
            assert values <= {0.0, np.float32(record["label"] / MAX_LABEL).item()}, (record["name"], values)


def test_windows_are_augmented(records):
    """Across draws the window channels differ from the plain centred view (noise/affine/cutout act)."""
    train = T.build_dataset(records[:1], cube_size=24, train=True)
    plain = T.build_dataset(records[:1], cube_size=24, train=False)[0]["image"]
    draws = [train[(0, s)]["image"][0] for s in range(10)]
    changed = [not torch.allclose(d[:2], plain[:2]) for d in draws]
    assert all(changed)
    # noise acts on the windows only: some window voxel values are not in the clean image's value set
    noisy = [d for d in draws if not np.isin(d[1].numpy(), plain[1].numpy()).all()]
    assert noisy


def test_same_seed_same_views_different_seed_different(records):
    ds = T.build_dataset(records[:3], cube_size=24, train=True)
    a, b, c = ds[(2, 42)]["image"], ds[(2, 42)]["image"], ds[(2, 43)]["image"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the standalone transform is seeded the same way
    t1, t2 = T.train_transform(24, seed=5), T.train_transform(24, seed=5)
    seq1 = [t1(dict(records[0]))["image"] for _ in range(3)]
    seq2 = [t2(dict(records[0]))["image"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(seq1, seq2))
    assert not torch.equal(seq1[0], seq1[1])


def test_eval_transform_is_channels_then_centred_cube(records):
    record = records[0]
    hu, _, _ = load_nifti(record["image"])
    mask, _, _ = load_nifti(record["seg"])
    expected = crop_or_pad_to_cube(make_input_channels(hu, mask, record["label"]), 32)
    got = T.eval_transform(32)(dict(record))["image"]
    assert got.shape == (3, 32, 32, 32)
    np.testing.assert_array_equal(got.numpy(), expected)
    ds_item = T.build_dataset([record], 32, train=False)[0]["image"]
    assert torch.equal(ds_item, got)


def test_patch_resized_when_in_plane_size_differs(records):
    """A 32-voxel patch trained at cube 16 is halved on every axis, not cropped to its centre."""
    item = T.eval_transform(16)(dict(records[0]))
    assert item["image"].shape == (3, 16, 16, 16)
    mask, _, _ = load_nifti(records[0]["seg"])
    # the whole vertebra survives (cropping the 32^3 centre to 16^3 would cut the box of 14 x 12 voxels)
    kept = float((item["image"][2] > 0).sum()) * 8
    assert kept == pytest.approx(float(mask.sum()), rel=0.2)
    assert set(torch.unique(item["image"][2]).tolist()) <= {0.0, np.float32(records[0]["label"] / MAX_LABEL).item()}


def test_cache_reads_each_file_once(records, monkeypatch):
    calls = []
    real = T.load_nifti

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(T, "load_nifti", counting)
    ds = T.build_dataset(records[:5], cube_size=24, train=True, cache=True)
    for epoch in range(3):
        for i in range(5):
            ds[(i, epoch * 10 + i)]
    assert len(calls) == 10  # image + mask of 5 vertebrae, once
    ds.as_eval()[0]
    assert len(calls) == 10  # the evaluation view shares the cache
    calls.clear()
    uncached = T.build_dataset(records[:5], cube_size=24, train=True, cache=False)
    for epoch in range(3):
        for i in range(5):
            uncached[(i, i)]
    assert len(calls) == 30


def test_ranges_scale_with_cube_size():
    assert T.scaled_voxels(T.SHIFT_VOXELS, 128) == 10.0
    assert T.scaled_voxels(T.CUTOUT_MAX_EDGE, 64) == 10.0
    affine = [t for t in T.augment_transform(64).transforms if isinstance(t, T.RandTogether)][0].inner.transforms[0]
    assert affine.rand_affine.rand_affine_grid.translate_range == (5.0, 5.0, 5.0)
    cutouts = [t for t in T.augment_transform(64).transforms if isinstance(t, T.RandCoarseDropoutd)]
    assert len(cutouts) == 4 and all(c.dropper.max_spatial_size == 10 for c in cutouts)


def test_rand_together_applies_all_or_nothing_with_its_probability():
    class Mark:
        def __init__(self, key):
            self.key = key

        def __call__(self, d):
            return {**d, self.key: True}

    together = T.RandTogether([Mark("a"), Mark("b")], prob=0.7).set_random_state(seed=0)
    results = [together({}) for _ in range(400)]
    assert all(("a" in r) == ("b" in r) for r in results)
    assert 0.62 < np.mean(["a" in r for r in results]) < 0.78


def test_corrupt_patch_is_named(tiny_processed, records):
    broken = records[2]["image"]
    with open(broken, "wb") as fh:
        fh.write(b"not a nifti")
    with pytest.raises(DatasetError, match=records[2]["name"]):
        T.build_dataset(records, cube_size=24, train=True)


def test_mismatched_mask_shape_is_refused(tmp_path, records):
    image, affine = load_nifti(records[0]["image"])[:2]
    save_nifti(tmp_path / "seg.nii.gz", np.zeros((8, 8, 8), np.uint8), affine)
    record = {**records[0], "seg": str(tmp_path / "seg.nii.gz")}
    with pytest.raises(DatasetError, match="shape"):
        T.eval_transform(24)(record)


def test_window_noise_has_the_reference_sigma_and_is_seeded():
    from vfnb.data.transforms import RandWindowNoised

    window = torch.full((2, 24, 24, 24), 0.5)
    first = RandWindowNoised(keys="window", std=0.05).set_random_state(seed=3)({"window": window})["window"]
    again = RandWindowNoised(keys="window", std=0.05).set_random_state(seed=3)({"window": window})["window"]
    other = RandWindowNoised(keys="window", std=0.05).set_random_state(seed=4)({"window": window})["window"]
    assert first.dtype == torch.float32
    assert abs(float((first - 0.5).std()) - 0.05) < 0.002
    assert abs(float((first - 0.5).mean())) < 0.002
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_random_zoom_is_isotropic_so_body_proportions_survive():
    from vfnb.data.transforms import IsotropicRandAffined

    affine = IsotropicRandAffined(keys="image", prob=1.0, scale_range=(0.2, 0.2, 0.2), mode="nearest")
    for seed in range(20):
        affine.set_random_state(seed=seed)
        affine({"image": torch.zeros(1, 8, 8, 8)})
        factors = affine.rand_affine.rand_affine_grid.scale_params
        assert len(factors) == 3 and factors[0] == factors[1] == factors[2]
        assert 0.8 <= factors[0] <= 1.2
    # the zoom actually applied is isotropic: a box keeps its proportions in every draw
    box = torch.zeros(1, 48, 48, 48)
    box[0, 9:39, 12:36, 16:32] = 1.0  # 30 x 24 x 16 voxels
    for seed in range(8):
        affine.set_random_state(seed=seed)
        zoomed = torch.as_tensor(affine({"image": box})["image"])[0]
        extent = [int((zoomed.sum(dim=tuple(d for d in range(3) if d != axis)) > 0).sum()) for axis in range(3)]
        assert abs(extent[2] / extent[0] - 16 / 30) < 0.05 and abs(extent[1] / extent[0] - 24 / 30) < 0.05, extent


def test_weak_augmentation_drops_cutout_intensity_and_noise_and_paper_is_the_default(records):
    def steps(pipeline):
        inner = [t for t in pipeline.transforms if isinstance(t, T.RandTogether)][0].inner.transforms
        return [type(t).__name__ for t in list(pipeline.transforms) + list(inner)]

    weak, paper = steps(T.augment_transform(32, augmentation="weak")), steps(T.augment_transform(32))
    assert "RandCoarseDropoutd" not in weak and "RandScaleIntensityd" not in weak and "RandWindowNoised" not in weak
    assert paper.count("RandCoarseDropoutd") == 4 and "RandWindowNoised" in paper
    affine = [t for t in T.augment_transform(32, augmentation="weak").transforms
              if isinstance(t, T.RandTogether)][0].inner.transforms[0].rand_affine.rand_affine_grid
    assert np.abs(np.ravel(affine.rotate_range)).max() == pytest.approx(np.radians(3.0))
    assert np.abs(np.ravel(affine.scale_range)).max() == pytest.approx(0.05)
    # the paper's preset is the default: same seed, same views
    a = T.PatchDataset(records[:2], 24, train=True)[(0, 3)]["image"]
    b = T.PatchDataset(records[:2], 24, train=True, augmentation="paper")[(0, 3)]["image"]
    assert torch.equal(a, b)
    weak_views = T.PatchDataset(records[:2], 24, train=True, augmentation="weak", views=3)[(0, 3)]["image"]
    assert weak_views.shape == (3, 3, 24, 24, 24) and not torch.equal(weak_views[0], weak_views[1])
    with pytest.raises(ValueError, match="strong"):
        T.augment_transform(32, augmentation="strong")
