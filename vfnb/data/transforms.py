"""Training augmentation and evaluation transforms (STUDY §1.3, 1.4), built from MONAI.

A record (``ProcessedDataset.records``: ``image``/``seg`` paths, ``label``, ``grade``,
``name``, ``image_id``) goes through two parts:

1. *Load* (deterministic, cached once per vertebra by :func:`build_dataset`): read the
   int16 HU patch and its binary mask ``[X, Y, Z]``; when the in-plane size ``X`` is not
   ``cube_size`` both are resized by ``cube_size / X`` on every axis (isotropic voxels
   stay isotropic; image trilinear with anti-aliasing, rounded back to int16 HU; mask
   nearest), so a dataset pre-processed at 128 can be trained at a smaller cube.
2. *Per draw*: the three input channels (:func:`vfnb.data.channels.make_input_channels`,
   ``[3, X, Y, Z]`` float32 in [0, 1]) and then, for training (two independent views
   per vertebra, :class:`TwoViews`):

   - cutout: two boxes, each with probability 0.5, edges 1..20 voxels (at a 128 cube),
     all three channels set to 0 (MONAI ``RandCoarseDropoutd``);
   - with probability 0.7, all together: rotation +-10 degrees about each axis, zoom
     +-20 % (one factor for all axes, :class:`IsotropicRandAffined`, so the body keeps its
     proportions) and shift +-10 voxels in one resampling (MONAI ``RandAffined``; window
     channels bilinear, mask channel nearest-neighbour, zeros outside), then an
     intensity scale +-10 % (one factor for both windows) and Gaussian noise
     sigma 0.05 on the two window channels only (drawn in float32 with torch,
     :class:`RandWindowNoised`), then a clip to [0, 1]. The noise is
     added after the resampling so its sigma is exactly 0.05 (bilinear resampling
     would smooth it); the mask channel is never scaled nor noised, so it keeps the
     values {0, label/28};
   - crop/pad to ``cube_size^3`` at a random offset;
   - cutout again.

   Evaluation: channels, then a centred crop/pad to the cube.

These are the paper's ranges (:data:`AUGMENTATIONS` ``"paper"``). A weaker set,
``"weak"`` (:class:`Augmentation`), is a named deviation used for SupCon pretraining
at small budgets.

Ranges are given for a 128 cube and scale with ``cube_size`` (shift 10 voxels and
cutout 20 voxels at 128 -> 3.75 and 7.5 at 48); angles and factors do not scale.
The original used nearest-neighbour for every channel; bilinear for the windows
avoids blocky aliasing when zooming and costs the same.

Randomness: every random transform draws from its own ``numpy.random.RandomState``
(MONAI ``Randomizable``). ``transform.set_random_state(seed)`` fixes all of them, so
the same seed gives the same views. :class:`PatchDataset` accepts ``(index, seed)``
keys and reseeds per draw, which makes a training run's augmentation a function of
``(seed, epoch, step, position)`` only: independent of worker count and exactly
reproducible after a resume.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureTyped,
    Lambdad,
    MapTransform,
    Randomizable,
    RandAffined,
    RandCoarseDropoutd,
    RandScaleIntensityd,
    Resize,
    Transform,
)
from monai.transforms import RandAffineGrid
from monai.utils import MAX_SEED

from ..errors import DatasetError, VfnbError
from ..io import load_nifti
from .channels import crop_or_pad_to_cube, make_input_channels

REFERENCE_CUBE = 128  # the ranges below are the paper's, for a 128^3 cube
CUTOUT_MAX_EDGE = 20  # voxels at 128
CUTOUT_PROB = 0.5  # per box; two boxes
AFFINE_PROB = 0.7  # rotation, zoom, shift, intensity scale and noise together
ROTATE_DEGREES = 10.0
ZOOM_RANGE = 0.2
SHIFT_VOXELS = 10.0  # at 128
INTENSITY_SCALE = 0.1
NOISE_SIGMA = 0.05


@dataclass(frozen=True)
class Augmentation:
    """The ranges of one augmentation strength (lengths in voxels at a 128 cube).

    ``paper`` is the study's augmentation (see the module docstring). ``weak`` keeps
    the geometry gentle (rotation +-3 degrees, zoom +-5 %, the paper's shift) and drops
    cutout, intensity scaling and noise. It exists for SupCon pretraining at small
    budgets: SupCon's positives are other vertebrae of the same grade, and with the
    paper's augmentation the change between two views of one vertebra is larger than
    the faint grade signal a young encoder can see, so the projections collapse and
    the loss stays at its no-structure value (docs/SUPCON-RECIPE.md). A strength of
    0 (or a probability of 0) removes that step from the pipeline.
    """

    affine_prob: float = AFFINE_PROB
    rotate_degrees: float = ROTATE_DEGREES
    zoom_range: float = ZOOM_RANGE
    shift_voxels: float = SHIFT_VOXELS
    intensity_scale: float = INTENSITY_SCALE
    noise_sigma: float = NOISE_SIGMA
    cutout_prob: float = CUTOUT_PROB
    cutout_max_edge: float = CUTOUT_MAX_EDGE


AUGMENTATIONS: dict[str, Augmentation] = {
    "paper": Augmentation(),
    "weak": Augmentation(rotate_degrees=3.0, zoom_range=0.05, intensity_scale=0.0, noise_sigma=0.0, cutout_prob=0.0),
}


def augmentation_named(name: "str | Augmentation") -> Augmentation:
    """The :class:`Augmentation` called ``name`` (one of :data:`AUGMENTATIONS`); raises ``ValueError`` otherwise."""
    if isinstance(name, Augmentation):
        return name
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation {name!r}: expected one of {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]


# keys carried from a record into every item
META_KEYS = ("label", "grade", "name", "image_id")


def scaled_voxels(value_at_128: float, cube_size: int) -> float:
    """A length in voxels given for a 128 cube, scaled to ``cube_size``."""
    return float(value_at_128) * int(cube_size) / REFERENCE_CUBE


def _user_error(exc: BaseException) -> BaseException | None:
    """The :class:`VfnbError` MONAI wrapped in ``RuntimeError("applying transform ...")``, if any."""
    seen = exc
    while seen is not None:
        if isinstance(seen, VfnbError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Pipeline(Compose):
    """MONAI ``Compose`` that lets a vfnb error (bad file, bad shape) through unwrapped."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except RuntimeError as exc:
            cause = _user_error(exc)
            if cause is None:
                raise
            raise cause.with_traceback(None) from None


# ------------------------------------------------------------------ load (deterministic)
class LoadPatchd(Transform):
    """Record -> ``{"hu": int16 [X,Y,Z] HU, "mask": uint8 [X,Y,Z] binary, label, grade, name, image_id}``.

    Reads ``record["image"]`` and ``record["seg"]`` with :func:`vfnb.io.load_nifti`
    (a corrupt file raises :class:`vfnb.errors.DatasetError` naming it), or takes a
    patch already in memory from ``record["hu"]`` and ``record["mask"]`` (what
    :func:`vfnb.inference.grading.predict_scan` passes: a scan's patches never touch the disk).
    When the in-plane size differs from ``cube_size`` the patch is resized by
    ``cube_size / X`` along every axis. Cached by :func:`build_dataset`, so kept
    compact (int16 + uint8, not the float channels).
    """

    def __init__(self, cube_size: int):
        self.cube_size = int(cube_size)

    def __call__(self, record: Mapping[Hashable, Any]) -> dict:
        if "hu" in record:
            hu, mask = np.asarray(record["hu"]), np.asarray(record["mask"])
            where, image = record.get("name", "patch"), "its image"
        else:
            hu, _, _ = load_nifti(record["image"])
            mask, _, _ = load_nifti(record["seg"])
            where, image = record["seg"], record["image"]
        if hu.ndim != 3 or hu.shape != mask.shape:
            raise DatasetError(f"{where}: mask shape {mask.shape} does not match image {image} "
                               f"shape {hu.shape}; expected two 3D arrays of the same shape")
        hu = np.asarray(hu, dtype=np.int16)
        mask = (np.asarray(mask) > 0).astype(np.uint8)
        if hu.shape[0] != self.cube_size:
            factor = self.cube_size / hu.shape[0]
            size = tuple(max(1, int(round(s * factor))) for s in hu.shape)
            image_resize = Resize(size, mode="trilinear", anti_aliasing=factor < 1)
            mask_resize = Resize(size, mode="nearest")
            hu = np.round(np.asarray(image_resize(torch.from_numpy(hu[None].astype(np.float32))))[0]).astype(np.int16)
            mask = np.asarray(mask_resize(torch.from_numpy(mask[None].astype(np.float32))))[0].astype(np.uint8)
        out = {"hu": hu, "mask": mask}
        for key in META_KEYS:
            if key in record:
                out[key] = record[key]
        return out


class InputChannelsd(Transform):
    """``hu`` + ``mask`` + ``label`` -> ``"image"``, the network input ``[3, X, Y, Z]`` float32 (STUDY §1.3)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = {k: v for k, v in data.items() if k not in ("hu", "mask")}
        d["image"] = make_input_channels(data["hu"], data["mask"], int(data["label"]))
        return d


# ------------------------------------------------------------------ random parts
def _clip_unit(x):
    # a module-level function (not a lambda) so the transform pickles into DataLoader workers
    return x.clamp(0.0, 1.0) if isinstance(x, torch.Tensor) else np.clip(x, 0.0, 1.0)


class RandTogether(Randomizable, Transform):
    """Apply ``transforms`` (a list, run in order) all together with probability ``prob``, else none."""

    def __init__(self, transforms: Sequence[Callable], prob: float):
        self.inner = Compose(list(transforms))
        self.prob = float(prob)
        self._do = False

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed=seed, state=state)
        self.inner.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.rand() < self.prob

    def __call__(self, data):
        self.randomize()
        return self.inner(data) if self._do else data


class _IsotropicRandAffineGrid(RandAffineGrid):
    """MONAI ``RandAffineGrid`` whose random zoom uses one factor for all axes."""

    def randomize(self, data: Any = None) -> None:
        super().randomize(data)
        if self.scale_params:
            self.scale_params = [self.scale_params[0]] * len(self.scale_params)


class IsotropicRandAffined(RandAffined):
    """MONAI ``RandAffined`` with an isotropic zoom (one factor for X, Y and Z).

    MONAI draws an independent zoom per axis. Independent factors of +-20 % change
    a vertebral body's height relative to its depth by up to ~50 %, more than the
    20-25 % height loss that defines a mild (grade 1) fracture: the augmentation
    would erase the very sign the model must learn, and SupCon would be trained to
    call a shortened and a normal view of one vertebra the same. One zoom factor
    keeps the body's proportions; rotation and shift stay per axis.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the grid draws the zoom (also when RandAffine re-randomizes it inside its call)
        self.rand_affine.rand_affine_grid.__class__ = _IsotropicRandAffineGrid


class RandWindowNoised(Randomizable, MapTransform):
    """Add zero-mean Gaussian noise (``std``) to float tensors, drawn in float32 with torch.

    Same role as MONAI ``RandGaussianNoised`` (always applied), but MONAI draws the
    noise as float64 with NumPy's legacy generator, which was ~25 % of the augmentation
    time at 128^3. Here the transform's own random state picks a seed for a torch
    generator, so views stay reproducible from the pipeline seed.
    """

    def __init__(self, keys, std: float):
        MapTransform.__init__(self, keys)
        self.std = float(std)
        self._seed = 0

    def randomize(self, data: Any = None) -> None:
        self._seed = int(self.R.randint(MAX_SEED, dtype="uint32"))

    def __call__(self, data):
        self.randomize()
        d = dict(data)
        generator = torch.Generator().manual_seed(self._seed)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)  # on the CPU: same views anywhere
            d[key] = x + noise.mul_(self.std).to(device=x.device, dtype=x.dtype)
        return d


