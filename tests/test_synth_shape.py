"""SynthSpine v2 shape: normal variation that looks like mild deformity, fracture signs by grade, the test cohort.

Drawn patients only (no images), so these run in seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vfnb.data.synth import SynthConfig, generate_case, sample_patient
from vfnb.data.synth.dataset import cohort_config, enriched_case_ids
from vfnb.data.synth.fracture_signs import NO_SIGNS, dense_band, endplate_relief, fracture_signs
from vfnb.data.synth.scan import _case_rng
from vfnb.errors import ParamsError

CONFIG = SynthConfig()


def _vertebrae(config: SynthConfig, patients: int, stream: int | None = None):
    for k in range(patients):
        key = [0, k] if stream is None else [0, k, stream]
        yield from sample_patient(np.random.default_rng(key), config)["vertebrae"]


@pytest.fixture(scope="module")
def normals():
    return [v for v in _vertebrae(CONFIG, 600) if v.grade == 0]


def test_normal_thoracolumbar_wedging_reaches_down_to_the_floor(normals):
    ratio = {name: np.array([v.Ha0 / v.Hp0 for v in normals if v.name == name]) for name in ("T12", "L1", "L3")}
    for name in ("T12", "L1"):  # physiological anterior wedging at the junction
        assert np.percentile(ratio[name], 10) < 0.84, name
        assert ratio[name].min() >= CONFIG.thoracolumbar_ratio_floor - 1e-9
    assert ratio["L3"].min() >= CONFIG.lumbar_ratio_floor - 1e-9
    assert np.median(ratio["L1"]) < np.median(ratio["L3"])


def test_some_normals_look_mildly_deformed_by_their_ratios(normals):
    """Heights alone must misgrade some normals: a ratio under 0.8 reads as a 20 % loss."""
    after = np.array([v.heights(after=True) for v in normals])  # Ha, Hm, Hp
    looks_deformed = np.minimum(after[:, 0], after[:, 1]) / after[:, 2] < 0.80
    assert 0.02 < looks_deformed.mean() < 0.15, looks_deformed.mean()
    variants = {v.variant for v in normals}
    assert variants == {"typical", "deep_concavity", "short_body", "degenerative"}
    # a deep concavity lowers the middle height: biconcave-looking, without a fracture
    deep = [v.heights(after=True) for v in normals if v.variant == "deep_concavity"]
    typical = [v.heights(after=True) for v in normals if v.variant == "typical"]
    assert np.median([m / p for _, m, p in deep]) < np.median([m / p for _, m, p in typical]) - 0.03
    # degenerative normals carry sclerosis look-alikes of fracture signs, on both endplates
    assert all(v.signs.band_hu > 0 and v.signs.both_endplates for v in normals if v.variant == "degenerative")
    assert all(v.signs is NO_SIGNS for v in normals if v.variant in ("typical", "short_body"))


def test_fracture_signs_within_each_grades_range_and_fainter_at_grade_one():
    rng = np.random.default_rng(3)
    by_grade = {g: [fracture_signs(rng, CONFIG, g, "wedge") for _ in range(300)] for g in (1, 2, 3)}
    for g, signs in by_grade.items():
        lo, hi = CONFIG.compaction_hu[g - 1]
        bands = np.array([s.band_hu for s in signs])
        assert np.all((bands == 0) | ((bands >= lo) & (bands <= hi)))
        assert abs(np.mean(bands == 0) - CONFIG.p_no_compaction[g - 1]) < 0.07
        for name in ("irregularity_mm", "step_mm", "buckle"):
            lo, hi = getattr(CONFIG, name)[g - 1]
            values = np.array([getattr(s, name) for s in signs])
            assert np.all((values >= lo) & (values <= hi)), (g, name)
    for name in ("band_hu", "irregularity_mm", "step_mm", "buckle"):
        assert np.mean([getattr(s, name) for s in by_grade[1]]) < np.mean([getattr(s, name) for s in by_grade[3]])
    assert fracture_signs(rng, CONFIG, 2, "biconcave").buckle == 0.0  # buckling: wedge and crush only


def test_signs_follow_the_collapsed_endplate_only():
    signs = dataclasses.replace(fracture_signs(np.random.default_rng(0), CONFIG, 3, "wedge"), band_hu=100.0)
    u, v = np.zeros(5), np.linspace(-10, 10, 5)
    top_shift, bottom_shift = endplate_relief(signs, u, v, 15.0, ct=np.full(5, 2.0), cb=np.zeros(5))
    assert np.any(top_shift != 0) and np.all(bottom_shift == 0)
    W, top, bot = np.array([9.0, -9.0]), np.array([10.0, 10.0]), np.array([-10.0, -10.0])
    band = dense_band(signs, W, top, bot, ct=np.array([2.0, 2.0]), cb=np.array([0.0, 0.0]))
    assert band[0] > 50.0 and band[1] < 1.0  # under the collapsed top endplate, not the intact bottom one


def test_fracture_enriched_test_cohort_is_its_own_deterministic_stream():
    enriched = cohort_config(CONFIG, "test")
    assert enriched.fracture_rate == CONFIG.test_fracture_rate and enriched.grade_mix == CONFIG.test_grade_mix
    grades = np.array([v.grade for v in _vertebrae(enriched, 300, stream=1)])
    study = np.array([v.grade for v in _vertebrae(CONFIG, 300)])
    assert np.mean(grades == 1) > 2 * np.mean(study == 1)
    assert enriched_case_ids(2, 2) == ["synth-s2-t0000", "synth-s2-t0001"]
    a, b = _case_rng(0, 3, "test").random(4), _case_rng(0, 3, "test").random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, _case_rng(0, 3, "study").random(4))
    with pytest.raises(ParamsError, match="cohort"):
        generate_case(0, cohort="train")


def test_fracture_enriched_validation_cohort_draws_like_the_test_cohort_from_a_third_stream():
    enriched = cohort_config(CONFIG, "val")
    assert enriched.fracture_rate == CONFIG.test_fracture_rate and enriched.grade_mix == CONFIG.test_grade_mix
    assert enriched_case_ids(2, 2, "val") == ["synth-s2-v0000", "synth-s2-v0001"]
    draws = {cohort: _case_rng(0, 3, cohort).random(4) for cohort in ("study", "test", "val")}
    assert np.array_equal(draws["val"], _case_rng(0, 3, "val").random(4))
    assert not np.array_equal(draws["val"], draws["test"]) and not np.array_equal(draws["val"], draws["study"])


@pytest.mark.parametrize("change, field", [
    (dict(p_short_body=1.5), "p_short_body"),
    (dict(thoracolumbar_ratio_floor=0.3), "thoracolumbar_ratio_floor"),
    (dict(compaction_hu=((30.0, 80.0), (50.0, 110.0))), "compaction_hu"),
    (dict(step_mm=((0.0, 0.6), (1.0, 0.3), (0.5, 1.5))), "step_mm"),
    (dict(p_no_compaction=(0.3, 0.2, 1.2)), "p_no_compaction"),
    (dict(test_grade_mix=(0.5, 0.5, 0.5)), "test_grade_mix"),
    (dict(thoracolumbar_levels=("T12", "X1")), "thoracolumbar_levels"),
])
def test_v2_shape_settings_are_checked(change, field):
    with pytest.raises(ParamsError, match=field):
        generate_case(0, config=dataclasses.replace(CONFIG, **change))


def test_pages_say_an_enriched_test_set_has_no_population_ppv():
    from vfnb.data.synth.dataset import enriched_test_note
    from vfnb.study.report import dataset_sentence

    assert enriched_test_note(0) == ""
    note = enriched_test_note(24)
    assert "24 CTs" in note and "PPV and NPV" in note and "not population values" in note
    sentence = dataset_sentence({"synthetic": True, "cases": 88, "vertebrae": 900, "test_note": note + " <b>"})
    assert "PPV and NPV on it are not population values" in sentence and "&lt;b&gt;" in sentence
    assert "PPV" not in dataset_sentence({"synthetic": True, "cases": 64, "vertebrae": 600, "test_note": ""})
