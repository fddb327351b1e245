"""One SynthSpine case: the patient drawn into a scan with its own geometry, scanner blur and noise, and header orientation."""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from scipy import ndimage

from ...errors import ParamsError
from ...io import NIFTI_SUFFIX
from .config import DENSITY_CLASSES, ORIENTATIONS, SynthConfig, _check_config
from .drawing import _background, _draw_disc, _draw_vertebra, _Tissue
from .geometry import _Grid, _place, _virtual_neighbour
from .labelmaps import segmenter_labels
from .patient import _Vertebra, sample_patient


@dataclass
class SynthCase:
    """One generated scan. ``image`` int16 HU and the uint8 label maps share ``affine`` (voxel -> RAS mm).

    ``seg`` is the segmenter-style label map (generous around the bone, what the study
    trains on and what users' segmenters give: :mod:`.labelmaps`); ``exact_seg`` the
    exact one the grades and truth heights were drawn on.
    """

    case_id: str
    image: np.ndarray
    seg: np.ndarray
    affine: np.ndarray
    grades: dict[int, int]
    truth: list[dict]
    meta: dict = field(default_factory=dict)
    exact_seg: np.ndarray | None = None

    @property
    def filename(self) -> str:
        return self.case_id + NIFTI_SUFFIX


# The cohorts a case can belong to, and the stream each draws from: the study cohort
# ("synth-s<seed>-<k>"), the fracture-enriched test cohort ("synth-s<seed>-t<k>") and the
# fracture-enriched validation cohort ("synth-s<seed>-v<k>").
COHORTS = ("study", "test", "val")
_COHORT_PREFIX = {"study": "", "test": "t", "val": "v"}
_COHORT_STREAM = {"study": [], "test": [1], "val": [2]}


def case_id(seed: int, index: int, cohort: str = "study") -> str:
    return f"synth-s{int(seed)}-{_COHORT_PREFIX.get(cohort, '')}{int(index):04d}"


def _case_rng(seed: int, index: int, cohort: str) -> np.random.Generator:
    """Case ``index``'s generator: a function of ``(seed, index)`` and its cohort only."""
    if cohort not in COHORTS:
        raise ParamsError(f"SynthSpine: cohort {cohort!r}; expected one of {', '.join(COHORTS)}")
    key = [int(seed), int(index)] + _COHORT_STREAM[cohort]
    return np.random.default_rng(key)


def _choose_geometry(rng, config: SynthConfig, world_lo, world_hi):
    """Spacing, orientation and rotation of the scan; returns (spacing, ornt_kind, R, ornt)."""
    sx = float(rng.uniform(*config.inplane_spacing))
    sx = round(sx, 3)
    ext = np.asarray(world_hi) - np.asarray(world_lo)
    kind = ORIENTATIONS[int(rng.choice(4, p=np.asarray(config.orientation_probs, dtype=float)))]
    R = np.eye(3)
    if kind == "oblique":
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        ang = np.deg2rad(rng.uniform(1.5, config.oblique_max_deg))
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        R = np.eye(3) + np.sin(ang) * K + (1 - np.cos(ang)) * K @ K
    half = 0.5 * np.abs(R.T) @ ext
    choices = [float(s) for s in config.slice_spacings]
    order = rng.permutation(len(choices))
    sz = None
    for idx in order:  # the first slice spacing (in random order) that fits the voxel budget
        n = np.prod(np.ceil(2 * half / np.array([sx, sx, choices[idx]])) + 1)
        if n <= config.max_voxels:
            sz = choices[idx]
            break
    if sz is None:
        sz = max(choices)
    return (sx, sx, sz), kind, R, half


def _output_orientation(kind: str, rng) -> np.ndarray:
    """nibabel orientation array (axis, flip) applied to the canonical RAS-ordered array."""
    if kind in ("ras", "oblique") and (kind == "ras" or rng.random() < 0.5):
        return np.array([[0, 1], [1, 1], [2, 1]])
    if kind == "lps" or kind == "oblique":
        return np.array([[0, -1], [1, -1], [2, 1]])
    perm = [[2, 1, 0], [1, 0, 2], [2, 0, 1], [0, 2, 1]][int(rng.integers(4))]
    flips = rng.choice([-1, 1], size=3)
    return np.array([[perm[i], flips[i]] for i in range(3)])


