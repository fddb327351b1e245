"""SynthSpine: determinism, consistency, tissue HU and an independent morphometry check.

The morphometry here is the test's own: vertebral body heights are measured from
the written label map (voxel columns, world coordinates from the header), never
taken from the generator; only the pre-fracture reference heights come from
``synth_truth.csv`` (the grade is defined against the vertebra's own pre-fracture
height, STUDY §3).
"""

from __future__ import annotations

import json
import csv
import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vfnb.data import synth
from vfnb.data.synth import dataset as synth_dataset, scan as synth_scan
from vfnb.data.synth import SynthConfig, generate_case, generate_dataset
from vfnb.errors import DatasetError, VfnbError
from vfnb.io import load_yaml

# Small scans, many fractures, fine slices: the morphometry check needs slices thin
# enough to measure a 5 %-wide Genant band (a 3 mm slice alone is 15 % of a 20 mm body).
SMALL = SynthConfig(min_vertebrae=6, max_vertebrae=7, inplane_spacing=(0.85, 1.0),
                    slice_spacings=(1.0, 1.25), max_voxels=3_000_000, fracture_rate=0.6,
                    grade_mix=(0.4, 0.3, 0.3), p_subthreshold=0.5)
SEED = 13


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    three = generate_dataset(root / "three", cases=3, seed=SEED, workers=2, config=SMALL, progress=False)
    two = generate_dataset(root / "two", cases=2, seed=SEED, workers=1, config=SMALL, progress=False)
    return three, two


def _truth(root: Path) -> list[dict]:
    with open(root / synth.TRUTH_FILE, newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------- determinism
def test_case_k_is_identical_whatever_the_number_of_cases(datasets):
    three, two = datasets
    for sub in ("img", "seg"):
        names2 = sorted(p.name for p in (two / sub).iterdir())
        names3 = sorted(p.name for p in (three / sub).iterdir())
        assert len(names2) == 2 and len(names3) == 3 and set(names2) < set(names3)
        for name in names2:  # byte-identical gzip files: deterministic header, no mtime
            assert _digest(two / sub / name) == _digest(three / sub / name), f"{sub}/{name} differs"
    rows2 = [r for r in _truth(two)]
    rows3 = [r for r in _truth(three) if r["case"] in {r2["case"] for r2 in rows2}]
    assert rows2 == rows3


def test_same_seed_same_case_other_seed_other_case():
    cfg = dataclasses.replace(SMALL, min_vertebrae=6, max_vertebrae=6, max_voxels=800_000,
                              slice_spacings=(2.0, 2.5, 3.0))
    a, b = generate_case(1, seed=3, config=cfg), generate_case(1, seed=3, config=cfg)
    c = generate_case(1, seed=4, config=cfg)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.seg, b.seg)
    assert np.array_equal(a.affine, b.affine) and a.truth == b.truth
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_refuses_existing_folder_and_bad_parameters(tmp_path, datasets):
    three, _ = datasets
    with pytest.raises(VfnbError, match="already exists"):
        generate_dataset(three, cases=1, seed=SEED, config=SMALL, progress=False)
    with pytest.raises(VfnbError, match="cases"):
        generate_dataset(tmp_path / "x", cases=0, config=SMALL, progress=False)
    with pytest.raises(VfnbError, match="grade_mix"):
        generate_case(0, config=dataclasses.replace(SMALL, grade_mix=(0.5, 0.5, 0.5)))