class RandCubed(Randomizable, MapTransform):
    """Crop or zero-pad ``[C, X, Y, Z]`` to ``size^3`` at a uniformly random offset per axis."""

    def __init__(self, keys, size: int):
        MapTransform.__init__(self, keys)
        self.size = int(size)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = np.asarray(d[key].detach().cpu() if isinstance(d[key], torch.Tensor) else d[key])
            offset = tuple(int(self.R.randint(0, abs(int(s) - self.size) + 1)) for s in x.shape[1:])
            d[key] = torch.from_numpy(crop_or_pad_to_cube(x, self.size, offset))
        return d


class CentredCubed(MapTransform):
    """Crop or zero-pad ``[C, X, Y, Z]`` to ``size^3``, centred (evaluation)."""

    def __init__(self, keys, size: int):
        super().__init__(keys)
        self.size = int(size)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.from_numpy(crop_or_pad_to_cube(np.asarray(d[key]), self.size))
        return d


def _cutout(cube_size: int, aug: Augmentation) -> list:
    if aug.cutout_prob <= 0 or aug.cutout_max_edge <= 0:
        return []
    edge = max(1, int(round(scaled_voxels(aug.cutout_max_edge, cube_size))))
    # two independent single-box transforms: "up to 2 boxes, each with probability 0.5"
    return [RandCoarseDropoutd(keys="image", holes=1, spatial_size=1, max_spatial_size=edge,
                               fill_value=0.0, prob=aug.cutout_prob) for _ in range(2)]


