"""Benchmarks harness: the reference augmentation is right, and the entries run.

No timing is asserted: the smoke runs only check that ``python -m benchmarks
--quick`` and ``benchmarks/gpu.py --tiny`` finish and write the figures they
promise, with the machine and versions recorded.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import harness
from benchmarks.patches import synthetic_patch
from benchmarks.reference_augment import reference_augment
from vfnb.levels import MAX_LABEL

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ reference augmentation
@pytest.mark.parametrize("size", [16, 24])
def test_reference_augment_shape_mask_and_ranges(size):
    label = 20
    x = synthetic_patch(size, label=label, seed=1)
    before = x.copy()
    rng = np.random.default_rng(0)
    code = np.float32(label / MAX_LABEL)
    changed_mask = 0
    for _ in range(30):
        y = reference_augment(x, size, rng)
        assert y.shape == (3, size, size, size) and y.dtype == np.float32
        # nearest-neighbour resampling and zero fill keep the mask code two-valued
        assert set(np.unique(y[2]).tolist()) <= {0.0, float(code)}
        assert 0.0 <= y[:2].min() and y[:2].max() <= 1.0
        changed_mask += int(not np.array_equal(y[2], reference_augment(x, size, np.random.default_rng(99))[2]))
    assert np.array_equal(x, before), "the input patch must not be modified"
    assert changed_mask > 0, "different draws should give different geometry"


def test_reference_augment_seeded_and_mask_not_noised():
    x = synthetic_patch(24, label=13, seed=2)
    a = reference_augment(x, 24, np.random.default_rng(5))
    b = reference_augment(x, 24, np.random.default_rng(5))
    assert np.array_equal(a, b)
    # noise is drawn on the window channels only: the mask channel of many draws
    # never holds a value other than 0 and the code, while the windows take many values
    assert len(np.unique(a[0])) > 50
    with pytest.raises(ValueError):
        reference_augment(x[:2], 24, np.random.default_rng(0))


# ------------------------------------------------------------------ harness pieces
def test_figure_and_merge(tmp_path):
    fig = harness.figure([3.0, 1.0, 2.0], "s", "three runs")
    assert fig["value"] == 2.0 and fig["min"] == 1.0 and fig["max"] == 3.0 and fig["n"] == 3
    ratio = harness.ratio_figure([4.0, 9.0], [2.0, 3.0])
    assert ratio["samples"] == [2.0, 3.0]

    out = tmp_path / "r.json"
    meta = {"machine_name": "m", "sections": {"a": {"date": "d1"}, "b": {"date": "d1"}}}
    harness.write_results(out, meta, {"a.x": fig, "b.y": fig}, {}, sections_run=["a", "b"])
    harness.write_results(out, {"machine_name": "m", "sections": {"a": {"date": "d2"}}},
                          {"a.z": fig}, {"c": "why"}, sections_run=["a", "c"], merge=True)
    data = json.loads(out.read_text())
    assert set(data["figures"]) == {"a.z", "b.y"}  # a replaced, b kept
    assert data["errors"] == {"c": "why"}
    assert data["meta"]["sections"]["b"]["date"] == "d1" and data["meta"]["sections"]["a"]["date"] == "d2"
    text = harness.markdown_report(data)
    assert "`a.z`" in text and "`b.y`" in text and "not measured" in text


def test_update_doc_renders_every_results_file(tmp_path):
    results = tmp_path / "results"
    fig = harness.figure([1.0, 2.0, 4.0], "views/s", "a note")
    harness.write_results(results / "box-a.json", {"machine_name": "box-a", "machine": {"cpu_model": "CPU A"}},
                          {"augmentation.speedup_128": fig})
    harness.write_results(results / "gpu-card.json", {"machine_name": "card"}, {"gpu.bf16_samples_per_s": fig})
    doc = tmp_path / "DOC.md"
    doc.write_text(f"# title\n{harness.DOC_BEGIN}\nold numbers\n{harness.DOC_END}\ntail\n")
    harness.update_doc(doc, results)
    text = doc.read_text()
    assert "old numbers" not in text and text.startswith("# title") and text.endswith("tail\n")
    assert text.index("`augmentation.speedup_128`") < text.index("`gpu.bf16_samples_per_s`")  # CPU first
    assert "| 2.00 | views/s | 1.00 - 4.00 (n=3) |" in text
    doc.write_text("no markers")
    with pytest.raises(ValueError):
        harness.update_doc(doc, results)


def test_pipeline_dataset_view_keeps_train_and_cuts_val(tmp_path):
    from benchmarks.pipeline import BENCH_TAG, bench_view, tiny_dataset
    from vfnb.data.processed import ProcessedDataset, read_file_list

    source = tiny_dataset(tmp_path / "source", per_grade=3, size=8)
    view = bench_view(source, BENCH_TAG, tmp_path / "view", val_per_grade=1)
    ds = ProcessedDataset(view)
    assert [r["name"] for r in ds.records("train", BENCH_TAG)] == read_file_list(source, "train", BENCH_TAG)
    val = ds.records("val", BENCH_TAG)
    assert sorted(r["grade"] for r in val) == [0, 1, 2, 3] and all(Path(r["image"]).is_file() for r in val)
    assert not (view / f"test_file_list.{BENCH_TAG}.yaml").exists()  # the view never lists test patches


def test_study_wall_time_from_provenance(tmp_path):
    from benchmarks.study import from_provenance

    (tmp_path / "provenance.json").write_text(json.dumps({
        "started_utc": "2026-01-01T10:00:00+00:00", "finished_utc": "2026-01-01T10:12:30+00:00",
        "notebook_seconds": {"01_supcon_pretraining": 300.0}}))
    figs = from_provenance(tmp_path)
    assert figs["study.wall_minutes"]["value"] == pytest.approx(12.5)
    assert figs["study.notebook_seconds_01_supcon_pretraining"]["value"] == 300.0


def test_fitting_a_scan_to_the_benchmark_shape_keeps_every_voxel_at_its_world_point():
    from benchmarks.scans import fit_to_shape

    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1500, size=(9, 4, 7)).astype(np.int16)
    seg = (image > 800).astype(np.uint8)
    affine = np.array([[-0.8, 0, 0, 30.0], [0, -0.8, 0, 20.0], [0, 0, 1.25, -40.0], [0, 0, 0, 1]])
    out, out_seg, out_affine = fit_to_shape(image, seg, affine, (5, 8, 7))  # crop axis 0, pad axis 1
    assert out.shape == out_seg.shape == (5, 8, 7)
    # voxel (i, j, k) of the input lies where the output's affine puts its counterpart
    for i, j, k in [(2, 0, 0), (4, 3, 6), (6, 1, 3)]:
        oi, oj = i - 2, j + 2
        np.testing.assert_allclose(out_affine @ [oi, oj, k, 1], affine @ [i, j, k, 1])
        assert out[oi, oj, k] == image[i, j, k] and out_seg[oi, oj, k] == seg[i, j, k]
    assert (out_seg[:, :2] == 0).all() and (out[:, 0] == out[:, 2]).all()  # label map padded with 0, CT with its edge


def test_dicom_series_holds_the_nifti_voxels_and_geometry(tmp_path):
    import pydicom
    import SimpleITK as sitk

    from benchmarks.dicom_series import write_dicom_series
    from vfnb.io import save_nifti

    image = np.random.default_rng(1).integers(-1000, 1500, size=(6, 5, 4)).astype(np.int16)
    affine = np.array([[-0.7, 0, 0, 12.5], [0, -0.9, 0, -3.0], [0, 0, 1.5, 80.0], [0, 0, 0, 1]])
    ct = save_nifti(tmp_path / "ct.nii.gz", image, affine)
    assert write_dicom_series(ct, tmp_path / "dicom") == 4
    first = pydicom.dcmread(tmp_path / "dicom" / "slice_0001.dcm")
    assert (first.Rows, first.Columns) == (5, 6) and first.Modality == "CT"
    assert [float(v) for v in first.ImagePositionPatient] == [-12.5, 3.0, 80.0]  # LPS: x and y change sign
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
    read = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read).transpose(2, 1, 0), image)
    np.testing.assert_allclose(read.GetSpacing(), [0.7, 0.9, 1.5], atol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), [-12.5, 3.0, 80.0], atol=1e-6)


# ------------------------------------------------------------------ heights against TotalSegmentator
def test_verse_labels_renumbered_to_totalsegmentator_total_task():
    from benchmarks.heights_peer import TOTALSEG_VERTEBRAE, to_totalseg

    assert TOTALSEG_VERTEBRAE[1] == (50, "vertebrae_C1") and TOTALSEG_VERTEBRAE[7] == (44, "vertebrae_C7")
    assert TOTALSEG_VERTEBRAE[8] == (43, "vertebrae_T1") and TOTALSEG_VERTEBRAE[19] == (32, "vertebrae_T12")
    assert TOTALSEG_VERTEBRAE[20] == (31, "vertebrae_L1") and TOTALSEG_VERTEBRAE[24] == (27, "vertebrae_L5")
    verse = np.zeros((4, 3, 5), dtype=np.uint8)
    verse[0, :, :2], verse[1, 1, :], verse[3, 2, 4] = 19, 20, 24
    ts, names = to_totalseg(verse)
    assert names == {32: "vertebrae_T12", 31: "vertebrae_L1", 27: "vertebrae_L5"}
    assert (ts[verse == 19] == 32).all() and (ts[verse == 20] == 31).all() and (ts[verse == 24] == 27).all()
    assert (ts[verse == 0] == 0).all() and ts.shape == verse.shape
    for extra in (25, 28, 26):  # L6, T13, sacrum: no vertebra of that name in the 'total' task
        with pytest.raises(ValueError, match=f"VerSe label {extra}"):
            to_totalseg(np.full((2, 2, 2), extra, dtype=np.uint8))


def test_totalsegmentator_numbering_is_totalsegmentators_own():
    map_to_binary = pytest.importorskip("totalsegmentator.map_to_binary",
                                        reason="totalsegmentator is not installed (a benchmark-only peer)")
    from benchmarks.heights_peer import TOTALSEG_VERTEBRAE

    theirs = {label: name for label, name in map_to_binary.class_map["total"].items()
              if name.startswith("vertebrae_") and name != "vertebrae_S1"}
    assert theirs == dict(TOTALSEG_VERTEBRAE.values())


def test_heights_peer_figures_from_rows():
    from benchmarks.heights_peer import difference_figures, flag_figures

    def row(voxel, label, grade, vfnb, peer, vfnb_grade, flag):
        out = {"run": "r", "voxel": voxel, "label": label, "grade": grade, "vfnb_grade": vfnb_grade,
               "peer_fracture": flag}
        for name, a, b in zip(("anterior", "middle", "posterior"), vfnb, peer):
            out.update({f"vfnb_{name}": a, f"peer_{name}": b, f"truth_{name}": a})
        return out

    rows = [row("1mm", 20, 0, (25, 24, 26), (24, 24, 26), 0, False),
            row("3mm", 20, 0, (25, 24, 26), (27.5, 24, 26), 1, True),
            row("1mm", 21, 2, (18, 24, 26), (18.5, 24, 26), 2, False)]
    figs = difference_figures(rows)
    l1 = figs["heights_peer.diff_L1_anterior_mm"]
    assert (l1["value"], l1["max"], l1["n"], l1["signed_median"]) == (1.75, 2.5, 2, -0.75)
    assert figs["heights_peer.diff_1mm_anterior_mm"]["samples"] == [1.0, 0.5]
    flags = flag_figures(rows)
    normal_peer = flags["heights_peer.normal_flagged_peer"]
    assert (normal_peer["value"], normal_peer["of"]) == (1, 2)
    assert flags["heights_peer.normal_flagged_vfnb"]["value"] == 1
    assert flags["heights_peer.fractured_flagged_peer"]["value"] == 0
    assert flags["heights_peer.fractured_flagged_vfnb"]["value"] == 1


def test_heights_peer_phantom_and_both_measurements():
    pytest.importorskip("skimage", reason="scikit-image is not installed (TotalSegmentator's height code needs it)")
    from benchmarks import heights_peer as hp

    missing = hp.peer_available()
    if missing:
        pytest.skip(missing)
    from totalsegmentator.spine_report import measure_verte_height as peer_module

    run = hp.SpineRun("t", seed=0, levels=(20, 21, 22))
    ph = hp.draw_phantom(run, "1mm")
    assert ph.seg.shape == ph.body.shape and (ph.seg[ph.body] > 0).all()
    for label in (20, 21, 22):  # the body is part of the vertebra, the posterior elements are not body
        assert 0 < (ph.body & (ph.seg == label)).sum() < 0.8 * (ph.seg == label).sum()
    ours = hp.measure_vfnb(ph)
    theirs = hp.measure_peer(ph, step=hp.FINE_STEP)
    assert peer_module.STEP_SIZE == 0.5  # the fine step is undone after the call
    assert set(ours) == set(theirs) == {20, 21, 22}
    for label, truth in ph.truth.items():
        assert 20 < truth["middle"] < 32
        for name in hp.HEIGHTS:
            assert abs(ours[label][name] - truth[name]) < 1.5, (label, name)
            assert abs(theirs[label][name] - truth[name]) < 1.5, (label, name)
        assert ours[label]["grade"] == 0 and theirs[label]["fracture"] is False


# ------------------------------------------------------------------ smoke runs
@pytest.mark.slow
def test_quick_benchmark_writes_expected_keys(tmp_path, subprocess_env):
    out = tmp_path / "quick.json"
    # the sections whose figures this test reads; predict, predict_dicom and heights_peer have their own tests
    sections = ["augmentation", "pipeline", "training", "inference", "data", "study"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--machine", "test box",
                           "--workdir", str(tmp_path / "work"), "--only", *sections], cwd=REPO, env=subprocess_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    figures, meta = data["figures"], data["meta"]
    expected = [f"augmentation.{k}_{s}" for s in (16, 32)
                for k in ("speedup", "vfnb_samples_per_s", "reference_samples_per_s")]
    expected += ["pipeline.wait_fraction_default", "pipeline.wait_fraction_paper"]
    expected += [f"training.{b}_{s}_{k}" for b in ("resnet10", "seresnet50") for s in ("default", "paper")
                 for k in ("samples_per_s", "peak_mb")]
    expected += ["inference.seconds_per_scan", "inference.vertebrae_per_s", "inference.peak_mb",
                 "data.preprocess_seconds_16", "data.preprocess_peak_mb_16", "data.synth_cases_per_minute"]
    missing = [k for k in expected if k not in figures]
    assert not missing, f"missing figures {missing}; errors: {data['errors']}"
    for key in expected:
        fig = figures[key]
        assert fig["n"] >= 1 and fig["min"] <= fig["value"] <= fig["max"] and fig["unit"], key
        assert np.isfinite(fig["value"]) and fig["value"] > 0, key
    assert "study" in data["errors"]  # neither --study-dir nor --with-study given
    machine = meta["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1
    assert all(machine["versions"][m] for m in ("torch", "monai", "numpy", "scipy"))
    assert meta["date"] and meta["command"].startswith("python -m benchmarks --quick") and meta["quick"]
    assert not set(data["errors"]) - {"study"}, data["errors"]
    assert meta["machine_name"] == "test box"

    md = subprocess.run([sys.executable, "-m", "benchmarks", "--markdown", str(out)], cwd=REPO, env=subprocess_env,
                        capture_output=True, text=True, timeout=120)
    assert md.returncode == 0, md.stderr
    assert "`augmentation.speedup_32`" in md.stdout and machine["cpu_model"] in md.stdout


@pytest.mark.slow
def test_gpu_script_tiny_runs_on_cpu(tmp_path, subprocess_env):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--tiny", "--out", str(out)], cwd=REPO,
                          env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    figures = data["figures"]
    for key in ("gpu.matmul_ceiling_fp32_tflops", "gpu.flops_per_step", "gpu.fp32_samples_per_s",
                "gpu.bf16_samples_per_s", "gpu.bf16_channels_last_samples_per_s", "gpu.fp32_tflops",
                "gpu.cpu_loader_views_per_s", "gpu.cpu_loader_keeps_up_ratio", "gpu.device_augment_views_per_s",
                "gpu.resnet10_16.compute_steps_per_s", "gpu.resnet10_16.fed_steps_per_s",
                "gpu.resnet10_16.fed_over_compute_ratio", "gpu.resnet10_16.tflops"):
        assert key in figures, f"{key} missing; errors: {data['errors']}"
    assert figures["gpu.flops_per_step"]["value"] > 0
    assert data["meta"]["card"].startswith("cpu") and data["meta"]["setting"]["cube_size"] == 16
    assert "compile" in data["errors"]  # skipped with --tiny
    assert figures["gpu.resnet10_16.fed_steps_per_s"]["compiled"] is False


def test_supcon_seeds_reports_probe_before_and_after(tiny_processed, tmp_path, subprocess_env):
    out = tmp_path / "seeds.json"
    proc = subprocess.run([sys.executable, "benchmarks/supcon_seeds.py", "--seeds", "0", "1", "--dataset",
                           str(tiny_processed), "--tag", "t0", "--out", str(out), "-p", "cube_size=16",
                           "-p", "epochs=1", "-p", "batches_per_epoch=2", "-p", "workers=0", "-p", "warmup_epochs=0",
                           "-p", "backbone_kwargs={block_inplanes: [4, 4, 4, 8]}"],
                          cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["seed"] for r in result["rows"]] == [0, 1] and result["params"]["cube_size"] == 16
    for row in result["rows"]:
        for stage in ("init", "best", "last"):
            assert 0 <= row[f"{stage}_fracture_auc"] <= 1 and 0 < row[f"{stage}_p"] <= 1
        assert row["chance_always_normal_macro_f1"] < 0.2
        # collapse diagnostics: the no-structure loss of 2 views x 4 grades x 3 per grade, projection cosines
        assert row["loss_no_structure"] == pytest.approx(math.log(23)) and -1 <= row["proj_cos_other_grade"] <= 1
    table = subprocess.run([sys.executable, "benchmarks/supcon_seeds.py", "--summarize", str(tmp_path)], cwd=REPO,
                           env=subprocess_env, capture_output=True, text=True, timeout=120).stdout
    assert len(table.strip().splitlines()) == 2 + 2 and table.count("| yes |") + table.count("| no |") == 2