# ---------------------------------------------------------------- consistency
def test_annotation_matches_label_maps_and_truth(datasets):
    three, _ = datasets
    annotation = load_yaml(three / "annotation.yaml")
    truth = _truth(three)
    meta = load_yaml(three / synth.META_FILE)  # JSON is YAML
    assert meta["version"] == synth.GENERATOR_VERSION and meta["synthetic"] is True
    assert set(annotation) == {p.name for p in (three / "img").iterdir()}
    for name, grades in annotation.items():
        seg = nib.load(str(three / "seg" / name))
        img = nib.load(str(three / "img" / name))
        assert img.get_data_dtype() == np.int16 and seg.shape == img.shape
        assert np.allclose(seg.affine, img.affine)
        labels = set(int(x) for x in np.unique(np.asarray(seg.dataobj))) - {0}
        assert labels == set(grades), name
        # the exact map: same grid; the segmenter-style map keeps every exact voxel and only adds around it
        exact_img = nib.load(str(three / synth.EXACT_SEG_DIR / name))
        assert exact_img.shape == seg.shape and np.allclose(exact_img.affine, seg.affine)
        exact, wide = np.asarray(exact_img.dataobj), np.asarray(seg.dataobj)
        assert np.array_equal(wide[exact > 0], exact[exact > 0])
        assert set(int(x) for x in np.unique(exact)) - {0} == labels
        assert 1.05 < np.count_nonzero(wide) / np.count_nonzero(exact) < 1.8
        assert len(labels) >= 6
        ordered = sorted(labels, key=lambda lab: 19.5 if lab == 28 else lab)
        assert all(lab in set(range(8, 26)) | {28} for lab in ordered)
        case = name[: -len(".nii.gz")]
        rows = {int(r["label"]): r for r in truth if r["case"] == case}
        assert {lab: int(r["grade"]) for lab, r in rows.items()} == grades
        for r in rows.values():
            d = float(r["deformity_pct"])
            g = int(r["grade"])
            band = [(0, 20), (20, 25), (25, 40), (40, 60)][g]
            assert band[0] <= d <= band[1] + 1e-6, r
            assert (r["morphology"] == "none") == (g == 0)
    # several header orientations across cases
    assert len({r["axcodes"] for r in truth}) >= 2


def test_orientations_and_scanner_ranges():
    """Over many cases: RAS, LPS, permuted and oblique headers; spacing and noise in range."""
    cfg = SynthConfig()
    rng_kinds, spacings = set(), []
    for k in range(40):
        rng = np.random.default_rng([0, k])
        synth.sample_patient(rng, cfg)
        rng.uniform(*cfg.curve_scale), rng.uniform(*cfg.curve_scale)
        sp, kind, R, _ = synth_scan._choose_geometry(rng, cfg, np.zeros(3), np.array([110, 160, 280]))
        rng_kinds.add(kind)
        spacings.append(sp)
        if kind == "oblique":
            assert 0 < np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))) <= cfg.oblique_max_deg + 1e-6
    assert rng_kinds == set(synth.ORIENTATIONS)
    sp = np.array(spacings)
    assert np.all((sp[:, 0] >= 0.6) & (sp[:, 0] <= 1.0) & (sp[:, 2] >= 1.0) & (sp[:, 2] <= 3.0))


def test_default_prevalence_close_to_verse():
    cfg = SynthConfig()
    grades, levels = [], []
    for k in range(1500):
        pat = synth.sample_patient(np.random.default_rng([0, k]), cfg)
        grades += [v.grade for v in pat["vertebrae"]]
        levels += [v.name for v in pat["vertebrae"]]
    grades, levels = np.array(grades), np.array(levels)
    share = np.bincount(grades, minlength=4) / len(grades)
    assert np.allclose(share, [0.80, 0.10, 0.065, 0.035], atol=0.025), share
    rate = {lv: np.mean(grades[levels == lv] > 0) for lv in ("T5", "T8", "T10", "L1", "L4")}
    assert rate["L1"] > rate["T10"] and rate["T8"] > rate["T5"] and rate["L1"] > rate["L4"]


# ---------------------------------------------------------------- independent morphometry
def _canonical(root: Path, name: str, labels: str = "seg"):
    seg = nib.as_closest_canonical(nib.load(str(root / labels / name)))
    img = nib.as_closest_canonical(nib.load(str(root / "img" / name)))
    return np.asarray(seg.dataobj), np.asarray(img.dataobj).astype(np.float32), seg.affine


def _centroid(seg, affine, label):
    idx = np.argwhere(seg == label).astype(float)
    return idx.mean(0) @ affine[:3, :3].T + affine[:3, 3]


