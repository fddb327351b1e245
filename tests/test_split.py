"""split_dataset: patient-grouped, worst-grade-stratified, deterministic lists."""

from collections import Counter

import numpy as np
import pytest

from vfnb.cli import main
from vfnb.data.processed import parse_patch_name, read_file_list
from vfnb.data.split import split_dataset
from vfnb.errors import DatasetError, ParamsError, VfnbError
from vfnb.io import save_nifti


def _lists(root, tag):
    return {split: read_file_list(root, split, tag) for split in ("train", "val", "test")}


def _ids(names):
    return {parse_patch_name(n).image_id for n in names}


def _assert_grouped_partition(root, tag, all_names):
    lists = _lists(root, tag)
    ids = {split: _ids(names) for split, names in lists.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert sorted(n for names in lists.values() for n in names) == sorted(all_names)
    return lists, ids


@pytest.fixture
def stratified_dataset(tmp_path):
    """40 CTs of 2 tiny patches; worst grades: 20 x grade 0, 8 x 1, 6 x 2, 6 x 3."""
    root = tmp_path / "strat"
    worst = [0] * 20 + [1] * 8 + [2] * 6 + [3] * 6
    image, mask = np.zeros((4, 4, 4), np.int16), np.ones((4, 4, 4), np.uint8)
    for i, grade in enumerate(worst):
        for label, g in ((19, 0), (20, grade)):
            name = f"ct{i:02d}_{label}_{g}.nii.gz"
            save_nifti(root / "img" / name, image, np.eye(4))
            save_nifti(root / "seg" / name, mask, np.eye(4))
    return root, dict((f"ct{i:02d}", g) for i, g in enumerate(worst))


def test_single_split_grouped_stratified_and_counted(stratified_dataset, capsys):
    root, worst = stratified_dataset
    all_names = [p.name for p in (root / "img").iterdir()]
    counts = split_dataset(root, "s0", seed=3)
    lists, ids = _assert_grouped_partition(root, "s0", all_names)
    assert len(ids["test"]) == 8  # 20 % of 40 CTs
    assert len(ids["val"]) == round(0.2 * 32)  # 20 % of the remaining training CTs
    for grade, n in Counter(worst.values()).items():
        in_test = sum(1 for ct in ids["test"] if worst[ct] == grade)
        assert abs(in_test - 0.2 * n) <= 1, (grade, in_test, n)
    # returned and printed counts match the files
    for split, names in lists.items():
        grades = Counter(parse_patch_name(n).grade for n in names)
        assert counts["s0"][split]["vertebrae"] == len(names) and counts["s0"][split]["cts"] == len(ids[split])
        assert counts["s0"][split]["grades"] == {g: grades.get(g, 0) for g in range(4)}
    out = capsys.readouterr().out
    assert "s0" in out and "train" in out and "test" in out


def test_deterministic_for_a_seed(stratified_dataset, tmp_path):
    root, _ = stratified_dataset
    split_dataset(root, "a", seed=7, verbose=False)
    split_dataset(root, "b", seed=7, verbose=False)
    split_dataset(root, "c", seed=8, verbose=False)
    assert _lists(root, "a") == _lists(root, "b")
    assert _lists(root, "a") != _lists(root, "c")


def test_k_folds_cover_every_ct_once_in_test(stratified_dataset):
    root, worst = stratified_dataset
    all_names = [p.name for p in (root / "img").iterdir()]
    counts = split_dataset(root, "cv", folds=5, val_fraction=0.25, seed=1, verbose=False)
    assert list(counts) == [f"cv-f{i}" for i in range(5)]
    test_ids = []
    for i in range(5):
        _, ids = _assert_grouped_partition(root, f"cv-f{i}", all_names)
        assert len(ids["test"]) == 8 and len(ids["val"]) == 8
        for grade, n in Counter(worst.values()).items():
            assert abs(sum(worst[ct] == grade for ct in ids["test"]) - n / 5) <= 1
        test_ids += sorted(ids["test"])
    assert sorted(test_ids) == sorted(worst)  # each CT tested exactly once


def test_refuses_to_overwrite_unless_asked(tiny_processed):
    before = (tiny_processed / "train_file_list.t0.yaml").read_text()
    with pytest.raises(DatasetError, match="train_file_list.t0.yaml") as info:
        split_dataset(tiny_processed, "t0", verbose=False)
    assert "overwrite" in str(info.value)
    assert (tiny_processed / "train_file_list.t0.yaml").read_text() == before
    split_dataset(tiny_processed, "t0", seed=5, overwrite=True, verbose=False)
    _assert_grouped_partition(tiny_processed, "t0", [p.name for p in (tiny_processed / "img").iterdir()])
    split_dataset(tiny_processed, "k", folds=2, verbose=False)
    with pytest.raises(DatasetError, match="k-f0"):
        split_dataset(tiny_processed, "k", folds=2, verbose=False)


@pytest.mark.parametrize("kw,expected", [
    ({"folds": 0}, "folds"), ({"val_fraction": 1.0}, "val_fraction"), ({"test_fraction": -0.1}, "test_fraction"),
    ({"folds": 20}, "too few"),
])
def test_bad_parameters(tiny_processed, kw, expected):
    with pytest.raises(VfnbError, match=expected):
        split_dataset(tiny_processed, "new", verbose=False, **kw)


def test_bad_tag_and_broken_dataset(tiny_processed):
    with pytest.raises(DatasetError, match="tag"):
        split_dataset(tiny_processed, "../x", verbose=False)
    path = tiny_processed / "img" / "pt00_16_0.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="pt00_16_0.nii.gz"):
        split_dataset(tiny_processed, "new", verbose=False)
    assert not (tiny_processed / "train_file_list.new.yaml").exists()


def test_cli_split(tiny_processed, capsys):
    assert main(["split", str(tiny_processed), "--tag", "cli", "--folds", "2", "--seed", "1"]) == 0
    assert "cli-f1" in capsys.readouterr().out
    assert main(["split", str(tiny_processed), "--tag", "cli", "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cli-f0" in err
    assert main(["split", str(tiny_processed), "--tag", "cli", "--folds", "2", "--overwrite"]) == 0


def test_params_error_is_a_params_error(tiny_processed):
    with pytest.raises(ParamsError):
        split_dataset(tiny_processed, "x", folds=1, test_fraction=1.0, verbose=False)


def test_test_only_cts_join_every_test_list_and_nothing_else(stratified_dataset, tmp_path):
    """A fixed test cohort: in every fold's test list, never trained on; the other CTs split as without it."""
    import shutil

    root, worst = stratified_dataset
    plain = tmp_path / "plain"
    shutil.copytree(root, plain)
    extra = ["ct36", "ct37", "ct38", "ct39"]  # grade-3 CTs in the fixture
    for p in list((plain / "img").iterdir()) + list((plain / "seg").iterdir()):
        if p.name.split("_")[0] in extra:
            p.unlink()
    split_dataset(root, "enr", folds=3, seed=5, test_only=extra, verbose=False)
    split_dataset(plain, "enr", folds=3, seed=5, verbose=False)
    for i in range(3):
        tag = f"enr-f{i}"
        ids = {s: _ids(n) for s, n in _lists(root, tag).items()}
        plain_ids = {s: _ids(n) for s, n in _lists(plain, tag).items()}
        assert set(extra) <= ids["test"] and not set(extra) & (ids["train"] | ids["val"])
        assert ids["test"] - set(extra) == plain_ids["test"]
        assert ids["train"] == plain_ids["train"] and ids["val"] == plain_ids["val"]
    with pytest.raises(DatasetError, match="ct99"):
        split_dataset(root, "bad", folds=3, test_only=["ct99"], verbose=False)


def test_val_only_cts_join_every_validation_list_and_nothing_else(stratified_dataset, tmp_path):
    """A fixed validation cohort: in every fold's validation list, never trained or tested on; the rest as without it."""
    import shutil

    root, worst = stratified_dataset
    plain = tmp_path / "plain"
    shutil.copytree(root, plain)
    val_cohort, test_cohort = ["ct36", "ct37"], ["ct38", "ct39"]  # grade-3 CTs in the fixture
    for p in list((plain / "img").iterdir()) + list((plain / "seg").iterdir()):
        if p.name.split("_")[0] in val_cohort + test_cohort:
            p.unlink()
    split_dataset(root, "enr", folds=3, seed=5, test_only=test_cohort, val_only=val_cohort, verbose=False)
    split_dataset(plain, "enr", folds=3, seed=5, verbose=False)
    for i in range(3):
        tag = f"enr-f{i}"
        ids = {s: _ids(n) for s, n in _lists(root, tag).items()}
        plain_ids = {s: _ids(n) for s, n in _lists(plain, tag).items()}
        assert set(val_cohort) <= ids["val"] and not set(val_cohort) & (ids["train"] | ids["test"])
        assert set(test_cohort) <= ids["test"] and not set(test_cohort) & (ids["train"] | ids["val"])
        assert ids["val"] - set(val_cohort) == plain_ids["val"]
        assert ids["test"] - set(test_cohort) == plain_ids["test"] and ids["train"] == plain_ids["train"]
    with pytest.raises(DatasetError, match="validation-only CT.*ct98"):
        split_dataset(root, "bad", folds=3, val_only=["ct98"], verbose=False)
    with pytest.raises(ParamsError, match="both test-only and validation-only"):
        split_dataset(root, "bad2", folds=3, val_only=["ct36"], test_only=["ct36"], verbose=False)