def augment_transform(cube_size: int, seed: int | None = 0, augmentation: str | Augmentation = "paper") -> Compose:
    """Per-draw training part: ``{hu, mask, label, ...}`` -> ``{"image": [3, S, S, S] float32, ...}``.

    ``S = cube_size``; ``augmentation``: a name of :data:`AUGMENTATIONS` or an
    :class:`Augmentation`. See the module docstring for the steps and their order.
    """
    cube_size = int(cube_size)
    aug = augmentation_named(augmentation)
    shift = scaled_voxels(aug.shift_voxels, cube_size)
    angle = math.radians(aug.rotate_degrees)
    resample = [IsotropicRandAffined(keys=("window", "mask"), prob=1.0, rotate_range=(angle, angle, angle),
                                     scale_range=(aug.zoom_range,) * 3, translate_range=(shift,) * 3,
                                     mode=("bilinear", "nearest"), padding_mode="zeros")]
    if aug.intensity_scale > 0:
        resample.append(RandScaleIntensityd(keys="window", factors=aug.intensity_scale, prob=1.0))
    if aug.noise_sigma > 0:
        resample.append(RandWindowNoised(keys="window", std=aug.noise_sigma))
    resample.append(Lambdad(keys="window", func=_clip_unit))
    pipeline = Pipeline([
        InputChannelsd(),
        *_cutout(cube_size, aug),
        _SplitChannelsd(),
        RandTogether(resample, prob=aug.affine_prob),
        ConcatItemsd(keys=("window", "mask"), name="image", dim=0),
        DeleteItemsd(keys=("window", "mask")),
        RandCubed(keys="image", size=cube_size),
        *_cutout(cube_size, aug),
        EnsureTyped(keys="image", data_type="tensor", dtype=torch.float32, track_meta=False),
    ])
    if seed is not None:
        pipeline.set_random_state(seed=int(seed))
    return pipeline