def measure_body(seg, affine, label, up_label=None, down_label=None):
    """Anterior / middle / posterior body heights (mm) of ``label``, measured in its own frame.

    The vertebra axis ``e_w`` is the chord between the neighbours' centroids; anterior
    ``e_v`` is world +A made orthogonal to it. The label map is sampled (nearest
    neighbour) on a 0.5 x 0.5 x 0.25 mm grid in that frame. The body is the most
    anterior contiguous stretch of the label along ``e_v`` in a mid-sagittal strip
    (the spinal canal separates it from the arch). Each height is the mean length of
    label along ``e_w`` over the columns of a 6 x 4 mm slab centred 15 %, 50 % and
    85 % of the way from the posterior to the anterior wall.
    """
    from scipy import ndimage

    c = _centroid(seg, affine, label)
    ends = [_centroid(seg, affine, lab) if lab is not None else c for lab in (up_label, down_label)]
    e_w = ends[0] - ends[1]
    e_w /= np.linalg.norm(e_w)
    e_v = np.array([0.0, 1.0, 0.0]) - e_w[1] * e_w
    e_v /= np.linalg.norm(e_v)
    e_u = np.cross(e_v, e_w)
    inv = np.linalg.inv(affine)

    def sample(us, vs, ws):
        U, V, W = np.meshgrid(us, vs, ws, indexing="ij")
        world = c + U[..., None] * e_u + V[..., None] * e_v + W[..., None] * e_w
        vox = world @ inv[:3, :3].T + inv[:3, 3]
        got = ndimage.map_coordinates(seg, np.moveaxis(vox, -1, 0), order=0, mode="constant", cval=0)
        return got == label  # [u, v, w]

    ws = np.arange(-40.0, 40.0, 0.25)
    vs = np.arange(-70.0, 70.0, 0.5)
    strip = sample(np.arange(-3.0, 3.01, 1.0), vs, np.arange(-40.0, 40.0, 1.0)).any(axis=(0, 2))
    hi = int(np.nonzero(strip)[0].max())
    lo = hi
    while lo > 0 and strip[max(0, lo - 6): lo].any():  # a gap > 3 mm is the canal
        lo -= 1
    v_post, v_ant = vs[lo] - 0.25, vs[hi] + 0.25
    heights = []
    for f in (0.85, 0.5, 0.15):  # anterior, middle, posterior
        vf = v_post + f * (v_ant - v_post)
        cols = sample(np.arange(-3.0, 3.01, 0.5), np.arange(vf - 2.0, vf + 2.01, 0.5), ws)
        heights.append(float(cols.sum(axis=2).mean() * 0.25))
    centre = c + e_v * 0.5 * (v_post + v_ant)
    return np.array(heights), centre, e_w


def _genant(deformity):
    return int(np.searchsorted([0.20, 0.25, 0.40], deformity, side="right"))


