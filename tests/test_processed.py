"""The processed layout: patch names, split lists, ProcessedDataset."""

from pathlib import Path

import pytest
import yaml

from vfnb.data.processed import (PatchName, ProcessedDataset, list_tags, parse_patch_name, patch_filename,
                                 read_file_list, write_file_list)
from vfnb.errors import DatasetError


def _write_list(root: Path, split: str, tag: str, text: str) -> Path:
    path = root / f"{split}_file_list.{tag}.yaml"
    path.write_text(text)
    return path


def test_patch_name_round_trip_with_underscores_in_the_id():
    name = patch_filename("sub-gl003_dir-ax", 28, 2)
    assert name == "sub-gl003_dir-ax_28_2.nii.gz"
    assert parse_patch_name(name) == PatchName("sub-gl003_dir-ax", 28, 2)
    assert parse_patch_name(name).filename == name


@pytest.mark.parametrize("bad", ["x_20_4.nii.gz", "x_29_1.nii.gz", "x_0_1.nii.gz", "x_T12_1.nii.gz",
                                 "x_20_1.nii", "20_1.nii.gz", "_20_1.nii.gz"])
def test_parse_patch_name_refuses_bad_names_naming_where(bad):
    with pytest.raises(DatasetError, match="somewhere/list.yaml"):
        parse_patch_name(bad, where="somewhere/list.yaml")


def test_read_file_list_and_records_of_tiny_dataset(tiny_processed):
    names = read_file_list(tiny_processed, "train", "t0")
    assert len(names) == 30 and all(isinstance(n, str) for n in names)
    dataset = ProcessedDataset(tiny_processed)
    assert len(dataset.patches) == 50
    records = dataset.records("test", "t0")
    assert {r["image_id"] for r in records} == {"pt08", "pt_09"}
    for record in records:
        assert set(record) == {"image", "seg", "image_id", "label", "grade", "name"}
        assert Path(record["image"]).is_absolute() and Path(record["image"]).is_file()
        assert Path(record["seg"]).is_file() and Path(record["seg"]).parent.name == "seg"
        assert parse_patch_name(record["name"]) == PatchName(record["image_id"], record["label"], record["grade"])
    assert dataset.tags() == ["t0"]


@pytest.mark.parametrize("entry", ["../pt00_16_0.nii.gz", "/etc/pt00_16_0.nii.gz", "img/pt00_16_0.nii.gz",
                                   "..", "sub\\pt00_16_0.nii.gz"])
def test_read_file_list_refuses_path_components(tiny_processed, entry):
    path = _write_list(tiny_processed, "train", "bad", yaml.safe_dump(["pt00_16_0.nii.gz", entry]))
    with pytest.raises(DatasetError) as info:
        read_file_list(tiny_processed, "train", "bad")
    assert str(path) in str(info.value)
    assert "path component" in str(info.value) or "does not" in str(info.value)


def test_read_file_list_refuses_python_tags_without_running_them(tiny_processed, tmp_path):
    marker = tmp_path / "pwned"
    path = _write_list(tiny_processed, "train", "evil", f"- !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(DatasetError, match="tag") as info:
        read_file_list(tiny_processed, "train", "evil")
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("text,expected", [
    ("a: 1\n", "expected a YAML list"),
    ("", "empty file"),
    ("- pt00_16_0.nii.gz\n- not_a_patch.txt\n", "not_a_patch.txt"),
    ("- pt00_16_0.nii.gz\n- pt00_16_0.nii.gz\n", "listed twice"),
    ("- 12\n", "not a file name"),
])
def test_read_file_list_refuses_bad_content(tiny_processed, text, expected):
    path = _write_list(tiny_processed, "val", "bad", text)
    with pytest.raises(DatasetError, match=expected) as info:
        read_file_list(tiny_processed, "val", "bad")
    assert str(path) in str(info.value)


def test_read_file_list_missing_file_names_it(tiny_processed):
    with pytest.raises(DatasetError, match="val_file_list.nope.yaml"):
        read_file_list(tiny_processed, "val", "nope")


def test_write_file_list_round_trip_and_atomic(tmp_path):
    names = ["a_b_20_1.nii.gz", "a_b_19_0.nii.gz"]
    path = write_file_list(tmp_path, "train", "v1.2-f0", names)
    assert path.name == "train_file_list.v1.2-f0.yaml"
    assert read_file_list(tmp_path, "train", "v1.2-f0") == names
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left
    with pytest.raises(DatasetError, match="path component"):
        write_file_list(tmp_path, "test", "v1", ["../a_20_1.nii.gz"])
    assert not (tmp_path / "test_file_list.v1.yaml").exists()
    with pytest.raises(DatasetError, match="tag"):
        write_file_list(tmp_path, "test", "../x", names)
    with pytest.raises(ValueError):
        write_file_list(tmp_path, "holdout", "v1", names)


def test_list_tags_finds_tags_with_dots_and_dashes(tmp_path):
    for name in ["train_file_list.t0.yaml", "test_file_list.t0.yaml", "val_file_list.v1.2-f3.yaml",
                 "test_file_list.a_b.yaml", "notes.yaml", "other_file_list.x.yaml", "train_file_list..yaml"]:
        (tmp_path / name).write_text("[]\n")
    assert list_tags(tmp_path) == ["a_b", "t0", "v1.2-f3"]


def test_records_refuse_listed_file_missing_in_img_or_seg(tiny_processed):
    (tiny_processed / "seg" / "pt08_18_0.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        ProcessedDataset(tiny_processed).records("test", "t0")
    message = str(info.value)
    assert "test_file_list.t0.yaml" in message and "seg/pt08_18_0.nii.gz" in message
    (tiny_processed / "img" / "pt08_19_1.nii.gz").unlink()
    with pytest.raises(DatasetError, match="img/pt08_19_1.nii.gz"):
        ProcessedDataset(tiny_processed).records("test", "t0")


def test_processed_dataset_refuses_missing_folders_and_bad_patch_names(tmp_path, tiny_processed):
    with pytest.raises(DatasetError, match="not found"):
        ProcessedDataset(tmp_path / "nowhere")
    (tmp_path / "half" / "img").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no seg/"):
        ProcessedDataset(tmp_path / "half")
    (tiny_processed / "img" / "junk.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match="junk.nii.gz"):
        ProcessedDataset(tiny_processed).patches