def _scan_grid(verts: list[_Vertebra], rng, config: SynthConfig) -> tuple[_Grid, str]:
    """The scan's sampling grid around the run (cut through the middle of the end discs) and its orientation kind."""
    ys = np.array([v.centre[1] for v in verts])
    z_top = verts[0].centre[2] + 0.5 * verts[0].Hmid + 0.5 * max(3.5, verts[0].disc_below * 0.9)
    z_bot = verts[-1].centre[2] - 0.5 * verts[-1].Hmid - 0.5 * verts[-1].disc_below
    world_lo = np.array([-config.fov_lateral_mm, ys.min() - config.fov_posterior_mm, z_bot])
    world_hi = np.array([config.fov_lateral_mm, ys.max() + config.fov_anterior_mm, z_top])
    spacing, kind, R, half = _choose_geometry(rng, config, world_lo, world_hi)
    centre = 0.5 * (world_lo + world_hi)
    shape = tuple(int(x) for x in np.ceil(2 * half / np.array(spacing)) + 1)
    origin = R.T @ centre - 0.5 * (np.array(shape) - 1) * np.array(spacing)
    return _Grid(origin, spacing, shape, R), kind


def _patient_tissue(rng, config: SynthConfig, density: int) -> _Tissue:
    """One patient's bone and canal: trabecular texture and patchiness (osteoporotic bone coarser and patchier),
    cortical HU and thickness (thinner, less dense with lower density), CSF and epidural fat."""
    texture_hu = rng.uniform(*config.trabecular_texture_hu) * (1.15 if density == 2 else 1.0)
    cortex_hu = rng.uniform(*config.cortical_hu) * (1.0, 0.92, 0.85)[density]
    patchiness = rng.uniform(*config.trabecular_patchiness_hu) * (1.0, 1.15, 1.3)[density]
    return _Tissue(texture_hu, cortex_hu, config.cortical_thickness_mm[density], patchiness_hu=patchiness,
                   csf_hu=rng.uniform(*config.csf_hu), epidural_fat_hu=rng.uniform(*config.fat_hu),
                   epidural_fat_mm=config.epidural_fat_mm)


def _draw_spine(hu, seg, grid: _Grid, chain: list[_Vertebra], disc_hu: float, rng, tissue: _Tissue) -> None:
    """The discs between consecutive vertebrae of ``chain`` (virtual end neighbours included), then the vertebrae."""
    for up, lo in zip(chain[:-1], chain[1:]):
        ew = grid.extent_along(up.rot[:, 2])
        er = 0.5 * (grid.extent_along(up.rot[:, 0]) + grid.extent_along(up.rot[:, 1]))
        _draw_disc(hu, grid, up, lo, disc_hu, ew, er)
    for v in chain[1:-1]:
        _draw_vertebra(hu, seg, grid, v, rng, tissue)