def test_independent_morphometry_matches_annotated_grades(datasets):
    """On the exact label maps (seg_exact/, what the grades were drawn on) the measured deformity gives the grade;
    the segmenter-style maps (seg/) measure every height a little taller, by their margin (about 1 mm per endplate)."""
    three, _ = datasets
    truth = _truth(three)
    annotation = load_yaml(three / "annotation.yaml")
    agree, total, per_grade, severe = 0, 0, {}, []
    errors, generous = [], []
    for name, grades in annotation.items():
        seg, _, affine = _canonical(three, name, synth.EXACT_SEG_DIR)
        wide, _, wide_affine = _canonical(three, name, "seg")
        order = sorted(grades, key=lambda lab: 19.5 if lab == 28 else lab)
        case = name[: -len(".nii.gz")]
        rows = {int(r["label"]): r for r in truth if r["case"] == case}
        measured = {}
        for i, lab in enumerate(order):
            up = order[i - 1] if i > 0 else None
            down = order[i + 1] if i + 1 < len(order) else None
            measured[lab], _, _ = measure_body(seg, affine, lab, up, down)
            generous.append(measure_body(wide, wide_affine, lab, up, down)[0] - measured[lab])
        for i, lab in enumerate(order):
            r = rows[lab]
            before = np.array([float(r[f"height_{p}_before_mm"]) for p in ("anterior", "middle", "posterior")])
            deformity = float(np.max(1.0 - measured[lab] / before))
            errors.append(deformity - float(r["deformity_pct"]) / 100)
            g = grades[lab]
            ok = _genant(deformity) == g
            agree += ok
            total += 1
            per_grade.setdefault(g, []).append(ok)
            if g == 3:
                # the nearest grade-0 vertebrae of the same scan (adjacent ones when there are)
                normal = [j for j, n in enumerate(order) if grades[n] == 0]
                if normal:
                    gap = min(abs(j - i) for j in normal)
                    refs = [measured[order[j]].mean() for j in normal if abs(j - i) == gap]
                    severe.append(measured[lab].min() / np.mean(refs))
    rate = agree / total
    summary = {g: f"{sum(v)}/{len(v)}" for g, v in sorted(per_grade.items())}
    print(f"\nmorphometry: grade agreement {agree}/{total} = {rate:.1%}; per grade {summary}; "
          f"deformity error mean {np.mean(errors):+.3f} sd {np.std(errors):.3f}; "
          f"grade-3 min height / normal neighbours {np.round(severe, 2).tolist()}")
    assert total >= 18 and len(per_grade) >= 3
    assert rate >= 0.8, (rate, summary)
    assert np.median(np.abs(errors)) < 0.03
    assert severe and max(severe) < 0.75  # grade 3 clearly shorter than its normal neighbours
    extra = np.concatenate(generous)
    print(f"segmenter-style map: heights taller by {np.median(extra):.2f} mm (median; 10-90 %: "
          f"{np.percentile(extra, 10):.2f}-{np.percentile(extra, 90):.2f} mm)")
    assert np.all(extra >= -0.3) and 0.8 <= np.median(extra) <= 4.0


