"""Hostile and careless inputs (issue 15): each is refused naming the file and field, or survived.

Real files throughout (NIfTI written with nibabel, gzip bytes flipped, YAML written
as text) and real subprocesses for the concurrency and kill cases. Item numbers
refer to issue 15.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from vfnb.cli import main
from vfnb.errors import CheckpointError, DatasetError, ParamsError, VfnbError
from vfnb.io import atomic_write_yaml, load_nifti, load_yaml, output_folder, save_nifti

from conftest import make_box_scan  # rootdir-relative: tests/ is on sys.path under pytest

SIZE = 16


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _vfnb(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "vfnb", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _write_original(root, cases=2, labels=(18, 19, 20), shape=(32, 32, 48)):
    root = Path(root)
    grades = {}
    for i in range(cases):
        ct, seg, _ = make_box_scan(labels, shape=shape, noise_hu=10.0, seed=i)
        save_nifti(root / "img" / f"scan{i}.nii.gz", ct, np.eye(4))
        save_nifti(root / "seg" / f"scan{i}.nii.gz", seg, np.eye(4))
        grades[f"scan{i}.nii.gz"] = {label: 0 for label in labels}
    atomic_write_yaml(root / "annotation.yaml", grades)
    return root


def _flip_crc(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC-32 in the gzip trailer: the deflate data still decode
    path.write_bytes(bytes(raw))


# ------------------------------------------------------------------ 1-3, 6: one NIfTI reader
def test_item1_gzip_crc_failure_is_refused_by_check_preprocess_and_predict(tmp_path, capsys):
    root = _write_original(tmp_path / "orig", cases=1)
    ct = root / "img" / "scan0.nii.gz"
    _flip_crc(ct)
    with pytest.raises(DatasetError, match="scan0.nii.gz.*corrupt"):
        load_nifti(ct)
    code, _, err = _cli(capsys, "preprocess", root, tmp_path / "out", "--size", SIZE)
    assert code == 2 and "scan0.nii.gz" in err and not (tmp_path / "out").exists()
    code, out, _ = _cli(capsys, "check", root)
    assert code == 1 and "scan0.nii.gz" in out


def _write_float_ct(path, data, affine=np.eye(4)):
    img = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def test_item2_nan_or_inf_hu_is_refused_naming_count_and_voxel(tmp_path, capsys):
    root = _write_original(tmp_path / "orig", cases=1)
    ct, _, _ = make_box_scan((18, 19, 20), shape=(32, 32, 48))
    ct = ct.astype(np.float32)
    ct[3, 4, 5], ct[6, 7, 8] = np.nan, np.inf
    _write_float_ct(root / "img" / "scan0.nii.gz", ct)
    with pytest.raises(DatasetError, match=r"2 voxel\(s\) are NaN or infinite \(first at voxel \(3, 4, 5\)\)"):
        load_nifti(root / "img" / "scan0.nii.gz")
    code, out, _ = _cli(capsys, "check", root)
    assert code == 1 and "NaN" in out
    code, _, err = _cli(capsys, "preprocess", root, tmp_path / "out", "--size", SIZE)
    assert code == 2 and "NaN" in err


def test_item3_nifti_without_geometry_is_refused(tmp_path):
    # written by hand: nibabel's writer would fill the geometry in
    header = nib.Nifti1Header()
    header.set_data_shape((8, 8, 8))
    header.set_data_dtype(np.float32)
    header["pixdim"][1:4] = 0
    header["vox_offset"] = 352
    path = tmp_path / "nogeo.nii.gz"
    with gzip.open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * 4 + np.zeros((8, 8, 8), np.float32).tobytes("F"))
    with pytest.raises(DatasetError, match="nogeo.nii.gz: no geometry.*pixdim"):
        load_nifti(path)


def test_item6_check_catches_the_all_zero_sform_preprocess_refuses(tmp_path, capsys):
    root = _write_original(tmp_path / "orig", cases=1)
    for sub in ("img", "seg"):
        path = root / sub / "scan0.nii.gz"
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        broken = nib.Nifti1Image(data, None, img.header)
        broken.set_sform(np.zeros((4, 4)), code=1)
        nib.save(broken, str(path))
    code, out, _ = _cli(capsys, "check", root)
    assert code == 1 and "affine" in out and "scan0.nii.gz" in out


def test_item11_header_claiming_a_huge_array_is_refused_before_reading(tmp_path, monkeypatch):
    path = _write_float_ct(tmp_path / "huge.nii.gz", np.zeros((4, 4, 4)))
    img = nib.load(str(path))
    img.header.set_data_shape((30000, 30000, 30000))
    with open(tmp_path / "huge_hdr.nii", "wb") as f:  # header only, no voxels behind it
        img.header.write_to(f)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="over the limit of 4.0 GB.*VFNB_MAX_NIFTI_GB"):
        load_nifti(tmp_path / "huge_hdr.nii")
    assert time.monotonic() - start < 1.0
    monkeypatch.setenv("VFNB_MAX_NIFTI_GB", "0.0000001")  # the limit is the user's to change
    with pytest.raises(DatasetError, match="over the limit"):
        load_nifti(path)


# ------------------------------------------------------------------ 4, 10: one YAML loader
def test_item4_duplicate_yaml_keys_are_refused_naming_file_and_key(tmp_path, capsys):
    root = _write_original(tmp_path / "orig", cases=1)
    (root / "annotation.yaml").write_text("scan0.nii.gz:\n  18: 0\n  19: 1\n  18: 3\n")
    with pytest.raises(DatasetError, match=r"annotation.yaml: duplicate key 18 \(first at line 2\) at line 4"):
        load_yaml(root / "annotation.yaml")
    code, _, err = _cli(capsys, "preprocess", root, tmp_path / "out", "--size", SIZE)
    assert code == 2 and "duplicate key 18" in err


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))


def test_item10_yaml_alias_bombs_are_refused_at_once(tmp_path, capsys):
    path = tmp_path / "train_file_list.t.yaml"
    path.write_text(BOMB)
    start = time.monotonic()
    with pytest.raises(DatasetError, match="alias \\*a refused"):  # refused at the alias, before any expansion
        load_yaml(path)
    assert time.monotonic() - start < 10.0  # not a speed target: an expanded bomb would not return at all
    code, _, err = _cli(capsys, "train", "--out", tmp_path / "run", "-p", "lr_milestones=[&x 1, *x]")
    assert code == 2 and "-p lr_milestones" in err and "alias" in err


# ------------------------------------------------------------------ 5: checkpoints
def test_item5_checkpoint_with_nan_weights_is_refused(tmp_path):
    from vfnb.models.networks import ModelInput, build_model
    from vfnb.models.checkpoints import load_checkpoint, save_checkpoint

    model = build_model("resnet10", block_inplanes=[4, 4, 4, 4])
    model.input_spec = ModelInput(cube_size=16, patch_size=16)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.pt", model)
    with pytest.raises(CheckpointError, match="nan.pt: weights classifier.weight hold NaN"):
        load_checkpoint(path)


def test_item5_nan_probabilities_are_never_written(tmp_path):
    from vfnb.models.networks import build_model
    from vfnb.inference.grading import predict_patches

    model = build_model("resnet10", block_inplanes=[4, 4, 4, 4])
    with torch.no_grad():
        model.classifier.bias.fill_(float("nan"))
    image, mask = np.full((16, 16, 8), 300, np.int16), np.ones((16, 16, 8), np.uint8)
    record = {"image": str(save_nifti(tmp_path / "img" / "a_20_0.nii.gz", image, np.eye(4))),
              "seg": str(save_nifti(tmp_path / "seg" / "a_20_0.nii.gz", mask, np.eye(4))), "label": 20}
    with pytest.raises(VfnbError, match="NaN or infinite grade probabilities"):
        predict_patches(model, [record], cube_size=16, device="cpu")


# ------------------------------------------------------------------ 7, 11: sizes
def test_item7_one_voxel_vertebra_is_skipped_with_a_warning(tmp_path):
    from vfnb.data.preprocess import extract_patches_from_arrays

    ct, seg, _ = make_box_scan((19, 20), shape=(32, 32, 32))
    seg[seg == 19] = 0
    seg[2, 2, 2] = 19  # a one-voxel "T12"
    column = np.zeros_like(seg)
    skipped = []
    patches = extract_patches_from_arrays(ct, seg, np.eye(4), size=128, skipped=skipped)
    assert [p.label for p in patches] == [20]
    assert skipped[0][0] == 19 and "too small or too thin" in skipped[0][1]
    # a one-voxel-wide column 32 voxels tall at size 128 would be a 128 x 128 x 4096 patch
    column[5, 5, :] = 18
    skipped = []
    assert extract_patches_from_arrays(ct, column, np.eye(4), size=128, skipped=skipped) == []
    assert skipped and skipped[0][0] == 18


def test_item11_training_sizes_and_backbone_kwargs_are_bounded(tmp_path, capsys):
    for override, key in (("cube_size=4096", "cube_size"), ("backbone_kwargs={nope: 1}", "backbone_kwargs"),
                          ("backbone_kwargs={block_inplanes: [100000, 8, 8, 8]}", "backbone_kwargs")):
        code, _, err = _cli(capsys, "train", "--out", tmp_path / "run", "-p", override)
        assert code == 2 and f"'{key}'" in err, err
    assert not (tmp_path / "run").exists()


def test_item11_checkpoint_patch_size_is_bounded(tmp_path, capsys):
    from vfnb.models.networks import ModelInput, build_model
    from vfnb.models.checkpoints import save_checkpoint

    model = build_model("resnet10", block_inplanes=[4, 4, 4, 4])
    model.input_spec = ModelInput(cube_size=16, patch_size=16)
    ckpt = save_checkpoint(tmp_path / "big.pt", model)
    saved = torch.load(ckpt, weights_only=True)
    saved["input"]["patch_size"] = 20000  # a 20000 x 20000 in-plane patch would exhaust memory
    torch.save(saved, ckpt)
    ct, seg, _ = make_box_scan((19, 20), shape=(32, 32, 32))
    save_nifti(tmp_path / "ct.nii.gz", ct, np.eye(4))
    save_nifti(tmp_path / "seg.nii.gz", seg, np.eye(4))
    code, _, err = _cli(capsys, "predict", "--ct", tmp_path / "ct.nii.gz", "--seg", tmp_path / "seg.nii.gz",
                        "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "big.pt: field 'input.patch_size' = 20000 is not valid" in err


# ------------------------------------------------------------------ 13: predict arguments
def test_item13_predict_out_folder_and_absent_device_are_refused(tmp_path, capsys):
    args = ["predict", "--ct", tmp_path / "ct.nii.gz", "--seg", tmp_path / "seg.nii.gz", "--checkpoint",
            tmp_path / "x.pt"]
    code, _, err = _cli(capsys, *args, "--out", tmp_path)
    assert code == 2 and "--out is a folder" in err
    code, _, err = _cli(capsys, *args, "--device", "cuda:7")
    assert code == 2 and "'cuda:7' is not available" in err


# ------------------------------------------------------------------ 8, 9: one run per folder
def test_item8_second_run_into_a_claimed_folder_is_refused(tmp_path, subprocess_env):
    root = _write_original(tmp_path / "orig", cases=1)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vfnb.io import claim_lock; "
                               f"claim_lock({str(tmp_path / '.out.vfnb-lock')!r}, 'out'); print('held', flush=True); "
                               "time.sleep(60)"], env=subprocess_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = _vfnb(["preprocess", root, out, "--size", SIZE], subprocess_env)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 2 and f"process {holder.pid}" in err and not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # a lock whose process died (a killed run) is taken over
    proc = _vfnb(["preprocess", root, out, "--size", SIZE], subprocess_env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not (tmp_path / ".out.vfnb-lock").exists()


def test_item8_two_concurrent_preprocess_runs_one_wins(tmp_path, subprocess_env):
    root = _write_original(tmp_path / "orig", cases=4)
    out = tmp_path / "out"
    runs = [_vfnb(["preprocess", root, out, "--size", SIZE], subprocess_env) for _ in range(2)]
    results = [(r.wait(timeout=120), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another vfnb run" in loser or "already exists" in loser
    assert (out / "patches.csv").read_text().count("\n") == 1 + 4 * 3


def test_item8_train_run_folder_held_by_a_live_run_is_refused(tmp_path):
    from vfnb.training.run_folder import RUN_LOCK, prepare_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / RUN_LOCK).write_text(f"{holder.pid}\n")
        (run_dir / "last.pt").write_bytes(b"")
        with pytest.raises(VfnbError, match=f"another vfnb run \\(process {holder.pid}\\)"):
            prepare_run_dir(run_dir, resume=True)
    finally:
        holder.kill()
        holder.wait()
    lock = prepare_run_dir(run_dir, resume=True)  # the holder died: its lock is stale
    assert lock.read_text().split()[0] == str(os.getpid())


def test_item9_overwrite_refuses_a_folder_vfnb_did_not_write(tmp_path, capsys):
    root = _write_original(tmp_path / "orig", cases=1)
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("months of work")
    code, _, err = _cli(capsys, "preprocess", root, out, "--size", SIZE, "--overwrite")
    assert code == 2 and "does not look like a vfnb output" in err
    assert (out / "chapter1.tex").read_text() == "months of work"


# ------------------------------------------------------------------ 12: disk errors
def test_item12_write_failures_are_reported_without_traceback(tmp_path, capsys, tiny_processed, monkeypatch):
    import errno

    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith(".yaml"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    code, _, err = _cli(capsys, "split", tiny_processed, "--tag", "x")
    assert code == 2 and "No space left on device" in err and "x.yaml" in err

    from vfnb.io import atomic_torch_save

    def failing_save(obj, f, *a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(VfnbError, match="best.pt: could not write the checkpoint"):
        atomic_torch_save({}, tmp_path / "best.pt")


# ------------------------------------------------------------------ 14, 15: validate before starting
def test_item14_failed_train_leaves_no_folder_behind(tmp_path, capsys, tiny_processed):
    out = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--out", out, "-p", f"dataset={tiny_processed}", "-p", "tag=nope")
    assert code == 2 and "nope" in err
    assert not out.exists()
    code, _, err = _cli(capsys, "train", "--out", out, "-p", f"dataset={tmp_path / 'missing'}")
    assert code == 2 and "missing" in err and not out.exists()


def test_item15_study_parameters_are_checked_before_notebook_00(tmp_path):
    from vfnb.study import run_study

    for override, key in (("cube_size=abc", "cube_size"), ("cube_size=-1", "cube_size"),
                          ("supcon_lr=fast", "supcon_lr"), ("synth_cases=0", "synth_cases"),
                          ("models=[ce, gpt]", "models")):
        start = time.monotonic()
        with pytest.raises(ParamsError, match=f"'{key}'"):
            run_study([], [override], out=tmp_path / "study", notebooks=(), progress=False)
        assert time.monotonic() - start < 5
    assert not (tmp_path / "study").exists()


# ------------------------------------------------------------------ 16-19: processes and leftovers
def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_item16_preprocess_workers_exit_when_the_parent_is_killed(tmp_path, subprocess_env):
    root = _write_original(tmp_path / "orig", cases=8, shape=(64, 64, 48))
    proc = _vfnb(["preprocess", root, tmp_path / "out", "--size", 64, "--workers", 2], subprocess_env)
    deadline, workers = time.monotonic() + 30, []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = _children(proc.pid)
        if len(workers) >= 3:  # the resource tracker and two workers
            break
        time.sleep(0.1)
    assert len(workers) >= 3, "workers never started"
    time.sleep(1.0)  # let the workers import and start on a scan
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes still running after their parent was killed: {left}"


def test_item17_stale_staging_folders_of_dead_runs_are_removed(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".tmp-out-{dead.pid}-0123abcd"
    (stale / "img").mkdir(parents=True)
    (stale / "img" / "big.nii.gz").write_bytes(b"\0" * 1000)
    live = tmp_path / f".tmp-out-{os.getpid()}-4567ef01"  # a concurrent run's: left alone
    live.mkdir()
    with output_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("1")
    assert not stale.exists() and live.exists()
    assert "removed" in capsys.readouterr().err


def test_item18_output_folders_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with output_folder(tmp_path / "out") as staging:
            (staging / "a.txt").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_item19_symlinks_leading_out_of_the_dataset_are_reported(tmp_path, capsys):
    root = _write_original(tmp_path / "orig", cases=1)
    elsewhere = tmp_path / "elsewhere.nii.gz"
    os.replace(root / "img" / "scan0.nii.gz", elsewhere)
    (root / "img" / "scan0.nii.gz").symlink_to(elsewhere)
    code, out, _ = _cli(capsys, "check", root)
    assert code == 0 and "symbolic link" in out and "outside the dataset folder" in out
    code, _, err = _cli(capsys, "preprocess", root, tmp_path / "out", "--size", SIZE)
    assert code == 0 and "symbolic link" in err


def test_claim_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    from vfnb.io import claim_lock

    lock = claim_lock(tmp_path / "x.lock", "x")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{holder.pid}\n")
        with pytest.raises(VfnbError, match=f"process {holder.pid}"):
            claim_lock(lock, "x")
    finally:
        holder.kill()
        holder.wait()
    assert claim_lock(lock, "x").read_text().split()[0] == str(os.getpid())


def test_item8_a_lock_being_written_is_not_taken_as_stale(tmp_path):
    """A lock created a moment ago whose pid is not written yet (the O_EXCL window) belongs to a live run."""
    from vfnb.io import claim_lock

    lock = tmp_path / ".out.vfnb-lock"
    lock.write_text("")  # just created by another run, pid still to come
    with pytest.raises(VfnbError, match="another vfnb run is starting"):
        claim_lock(lock, "out")
    old = time.time() - 3600
    os.utime(lock, (old, old))  # an empty lock an hour old: its writer died before writing; taken over
    assert claim_lock(lock, "out") == lock and lock.read_text().split()[0] == str(os.getpid())
