import gzip
import os

import numpy as np
import pytest

from vfnb.errors import DatasetError, VfnbError
from vfnb.io import atomic_write_text, load_nifti, load_yaml, output_folder, safe_member, save_nifti


def test_safe_member_refuses_escapes(tmp_path):
    assert safe_member(tmp_path, "a_1_0.nii.gz") == tmp_path / "a_1_0.nii.gz"
    for bad in ("../x.nii.gz", "/etc/passwd", "sub/a.nii.gz", "..", "a\\b", "", None, 3):
        with pytest.raises(DatasetError) as info:
            safe_member(tmp_path, bad, "list entry")
        assert str(tmp_path) in str(info.value)


def test_load_yaml_refuses_python_tags(tmp_path):
    path = tmp_path / "train_file_list.t.yaml"
    path.write_text("- !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(DatasetError, match="train_file_list.t.yaml.*tag"):
        load_yaml(path)
    path.write_text("a: [1, 2\n")
    with pytest.raises(DatasetError, match="not valid YAML"):
        load_yaml(path)


def test_nifti_round_trip_and_truncation(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    path = save_nifti(tmp_path / "ct.nii.gz", data, affine)
    back, aff, _ = load_nifti(path)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(aff, affine)
    assert back.dtype == np.int16
    raw = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="cut.nii.gz.*corrupt or truncated"):
        load_nifti(tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(DatasetError, match="junk.nii.gz"):
        load_nifti(tmp_path / "junk.nii.gz")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_output_folder_is_atomic_and_refuses_existing(tmp_path):
    out = tmp_path / "out"
    with output_folder(out) as staging:
        (staging / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(VfnbError, match="already exists"):
        with output_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with output_folder(out, overwrite=True) as staging:
            (staging / "b.txt").write_text("2")
            raise RuntimeError("boom")
    # a failed rebuild leaves the previous output untouched and no staging debris
    assert (out / "a.txt").read_text() == "1" and not (out / "b.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with output_folder(out, overwrite=True) as staging:
        (staging / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [".vfnb-output", "b.txt"]  # the marker --overwrite needs


def test_atomic_write_replaces_whole_file(tmp_path):
    path = atomic_write_text(tmp_path / "m.json", "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def _bomb(path, data, affine, trailing_mb):
    """A valid NIfTI whose gzip stream carries ``trailing_mb`` MB of zeros after the voxels."""
    plain = save_nifti(path.with_name("plain.nii"), data, affine).read_bytes()
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(plain)
        zeros = bytes(1 << 20)
        for _ in range(trailing_mb):
            f.write(zeros)
    return path


def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path):
    import tracemalloc

    from vfnb.io import verify_nifti

    data = np.zeros((64, 64, 64), dtype=np.int16)  # 0.5 MB of voxels
    bomb = _bomb(tmp_path / "bomb.nii.gz", data, np.eye(4), trailing_mb=96)
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"bomb.nii.gz: .*after the voxel array.*decompression bomb"):
            load_nifti(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 * 2**20, f"reading the bomb peaked at {peak / 2**20:.0f} MB"
    with pytest.raises(DatasetError, match="decompression bomb"):
        verify_nifti(bomb)
    # a little padding past the voxels (some writers add it) is still read
    padded = _bomb(tmp_path / "padded.nii.gz", data, np.eye(4), trailing_mb=0)
    with gzip.open(padded, "ab") as f:
        f.write(bytes(4096))
    assert load_nifti(padded)[0].shape == (64, 64, 64)
    assert verify_nifti(padded)[0] == (64, 64, 64)


def test_devices_fifos_and_folders_are_not_regular_files(tmp_path):
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "character device"), ("/dev/urandom", "character device"),
                       (fifo, "FIFO"), (tmp_path, "folder")):
        with pytest.raises(DatasetError, match=f"not a regular file .*{kind}"):
            load_nifti(path)
    with pytest.raises(DatasetError, match="missing.nii.gz: file not found"):
        load_nifti(tmp_path / "missing.nii.gz")


def test_a_write_over_the_file_size_limit_names_the_file(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "big.txt"
    code = ("import resource\nfrom vfnb.io import atomic_write_text\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))\n"
            "try:\n"
            f"    atomic_write_text({str(target)!r}, 'x' * 200000)\n"
            "except OSError as exc:\n"
            "    print(exc.filename, exc.strerror)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == f"{target} File too large", run.stdout + run.stderr
    assert not list(tmp_path.iterdir())  # no partial output left behind


def test_text_cells_never_become_spreadsheet_formulas(tmp_path):
    import pandas as pd

    from vfnb.io import spreadsheet_safe, spreadsheet_unescape

    table = pd.DataFrame({"scan": ['=HYPERLINK("http://x","y")', "+1", "@SUM(A1)", "-2+3", "ok", "a=b"],
                          "fracture_prob": [-0.5, 0.1, 0.2, 0.3, 0.4, 0.5]})
    safe = spreadsheet_safe(table)
    assert list(safe["scan"]) == ["'" + s if s[0] in "=+@-" else s for s in table["scan"]]
    assert list(safe["fracture_prob"]) == list(table["fracture_prob"])  # numbers stay numbers
    path = tmp_path / "t.csv"
    safe.to_csv(path, index=False)
    back = spreadsheet_unescape(pd.read_csv(path))
    assert list(back["scan"]) == list(table["scan"])
