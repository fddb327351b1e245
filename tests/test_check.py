"""check_dataset / require_valid / `vfnb check` on both layouts."""

import numpy as np
import pytest
import yaml

from vfnb.cli import main
from vfnb.data.check import check_dataset, require_valid
from vfnb.errors import DatasetError
from vfnb.io import atomic_write_yaml, save_nifti


def _truncate(path, keep):
    """Keep the first ``keep`` bytes (negative: drop that many from the end)."""
    path.write_bytes(path.read_bytes()[:keep])


def _errors_naming(report, text):
    return [e for e in report.errors if text in e]


def test_clean_processed_dataset_summary(tiny_processed):
    report = check_dataset(tiny_processed)
    assert report.kind == "processed" and report.ok, report.errors
    assert report.cases == 10 and report.vertebrae == 50
    assert sum(report.grade_counts[19].values()) == 10
    assert report.list_counts["t0"]["train"][0] == 8 and report.list_cts["t0"]["test"] == 2
    text = report.summary_text()
    assert "cases (CTs): 10" in text and "vertebrae: 50" in text
    # levels in spine order, T9 first, L3 last
    assert text.index("  T9 ") < text.index("  T12 ") < text.index("  L1 ") < text.index("  L3 ")
    assert "lists of tag 't0'" in text and "ok: no errors" in text


def test_clean_original_dataset_orders_t13_between_t12_and_l1(tmp_path, write_box_scan, tiny_original):
    report = check_dataset(tiny_original)
    assert report.kind == "original" and report.ok and not report.warnings, (report.errors, report.warnings)
    assert report.cases == 3 and report.vertebrae == 9
    assert report.grade_counts[20] == {0: 1, 3: 1, 1: 1}
    root = tmp_path / "t13"
    write_box_scan(root, "a", labels=(19, 28, 20))
    atomic_write_yaml(root / "annotation.yaml", {"a.nii.gz": {19: 0, 28: 1, 20: 2}})
    text = check_dataset(root).summary_text()
    assert text.index("  T12 ") < text.index("  T13 ") < text.index("  L1 ")