# ---------------------------------------------------------------- tissue intensities
def test_tissue_hu_in_expected_ranges(datasets):
    three, _ = datasets
    truth = _truth(three)
    annotation = load_yaml(three / "annotation.yaml")
    # SynthSpine 2.0: classes set for a screening cohort (L1 ~155 / 128 / 105 HU, wide and overlapping) and
    # patchy bone, so a 4 mm ball strays further from the vertebra's nominal HU than the fine texture alone
    # would let it; each class keeps its own plausible span
    ranges = {"normal": (90, 250), "osteopenic": (65, 215), "osteoporotic": (45, 190)}
    from scipy import ndimage

    for name, grades in annotation.items():
        seg, img, affine = _canonical(three, name, synth.EXACT_SEG_DIR)  # the drawn anatomy
        case = name[: -len(".nii.gz")]
        rows = {int(r["label"]): r for r in truth if r["case"] == case}
        order = sorted(grades, key=lambda lab: 19.5 if lab == 28 else lab)
        zoom = np.sqrt((affine[:3, :3] ** 2).sum(0))
        centres = {}
        for i, lab in enumerate(order):
            _, centre, _ = measure_body(seg, affine, lab, order[i - 1] if i else None,
                                        order[i + 1] if i + 1 < len(order) else None)
            centres[lab] = centre
            # trabecular: a 4 mm ball at the body centre (away from shell and endplates)
            vox = np.linalg.solve(affine[:3, :3], centre - affine[:3, 3])
            grid = np.indices(seg.shape, sparse=True)
            ball = sum(((g - x) * z) ** 2 for g, x, z in zip(grid, vox, zoom)) < 16.0
            trab = np.median(img[ball & (seg == lab)])
            row = rows[lab]
            if int(row["grade"]) == 0:
                lo, hi = ranges[row["density_class"]]
                assert lo <= trab <= hi, (name, lab, trab, row["density_class"])
                assert abs(trab - float(row["trabecular_hu"])) < 50
            else:  # a fracture adds a denser band of compacted bone
                assert -30 < trab - float(row["trabecular_hu"]) < 160, (name, lab, trab)
            # cortical shell: the brightest voxels of the vertebra
            assert np.percentile(img[seg == lab], 99.5) > 400
        # disc: the unlabelled stretch of the line joining adjacent body centres
        inv = np.linalg.inv(affine)
        for upper, lower in zip(order[:-1], order[1:]):
            t = np.linspace(0.0, 1.0, 400)[:, None]
            line = (centres[upper] * (1 - t) + centres[lower] * t) @ inv[:3, :3].T + inv[:3, 3]
            labels = ndimage.map_coordinates(seg, line.T, order=0)
            hu = ndimage.map_coordinates(ndimage.uniform_filter(img, (3, 3, 1)), line.T, order=1)
            gap = np.nonzero(labels == 0)[0]
            assert len(gap) >= 20, (name, upper, lower)  # >= ~5 % of the centre distance
            core = gap[len(gap) // 4: len(gap) - len(gap) // 4]  # away from the endplates
            assert 40 <= np.median(hu[core]) <= 130, (name, upper, lower, np.median(hu[core]))
        # soft tissues: histogram modes of a denoised image (fat, muscle) and air / lung
        smooth = ndimage.median_filter(img[::2, ::2, ::4], size=3)
        values = smooth[seg[::2, ::2, ::4] == 0]
        hist, edges = np.histogram(values, bins=np.arange(-200, 201, 10))
        centres_hu = 0.5 * (edges[1:] + edges[:-1])
        fat_peak = centres_hu[np.argmax(np.where(centres_hu < -30, hist, 0))]
        soft_peak = centres_hu[np.argmax(np.where(centres_hu > 0, hist, 0))]
        assert -140 <= fat_peak <= -60 and 10 <= soft_peak <= 80, (fat_peak, soft_peak)
        assert np.mean(values < -700) > 0.01  # air behind the back and / or lungs
        dark = values[values < -700]
        assert np.median(dark) < -780


# ---------------------------------------------------------------- the rest of the pipeline
def test_dataset_passes_check_and_preprocess(datasets, tmp_path):
    three, _ = datasets
    try:
        from vfnb.data.check import check_dataset
        from vfnb.data.preprocess import preprocess_dataset
    except ImportError as exc:
        pytest.skip(f"check / preprocess not importable yet: {exc}")
    report = check_dataset(three)
    assert report.kind == "original" and not report.errors, report.summary_text()
    out = preprocess_dataset(three, tmp_path / "processed", size=32, workers=1)
    origin = json.loads((Path(out) / "preprocess.json").read_text())["dataset"]
    assert origin["synthetic"] is True and origin["generator"].startswith("vfnb.data.synth")  # travels to checkpoints
    report = check_dataset(out)
    assert not report.errors, report.summary_text()
    n_patches = len(list((Path(out) / "img").glob("*.nii.gz")))
    assert n_patches == sum(len(g) for g in load_yaml(three / "annotation.yaml").values())


def test_ensure_default_dataset_reuses_and_refuses(tmp_path, monkeypatch):
    calls = []

    def fake_generate(out, **kw):
        calls.append(("generate", kw["cases"]))
        Path(out).mkdir(parents=True)
        (Path(out) / synth.META_FILE).write_text(
            __import__("json").dumps(synth_dataset._meta(kw["cases"], kw["seed"], kw["config"], kw["test_cases"],
                                                         kw["val_cases"])))
        return Path(out)

    def fake_preprocess(original, processed, size, workers):
        calls.append(("preprocess", size))
        Path(processed).mkdir()

    def fake_split(processed, tag, folds, val_fraction, seed, test_only, val_only):
        calls.append(("split", tag, folds, tuple(test_only), tuple(val_only)))

    monkeypatch.setattr(synth_dataset, "generate_dataset", fake_generate)
    monkeypatch.setattr(synth_dataset, "preprocess_dataset", fake_preprocess)
    monkeypatch.setattr(synth_dataset, "split_dataset", fake_split)

    got = synth.ensure_default_dataset(tmp_path, cases=4, seed=1, size=32, workers=1, folds=2)
    assert got["original"] == tmp_path / "synthspine-s1-n4" / "original"
    assert got["processed"] == tmp_path / "synthspine-s1-n4" / "processed-32"
    assert [c[0] for c in calls] == ["generate", "preprocess", "split"]
    again = synth.ensure_default_dataset(tmp_path, cases=4, seed=1, size=32, workers=1, folds=2)
    assert again == got and len(calls) == 3  # reused, nothing regenerated
    with pytest.raises(DatasetError, match="processed-32"):
        synth.ensure_default_dataset(tmp_path, cases=4, seed=1, size=32, workers=1, folds=3)
    with pytest.raises(DatasetError, match="does not match"):
        synth.ensure_default_dataset(tmp_path, cases=4, seed=1, size=32,
                                     config=dataclasses.replace(SynthConfig(), fracture_rate=0.5))
    assert len(calls) == 3 and calls[2][3] == ()
    # a fracture-enriched test cohort: its own folder, its cases handed to the split as test-only
    enriched = synth.ensure_default_dataset(tmp_path, cases=4, seed=1, size=32, workers=1, folds=2, test_cases=2)
    assert enriched["original"] == tmp_path / "synthspine-s1-n4-t2" / "original"
    assert calls[-1] == ("split", "synth", 2, ("synth-s1-t0000", "synth-s1-t0001"), ())
    # and a fracture-enriched validation cohort: a folder of its own again, its cases validation-only
    with_val = synth.ensure_default_dataset(tmp_path, cases=4, seed=1, size=32, workers=1, folds=2, test_cases=2,
                                            val_cases=1)
    assert with_val["original"] == tmp_path / "synthspine-s1-n4-t2-v1" / "original"
    assert calls[-1] == ("split", "synth", 2, ("synth-s1-t0000", "synth-s1-t0001"), ("synth-s1-v0000",))
    # a dataset made without the validation cohort keeps the record it was made with
    assert "val_cases" not in synth_dataset._meta(4, 1, SynthConfig(), 2)


def test_a_killed_runs_preprocessing_is_cleared_and_never_taken_for_the_processed_folder(tmp_path, monkeypatch):
    """A run killed while it pre-processed leaves its staging folder (patches, no marker); the next run removes
    it, says so, and makes the processed folder whole."""
    def fake_preprocess(original, processed, size, workers):
        Path(processed).mkdir()
        (Path(processed) / "patches.csv").write_text("name\n")

    monkeypatch.setattr(synth_dataset, "preprocess_dataset", fake_preprocess)
    monkeypatch.setattr(synth_dataset, "split_dataset", lambda *a, **kw: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    original, processed = tmp_path / "original", tmp_path / "processed-32"
    original.mkdir()
    stale = tmp_path / f".tmp-processed-32-{dead.pid}-123"
    (stale / "processed-32" / "img").mkdir(parents=True)  # half-written patches of the killed run
    recipe = {"size": 32, "tag": "synth", "source": {"seed": 0}, "folds": 2, "val_fraction": 0.2, "split_seed": 0}
    synth_dataset.ensure_processed(original, processed, recipe, workers=1)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["original", "processed-32"]
    assert json.loads((processed / synth_dataset.PROCESSED_MARKER).read_text()) == recipe


def test_a_validation_cohort_lands_in_every_validation_list_and_the_pages_say_so(tmp_path):
    """Real generation: the enriched validation cases are in each fold's validation list only, and named."""
    from vfnb.study import StudyData, prepare_dataset
    from vfnb.study.report import dataset_sentence

    data = prepare_dataset("synthspine", str(tmp_path), "synth-f0", synth_cases=6, patch_size=32, synth_folds=2,
                           val_fraction=0.25, synth_test_cases=1, synth_val_cases=2)
    assert data.processed == tmp_path / "synthspine-s0-n6-t1-v2" / "processed-32"
    cohort = {"synth-s0-v0000", "synth-s0-v0001"}
    for tag in ("synth-f0", "synth-f1"):
        fold = StudyData(data.processed, tag, synthetic=True, original=data.original)
        lists = {s: {r["image_id"] for r in fold.records(s)} for s in ("train", "val", "test")}
        assert cohort <= lists["val"] and not cohort & (lists["train"] | lists["test"]), tag
        assert "synth-s0-t0000" in lists["test"] and lists["val"] - cohort  # the study's own share stays
    described = data.describe()
    assert described["enriched_val_cases"] == 2 and described["enriched_test_cases"] == 1
    sentence = dataset_sentence(described)
    assert "validation list is fracture-enriched too: it holds 2 further CTs" in sentence
    assert sentence.index("The test set is fracture-enriched") < sentence.index("validation list is fracture-enriched")