class _SplitChannelsd(Transform):
    """``image [3,...]`` -> ``window [2,...]`` + ``mask [1,...]`` as plain tensors (so both branches match)."""

    def __call__(self, data):
        d = dict(data)
        image = d.pop("image")
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(np.asarray(image))
        d["window"], d["mask"] = image[:2].contiguous(), image[2:].contiguous()
        return d


def train_transform(cube_size: int, seed: int | None = 0, augmentation: str | Augmentation = "paper") -> Compose:
    """Record -> one augmented view ``{"image": [3, S, S, S] float32, label, grade, name, image_id}``.

    Load + :func:`augment_transform`; seeded with ``seed`` (the same seed gives the
    same sequence of views). Wrap in :class:`TwoViews` for the two-view input.
    """
    pipeline = Pipeline([LoadPatchd(cube_size), augment_transform(cube_size, seed=None, augmentation=augmentation)])
    if seed is not None:
        pipeline.set_random_state(seed=int(seed))
    return pipeline


def eval_transform(cube_size: int) -> Compose:
    """Record -> ``{"image": [3, S, S, S] float32, label, grade, name, image_id}``: channels, centred cube."""
    return Pipeline([LoadPatchd(cube_size), _eval_part(cube_size)])


def _eval_part(cube_size: int) -> Compose:
    return Pipeline([
        InputChannelsd(),
        CentredCubed(keys="image", size=cube_size),
        EnsureTyped(keys="image", data_type="tensor", dtype=torch.float32, track_meta=False),
    ])