def test_processed_collects_every_problem_naming_files(tiny_processed, tmp_path):
    root = tiny_processed
    img, seg = root / "img", root / "seg"
    # corrupt and truncated NIfTI (half the file; only the gzip trailer)
    _truncate(img / "pt00_16_0.nii.gz", keep=len((img / "pt00_16_0.nii.gz").read_bytes()) // 2)
    _truncate(seg / "pt00_17_1.nii.gz", keep=-4)
    (img / "pt00_18_2.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    # shape and affine mismatch
    save_nifti(seg / "pt01_17_1.nii.gz", np.zeros((32, 32, 20), np.uint8), np.diag([0.9, 0.9, 0.9, 1]))
    shifted = np.diag([0.9, 0.9, 0.9, 1.0])
    shifted[:3, 3] = (-20.0 + 0.01, 10.0, 5.0)  # pt01's origin is (-20, 10, 5)
    save_nifti(seg / "pt01_18_2.nii.gz", np.ones((32, 32, 24), np.uint8), shifted)
    # within tolerance: no error
    near = shifted.copy()
    near[:3, 3] = (-20.0 + 5e-4, 10.0, 5.0)
    save_nifti(seg / "pt01_19_3.nii.gz", np.ones((32, 32, 24), np.uint8), near)
    # names that do not parse, orphans
    (img / "pt02_99_1.nii.gz").write_bytes((img / "pt02_18_2.nii.gz").read_bytes())
    (seg / "orphan_20_1.nii.gz").write_bytes((seg / "pt02_18_2.nii.gz").read_bytes())
    # lists: path component, python tag, missing file, leakage, bad grade in a name
    atomic_write_yaml(root / "train_file_list.bad.yaml", ["../pt00_16_0.nii.gz", "pt03_17_0.nii.gz",
                                                         "ghost_20_1.nii.gz", "pt03_16_3.nii.gz"])
    atomic_write_yaml(root / "test_file_list.bad.yaml", ["pt03_18_1.nii.gz", "pt04_17_7.nii.gz"])
    (root / "val_file_list.evil.yaml").write_text("- !!python/object/apply:os.system ['echo hi']\n")

    report = check_dataset(root)
    expected = {
        "pt00_16_0.nii.gz": "truncated",
        "seg/pt00_17_1.nii.gz": "truncated",
        "pt00_18_2.nii.gz": "cannot read NIfTI",
        "seg/pt01_17_1.nii.gz": "shape (32, 32, 20) differs",
        "seg/pt01_18_2.nii.gz": "affine differs",
        "pt02_99_1.nii.gz": "label '99'",
        "seg/orphan_20_1.nii.gz": "mask has no image",
        "train_file_list.bad.yaml": "path component",
        "ghost_20_1.nii.gz": "img/ghost_20_1.nii.gz does not exist",
        "pt04_17_7.nii.gz": "grade '7'",
        "val_file_list.evil.yaml": "tag",
        "CT 'pt03'": "patient leakage",
    }
    for where, what in expected.items():
        hits = _errors_naming(report, where)
        assert any(what in e for e in hits), (where, what, report.errors)
    assert not _errors_naming(report, "pt01_19_3"), report.errors
    leak = _errors_naming(report, "patient leakage")[0]
    assert "train_file_list.bad.yaml" in leak and "test_file_list.bad.yaml" in leak
    assert any("test_file_list.evil.yaml" in w and "missing" in w for w in report.warnings)

    with pytest.raises(DatasetError) as info:
        require_valid(root)
    assert f"{len(report.errors)} problem(s)" in str(info.value)
    assert "seg/pt01_18_2.nii.gz" in str(info.value) and "vfnb check" in str(info.value)


def test_processed_mask_warnings(tiny_processed):
    affine = np.diag([0.9, 0.9, 0.9, 1.0])
    affine[:3, 3] = (-40.0, 10.0, 10.0)  # pt02
    save_nifti(tiny_processed / "seg" / "pt02_18_2.nii.gz", np.zeros((32, 32, 24), np.uint8), affine)
    save_nifti(tiny_processed / "seg" / "pt02_19_3.nii.gz", np.full((32, 32, 24), 20, np.uint8), affine)
    report = check_dataset(tiny_processed)
    assert report.ok, report.errors
    assert any("pt02_18_2.nii.gz" in w and "empty" in w for w in report.warnings)
    assert any("pt02_19_3.nii.gz" in w and "not binary" in w for w in report.warnings)


def test_original_problems_and_warnings(tmp_path, write_box_scan):
    root = tmp_path / "orig"
    write_box_scan(root, "ok", labels=(18, 19, 20))
    write_box_scan(root, "short", labels=(19, 20))
    write_box_scan(root, "shifted", labels=(19, 20))
    write_box_scan(root, "resized", labels=(19,))
    write_box_scan(root, "broken", labels=(19,))
    write_box_scan(root, "labels", labels=(19,))
    write_box_scan(root, "unlisted", labels=(19,))
    # label map on another grid / affine
    save_nifti(root / "seg" / "resized.nii.gz", np.zeros((32, 32, 40), np.uint8), np.eye(4))
    moved = np.eye(4)
    moved[2, 3] = 0.5
    seg_data = np.asarray(__import__("nibabel").load(root / "seg" / "shifted.nii.gz").dataobj)
    save_nifti(root / "seg" / "shifted.nii.gz", seg_data, moved)
    _truncate(root / "img" / "broken.nii.gz", keep=len((root / "img" / "broken.nii.gz").read_bytes()) - 100)
    bad_labels = seg_data.copy()
    bad_labels[0, 0, 0] = 40
    save_nifti(root / "seg" / "labels.nii.gz", bad_labels, np.eye(4))
    annotation = {"ok.nii.gz": {18: 0, 19: 1},  # 20 in the map, not graded
                  "short.nii.gz": {19: 0, 20: 1, 21: 2},  # 21 graded, absent from the map
                  "shifted.nii.gz": {19: 0}, "resized.nii.gz": {19: 0}, "broken.nii.gz": {19: 0},
                  "labels.nii.gz": {19: 0}, "gradebad.nii.gz": {19: 5}}
    (root / "annotation.yaml").write_text(yaml.safe_dump(annotation))
    report = check_dataset(root)
    assert report.kind == "original"
    expected_errors = {
        "seg/shifted.nii.gz": "affine differs",
        "seg/resized.nii.gz": "shape (32, 32, 40) differs",
        "img/broken.nii.gz": "truncated",
        "seg/labels.nii.gz": "values [40]",
        "gradebad.nii.gz": "grade 5 is not an integer 0-3",
    }
    for where, what in expected_errors.items():
        assert any(where in e and what in e for e in report.errors), (where, report.errors)
    assert any("ok" in w and "L1 (20)" in w and "no grade" in w for w in report.warnings), report.warnings
    assert any("short" in w and "L2 (21)" in w and "absent from the label map" in w for w in report.warnings)
    assert any("img/unlisted.nii.gz" in w and "not in annotation.yaml" in w for w in report.warnings)


def test_not_a_dataset_and_missing_folder(tmp_path):
    report = check_dataset(tmp_path)
    assert report.kind == "unknown" and "not a dataset" in report.errors[0] and str(tmp_path) in report.errors[0]
    report = check_dataset(tmp_path / "missing")
    assert "not found" in report.errors[0]


def test_cli_check_exit_codes_and_one_line_errors(tiny_processed, capsys):
    assert main(["check", str(tiny_processed)]) == 0
    assert "ok: no errors" in capsys.readouterr().out
    _truncate(tiny_processed / "img" / "pt05_18_1.nii.gz", keep=300)
    (tiny_processed / "test_file_list.t0.yaml").write_text("- ../../etc/passwd_20_1.nii.gz\n")
    code = main(["check", str(tiny_processed)])
    captured = capsys.readouterr()
    assert code != 0
    output = captured.out + captured.err
    assert "Traceback" not in output
    error_lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 2
    assert any("img/pt05_18_1.nii.gz" in line for line in error_lines)
    assert any("test_file_list.t0.yaml" in line and "path component" in line for line in error_lines)


def test_check_decompresses_each_file_once(tiny_processed, monkeypatch):
    """Single pass: every NIfTI's voxels are decompressed once (the header is read on its own, a few bytes)."""
    import collections
    import gzip

    read_bytes = collections.Counter()
    real_open = gzip.open

    class Counting:
        def __init__(self, fh, path):
            self.fh, self.path = fh, path

        def read(self, *args):
            chunk = self.fh.read(*args)
            read_bytes[self.path] += len(chunk)
            return chunk

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

    monkeypatch.setattr(gzip, "open", lambda path, *a, **kw: Counting(real_open(path, *a, **kw), str(path)))
    report = check_dataset(tiny_processed)
    assert report.ok
    assert len(read_bytes) == 100
    for path, n in read_bytes.items():
        with real_open(path, "rb") as fh:
            size = len(fh.read())
        assert size <= n < 1.5 * size, (path, n, size)


def test_a_list_without_fractured_vertebrae_is_warned(tiny_processed):
    names = yaml.safe_load((tiny_processed / "val_file_list.t0.yaml").read_text())
    normal = [n for n in names if n.endswith("_0.nii.gz")]
    atomic_write_yaml(tiny_processed / "val_file_list.t0.yaml", normal)
    report = check_dataset(tiny_processed)
    assert report.ok
    found = [w for w in report.warnings if "no fractured vertebra" in w]
    assert len(found) == 1 and "val_file_list.t0.yaml" in found[0] and f"among its {len(normal)} vertebrae" in found[0]
    assert "warning: " + found[0] in report.summary_text()


def test_an_original_layout_without_annotation_is_not_taken_for_a_processed_one(tmp_path, capsys):
    for sub in ("img", "seg"):
        save_nifti(tmp_path / sub / "scan1.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
    report = check_dataset(tmp_path)
    assert report.kind == "original"
    assert any("annotation.yaml: file not found" in e for e in report.errors)
    assert main(["check", str(tmp_path)]) == 1
    assert "error:" in capsys.readouterr().out
