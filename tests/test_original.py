"""The original layout: read_original and write_annotation."""

import numpy as np
import pytest
import yaml

from vfnb.data.original import Case, read_original, write_annotation
from vfnb.errors import DatasetError


def test_read_original_reads_cases_and_grades(tiny_original):
    cases = read_original(tiny_original)
    assert [c.case_id for c in cases] == ["scan0", "scan1", "scan2"]
    assert cases[1].grades == {18: 0, 19: 2, 20: 3}
    assert isinstance(cases[0], Case)
    assert cases[0].image_path == tiny_original / "img" / "scan0.nii.gz" and cases[0].image_path.is_file()
    assert cases[0].seg_path == tiny_original / "seg" / "scan0.nii.gz" and cases[0].seg_path.is_file()


def test_keys_with_or_without_suffix_and_empty_grades(tmp_path, write_box_scan):
    write_box_scan(tmp_path, "a_b", labels=(19, 20))
    write_box_scan(tmp_path, "c", labels=(19,))
    (tmp_path / "annotation.yaml").write_text("a_b:\n  19: 1\n  20: 0\nc.nii.gz:\n")
    cases = read_original(tmp_path)
    assert [(c.case_id, c.grades) for c in cases] == [("a_b", {19: 1, 20: 0}), ("c", {})]


def _annotate(root, text):
    path = root / "annotation.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,expected", [
    ("scan0.nii.gz:\n  29: 1\n", "label 29 is not an integer 1-28"),
    ("scan0.nii.gz:\n  0: 1\n", "label 0 is not an integer 1-28"),
    ("scan0.nii.gz:\n  T12: 1\n", "label 'T12' is not an integer 1-28"),
    ("scan0.nii.gz:\n  19: 4\n", "grade 4 is not an integer 0-3"),
    ("scan0.nii.gz:\n  19: -1\n", "grade -1 is not an integer 0-3"),
    ("scan0.nii.gz:\n  19: 1.5\n", "grade 1.5 is not an integer 0-3"),
    ("scan0.nii.gz:\n  19: true\n", "grade True is not an integer 0-3"),
    ("scan0.nii.gz:\n  19: '2'\n", "grade '2' is not an integer 0-3"),
    ("scan0.nii.gz: [1, 2]\n", "expected a mapping"),
    ("- scan0.nii.gz\n", "top level is a list"),
    ("", "top level is empty"),
    ("../scan0.nii.gz:\n  19: 1\n", "path component"),
    ("/abs/scan0.nii.gz:\n  19: 1\n", "path component"),
    ("scan0:\n  19: 1\nscan0.nii.gz:\n  19: 1\n", "annotated twice"),
    ("!!python/object/apply:os.getcwd []\n", "tag"),
])
def test_annotation_errors_name_the_annotation_file(tiny_original, text, expected):
    path = _annotate(tiny_original, text)
    with pytest.raises(DatasetError, match=expected) as info:
        read_original(tiny_original)
    assert str(path) in str(info.value)


def test_annotated_case_without_image_or_seg(tiny_original):
    (tiny_original / "img" / "scan1.nii.gz").unlink()
    (tiny_original / "seg" / "scan2.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        read_original(tiny_original)
    message = str(info.value)
    assert "2 problems" in message  # every problem, not just the first
    assert str(tiny_original / "img" / "scan1.nii.gz") in message
    assert str(tiny_original / "seg" / "scan2.nii.gz") in message


@pytest.mark.parametrize("missing", ["annotation.yaml", "img", "seg"])
def test_missing_parts_of_the_layout(tiny_original, missing):
    import shutil

    target = tiny_original / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DatasetError) as info:
        read_original(tiny_original)
    assert (f"no {missing}/ folder" if missing != "annotation.yaml" else str(target)) in str(info.value)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_original(tmp_path / "none")


def test_write_annotation_round_trip_atomic(tmp_path):
    path = tmp_path / "annotation.yaml"
    write_annotation(path, {"b.nii.gz": {np.int64(20): np.int64(3), 19: 0}, "a.nii.gz": {}})
    assert yaml.safe_load(path.read_text()) == {"b.nii.gz": {19: 0, 20: 3}, "a.nii.gz": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["annotation.yaml"]


@pytest.mark.parametrize("mapping,expected", [
    ({"a.nii.gz": {20: 5}}, "grade 5"),
    ({"a.nii.gz": {30: 1}}, "label 30"),
    ({"../a.nii.gz": {20: 1}}, "path component"),
])
def test_write_annotation_refuses_bad_mappings_and_keeps_old_file(tmp_path, mapping, expected):
    path = tmp_path / "annotation.yaml"
    path.write_text("old: {}\n")
    with pytest.raises(DatasetError, match=expected) as info:
        write_annotation(path, mapping)
    assert str(path) in str(info.value)
    assert path.read_text() == "old: {}\n"