class TwoViews(Randomizable, Transform):
    """Apply a random ``transform`` twice: ``"image"`` becomes ``[2, C, S, S, S]`` (two views).

    The views are independent draws from the transform's random stream; other keys
    come from the input.
    """

    def __init__(self, transform: Callable, views: int = 2):
        self.transform = transform
        self.views = int(views)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed=seed, state=state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:  # the wrapped transform draws its own numbers
        return None

    def __call__(self, data):
        drawn = [self.transform(dict(data)) for _ in range(self.views)]
        out = dict(drawn[0])
        out["image"] = torch.stack([torch.as_tensor(v["image"]) for v in drawn])
        return out


# ------------------------------------------------------------------ dataset
class PatchDataset(torch.utils.data.Dataset):
    """Vertebra patches for training (two augmented views) or evaluation (one centred view).

    ``dataset[i]`` -> dict ``image`` (train ``[2, 3, S, S, S]``, eval ``[3, S, S, S]``,
    float32), ``grade``, ``label``, ``name``, ``image_id``, ``index``. For training,
    ``dataset[(i, seed)]`` draws the views with the random state reset to ``seed``
    (what the training engine does: reproducible per draw, whatever the worker
    count); a plain ``i`` continues the dataset's own random stream, seeded at
    construction (in DataLoader workers each worker holds a copy of that stream).

    Loading (read + resize) happens once per vertebra when ``cache=True`` (MONAI
    ``CacheDataset``, filled at construction); with ``cache=False`` every draw reads
    the files again.
    """

    def __init__(self, records: Sequence[Mapping], cube_size: int, train: bool, cache: bool = True,
                 seed: int = 0, cache_workers: int = 1, augmentation: str | Augmentation = "paper", views: int = 2):
        from monai.data import CacheDataset

        self.records = [dict(r) for r in records]
        self.cube_size = int(cube_size)
        self.train = bool(train)
        load = Pipeline([LoadPatchd(self.cube_size)])
        if cache:
            try:
                self.loaded = CacheDataset(self.records, transform=load, cache_rate=1.0, num_workers=cache_workers,
                                           progress=False, copy_cache=False)
            except RuntimeError as exc:  # CacheDataset's threads wrap errors again
                cause = _user_error(exc)
                if cause is None:
                    raise
                raise cause.with_traceback(None) from None
        else:
            self.loaded = _Uncached(self.records, load)
        if self.train:
            self.transform = TwoViews(augment_transform(self.cube_size, seed=None, augmentation=augmentation),
                                      views=views)
            self.transform.set_random_state(seed=int(seed))
        else:
            self.transform = _eval_part(self.cube_size)
        self.grades = [int(r["grade"]) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def as_eval(self) -> "PatchDataset":
        """The same vertebrae (sharing the cache) with the evaluation transform: one centred view."""
        other = copy.copy(self)
        other.train = False
        other.transform = _eval_part(self.cube_size)
        return other

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            index, draw_seed = int(key[0]), int(key[1])
            if self.train:
                self.transform.set_random_state(seed=draw_seed)
        else:
            index = int(key)
        item = self.transform(self.loaded[index])
        item["index"] = index
        return item


class _Uncached:
    """``loaded[i]``: read record ``i`` now (``cache=False``)."""

    def __init__(self, records, load):
        self.records, self.load = records, load

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.load(self.records[index])


def build_dataset(records: Sequence[Mapping], cube_size: int, train: bool, cache: bool = True,
                  seed: int = 0, augmentation: str | Augmentation = "paper", views: int = 2) -> PatchDataset:
    """A :class:`PatchDataset` over ``records`` (from ``ProcessedDataset.records``).

    Training sets draw ``views`` augmented views per vertebra with ``augmentation``.
    """
    return PatchDataset(records, cube_size, train, cache=cache, seed=seed, augmentation=augmentation, views=views)