def _grain_noise(shape, grain: float, grain_slice: float, rng) -> np.ndarray:
    """Unit-SD noise with the grain of a reconstruction kernel: white noise smoothed by a Gaussian
    ``grain`` voxels wide in-plane (axes 0, 1) and ``grain * grain_slice`` along the slices (axis 2).

    Filtered back-projection leaves noise correlated over neighbouring voxels (a soft
    kernel more so); white noise would be a texture no scanner makes.
    """
    white = rng.standard_normal(shape, dtype=np.float32)
    if grain <= 0:
        return white
    noise, scale = white, 1.0
    for axis, s in enumerate((grain, grain, grain * grain_slice)):
        if s < 0.25:  # a kernel this narrow is one voxel wide: skip the pass (speed)
            continue
        noise = ndimage.gaussian_filter1d(noise, s, axis=axis, mode="wrap", truncate=3.0)
        # the SD of Gaussian-filtered unit white noise: the root sum of squares of each pass's kernel
        r = int(3.0 * s + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        scale *= float(np.sqrt(np.sum((k / k.sum()) ** 2)))
    noise *= np.float32(1.0 / scale)
    return noise


def _scanner(hu, spacing, psf: float, noise: float, grain: float, grain_slice: float, rng) -> np.ndarray:
    """Point-spread blur (in-plane PSF, slice profile), then noise of ``noise`` HU SD with the kernel's grain; int16 HU."""
    sigma = (psf / spacing[0], psf / spacing[1], max(0.35, 0.5 * psf / spacing[2] + 0.2))
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    hu += _grain_noise(hu.shape, grain, grain_slice, rng) * np.float32(noise)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _endplate_points(grid: _Grid, verts: list[_Vertebra], rng) -> list[np.ndarray]:
    """One point on each endplate of each vertebra (voxel indices): where a segmenter's label may bleed into the disc."""
    points = []
    for v in verts:
        for side in (1.0, -1.0):
            local = np.array([rng.uniform(-0.5, 0.5) * v.a, rng.uniform(-0.5, 0.6) * v.b, side * 0.5 * v.Hmid])
            scanner = grid.R.T @ (v.centre + v.rot @ local)
            points.append((scanner - grid.origin) / grid.spacing)
    return points


def _reorient(image, seg, grid: _Grid, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Arrays re-ordered into the header orientation ``ornt``, with the affine that matches; and its axis codes."""
    image = np.ascontiguousarray(nib.orientations.apply_orientation(image, ornt))
    seg = np.ascontiguousarray(nib.orientations.apply_orientation(seg, ornt))
    affine = grid.affine @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    return image, seg, affine, "".join(nib.aff2axcodes(affine))


def _truth_row(cid: str, v: _Vertebra, scan: dict) -> dict:
    """One vertebra's row of ``synth_truth.csv``: grade, morphology, heights before and after, scan settings."""
    ha0, hm0, hp0 = v.heights(after=False)
    ha1, hm1, hp1 = v.heights(after=True)
    return dict(
        case=cid, label=v.label, level=v.name, grade=v.grade, morphology=v.morphology,
        endplate=v.endplate if v.grade > 0 else "none",
        height_anterior_before_mm=round(ha0, 3), height_middle_before_mm=round(hm0, 3),
        height_posterior_before_mm=round(hp0, 3), height_anterior_after_mm=round(ha1, 3),
        height_middle_after_mm=round(hm1, 3), height_posterior_after_mm=round(hp1, 3),
        deformity_pct=round(100.0 * v.deformity, 2), trabecular_hu=round(v.trab_hu, 1),
        sex=scan["sex"], density_class=scan["density_class"], orientation=scan["orientation"],
        axcodes=scan["axcodes"], spacing_mm="x".join(f"{s:g}" for s in scan["spacing_mm"]),
        noise_sigma_hu=round(scan["noise_sigma_hu"], 1), cohort=scan["cohort"], normal_variant=v.variant)


def generate_case(case_index: int, seed: int = 0, config: SynthConfig | None = None,
                  cohort: str = "study") -> SynthCase:
    """Generate SynthSpine case ``case_index``: a function of ``(seed, case_index, config)`` only.

    Returns a :class:`SynthCase` with ``image`` int16 HU and ``seg`` uint8 VerSe labels,
    both in the array order of the chosen header orientation, and ``affine`` voxel -> RAS mm.
    Every random draw comes from one generator, in a fixed order: the patient, the
    curve, the scan geometry, the tissues, the soft-tissue background and surroundings,
    the bone texture of each vertebra, the noise, the segmenter-style label map, the
    header orientation.
    """
    config = config or SynthConfig()
    _check_config(config)
    rng = _case_rng(seed, case_index, cohort)
    pat = sample_patient(rng, config)
    verts: list[_Vertebra] = pat["vertebrae"]
    kyph, lord = rng.uniform(*config.curve_scale), rng.uniform(*config.curve_scale)
    _place(verts, kyph, lord)
    chain = [_virtual_neighbour(verts[0], True, config), *verts, _virtual_neighbour(verts[-1], False, config)]
    grid, kind = _scan_grid(verts, rng, config)
    tissue = _patient_tissue(rng, config, pat["density"])
    disc_hu, noise, psf = (rng.uniform(*config.disc_hu), rng.uniform(*config.noise_sigma),
                           rng.uniform(*config.psf_sigma_mm))
    grain = rng.uniform(*config.noise_grain_vox)

    hu = _background(grid, verts, pat, rng, config)
    seg = np.zeros(grid.shape, dtype=np.uint8)
    _draw_spine(hu, seg, grid, chain, disc_hu, rng, tissue)
    image = _scanner(hu, grid.spacing, psf, noise, grain, config.noise_grain_slice, rng)
    segmenter = segmenter_labels(seg, grid.spacing, _endplate_points(grid, verts, rng), rng, config)
    ornt = _output_orientation(kind, rng)
    image, segmenter, affine, axcodes = _reorient(image, segmenter, grid, ornt)
    exact = _reorient(seg, seg, grid, ornt)[0]

    cid = case_id(seed, case_index, cohort)
    meta = dict(sex=pat["sex"], density_class=DENSITY_CLASSES[pat["density"]], orientation=kind, axcodes=axcodes,
                spacing_mm=[float(s) for s in grid.spacing], noise_sigma_hu=float(noise), shape=list(image.shape),
                kyphosis_scale=float(kyph), lordosis_scale=float(lord), cortical_hu=float(tissue.cortex_hu),
                disc_hu=float(disc_hu), noise_grain_vox=float(grain), cohort=cohort)
    present = set(int(x) for x in np.unique(exact)) - {0}
    labelled = [v for v in verts if v.label in present]
    return SynthCase(cid, image, segmenter, affine, {v.label: int(v.grade) for v in labelled},
                     [_truth_row(cid, v, meta) for v in labelled], meta, exact_seg=exact)
