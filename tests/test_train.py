"""The training engine: modes, run folders, resume, determinism, params, CLI, DDP (tiny runs)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vfnb.cli import main as cli_main
from vfnb.errors import CheckpointError, ParamsError, VfnbError
from vfnb.models.checkpoints import load_checkpoint, load_checkpoint_dict
from vfnb.training.config import TrainConfig, defaults, parse_overrides, validate_params
from vfnb.data.channels import INPUT_CHANNELS
from vfnb.training.engine import train, train_from_cli

DEFAULT_PARAMS = defaults()

# a light network on 16^3 cubes: every run here takes seconds
# device: cpu, also on a machine with a GPU: these tests check the CPU path (bit-for-bit resume, same seed ->
# same metrics); test_cuda_run_* checks the GPU path where there is one
TINY = dict(tag="t0", cube_size=16, backbone="resnet10", backbone_kwargs={"block_inplanes": [4, 8, 8, 16]},
            workers=0, threads=1, eval_batch_size=32, progress=False, device="cpu")
TIMING_KEYS = ("epoch_seconds", "data_wait_fraction")


def _params(dataset, **kw):
    return {**TINY, "dataset": str(dataset), **kw}


def _metrics(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def _corrupt_test_split(root: Path) -> None:
    """Make anything that reads the test list or its patches fail loudly."""
    names = yaml.safe_load((root / "test_file_list.t0.yaml").read_text())
    for name in names:
        (root / "img" / name).write_bytes(b"corrupt")
    (root / "test_file_list.t0.yaml").write_text("{{{ not yaml\n")


def test_supcon_then_linear_and_every_mode(tiny_processed, tmp_path):
    _corrupt_test_split(tiny_processed)  # the test list is never read during training
    sup = train(_params(tiny_processed, mode="supcon", epochs=2, progress=True), tmp_path / "supcon")
    for name in ("params.yaml", "last.pt", "best.pt", "metrics.csv", "history.json"):
        assert (tmp_path / "supcon" / name).is_file(), name
    assert [h["epoch"] for h in sup.history] == [1, 2]
    row = sup.history[-1]
    assert set(row) == {"epoch", "steps", "loss", "lr", "val_macro_f1", "val_accuracy", "val_fracture_auc",
                        "val_loss", "val_probe_macro_f1", "val_probe_fracture_auc", "epoch_seconds", "data_wait_fraction",
                        "loss_no_structure", "proj_cos_own_view", "proj_cos_same_grade", "proj_cos_other_grade"}
    assert [h["steps"] for h in sup.history] == [sup.history[0]["steps"] * k for k in (1, 2)]
    # the probe is the supcon run's validation number; the reference loss is ln(views in a batch - 1)
    assert row["val_probe_macro_f1"] == row["val_macro_f1"]
    assert row["loss_no_structure"] == pytest.approx(math.log(2 * 4 * DEFAULT_PARAMS["batch_per_grade"] - 1))
    assert -1.0 <= row["proj_cos_other_grade"] <= 1.0 and row["proj_cos_own_view"] <= 1.0 + 1e-6
    assert 0.0 <= row["data_wait_fraction"] <= 1.0 and row["lr"] == pytest.approx(0.005)
    assert 0.0 <= row["val_macro_f1"] <= 1.0  # the logistic-regression probe
    assert 0.0 <= row["val_fracture_auc"] <= 1.0
    assert json.loads((tmp_path / "supcon" / "history.json").read_text()) == sup.history
    assert len((tmp_path / "supcon" / "metrics.csv").read_text().strip().splitlines()) == 3
    assert yaml.safe_load((tmp_path / "supcon" / "params.yaml").read_text())["mode"] == "supcon"
    ckpt = load_checkpoint_dict(sup.best_checkpoint)
    for key in ("model_args", "params", "epoch", "optimizer", "scheduler", "rng", "history", "best_metric"):
        assert key in ckpt, key
    assert ckpt["params"]["mode"] == "supcon" and ckpt["model_args"]["block_inplanes"] == [4, 8, 8, 16]
    # the input block: trained on 16^3 cubes from the tiny dataset's 32 x 32 patches (no preprocess.json there)
    assert ckpt["input"] == {"cube_size": 16, "patch_size": 32, "channels": list(INPUT_CHANNELS)}

    # linear: encoder frozen (weights and batch-norm statistics), only the classifier moves
    lin = train(_params(tiny_processed, mode="linear", epochs=1, init_checkpoint=str(sup.best_checkpoint)),
                tmp_path / "linear")
    before, after = load_checkpoint(sup.best_checkpoint).state_dict(), load_checkpoint(lin.last_checkpoint).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(("classifier.", "feature_norm.")))
    # the classifier reads standardised features: the probe's scaler became the model's fixed feature_norm
    assert not torch.equal(after["feature_norm.scale"], torch.ones_like(after["feature_norm.scale"]))
    assert row["val_loss"] is None and lin.history[0]["val_loss"] > 0 and lin.selected_by == "val_loss"
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    # the classifier starts from a logistic regression on the frozen features: far above chance at once
    # (the tiny patches' grades differ by the box height, which even a 2-epoch encoder separates)
    assert lin.history[0]["val_macro_f1"] > 0.5

    # the probe fit itself is a candidate (epoch 0): an SGD step that ruins it is not selected
    ruined = train(_params(tiny_processed, mode="linear", epochs=1, lr=500.0, momentum=0.0,
                           init_checkpoint=str(sup.best_checkpoint)), tmp_path / "linear_ruined")
    chosen = load_checkpoint_dict(ruined.best_checkpoint)
    assert chosen["best_epoch"] == 0 and chosen["best_metric"] < ruined.history[0]["val_loss"]

    # finetune starts its classifier from the same probe fit (linear probing, then fine-tuning), and that
    # start is a candidate too: a fine-tuning step that ruins the network is not selected
    fin_ruined = train(_params(tiny_processed, mode="finetune", epochs=1, lr=500.0, momentum=0.0,
                               init_checkpoint=str(sup.best_checkpoint)), tmp_path / "finetune_ruined")
    start = load_checkpoint_dict(fin_ruined.best_checkpoint)
    assert start["best_epoch"] == 0 and start["best_metric"] == chosen["best_metric"] and fin_ruined.best_epoch == 0
    ruined_loss = fin_ruined.history[0]["val_loss"]  # None: the ruined network's outputs were not finite
    assert ruined_loss is None or start["best_metric"] < ruined_loss
    lin_start = load_checkpoint(ruined.best_checkpoint).state_dict()
    fin_start = load_checkpoint(fin_ruined.best_checkpoint).state_dict()
    assert all(torch.equal(lin_start[k], fin_start[k]) for k in lin_start)  # encoder and classifier alike
    # classifier_init: random keeps the old behaviour (no epoch-0 candidate, a fresh classifier)
    fin_random = train(_params(tiny_processed, mode="finetune", epochs=1, classifier_init="random",
                               init_checkpoint=str(sup.best_checkpoint)), tmp_path / "finetune_random")
    assert load_checkpoint_dict(fin_random.best_checkpoint)["best_epoch"] == 1 == fin_random.best_epoch

    # finetune moves the encoder; joint and ce run with the same engine
    fin = train(_params(tiny_processed, mode="finetune", epochs=1, init_checkpoint=str(sup.best_checkpoint)),
                tmp_path / "finetune")
    tuned = load_checkpoint(fin.last_checkpoint).state_dict()
    assert not torch.equal(before["encoder.conv1.weight"], tuned["encoder.conv1.weight"])
    assert torch.equal(before["head.weight"], tuned["head.weight"])  # unused by CE: frozen
    for mode, extra in (("joint", {}), ("ce", {"ce_views": 1})):
        result = train(_params(tiny_processed, mode=mode, epochs=1, lr_schedule="cosine", **extra), tmp_path / mode)
        assert result.best_checkpoint.is_file() and result.history[0]["loss"] > 0
    # ce also records a probe on its pooled features (budget curves read both encoders the same way)
    assert 0.0 <= result.history[0]["val_probe_macro_f1"] <= 1.0
    assert "loss_no_structure" not in result.history[0]


def test_warmup_scales_each_step_linearly_and_restores_the_schedule():
    from vfnb.training.engine import warmup

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.2)
    seen = []
    for step in range(6):
        with warmup(optimizer, step, warmup_steps=4):
            seen.append(optimizer.param_groups[0]["lr"])
        assert optimizer.param_groups[0]["lr"] == 0.2  # the scheduler never sees the factor
    assert seen == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2, 0.2])  # 0.2 * min(1, (k + 1) / 4)
    with warmup(optimizer, 0, warmup_steps=0) as factor:
        assert factor == 1.0 and optimizer.param_groups[0]["lr"] == 0.2


def test_weak_augmentation_more_views_and_warmup_train(tiny_processed, tmp_path):
    result = train(_params(tiny_processed, mode="supcon", epochs=2, augmentation="weak", views=3, warmup_epochs=1),
                   tmp_path / "weak")
    row = result.history[-1]
    # 3 views per vertebra: the no-structure loss counts 3 x 4 x batch_per_grade views
    assert row["loss_no_structure"] == pytest.approx(math.log(3 * 4 * DEFAULT_PARAMS["batch_per_grade"] - 1))
    saved = yaml.safe_load((tmp_path / "weak" / "params.yaml").read_text())
    assert (saved["augmentation"], saved["views"], saved["warmup_epochs"]) == ("weak", 3, 1)
    with pytest.raises(ParamsError, match="augmentation"):
        validate_params({"augmentation": "strong"})
    with pytest.raises(ParamsError, match="warmup_epochs"):
        validate_params({"warmup_epochs": 30, "epochs": 30})
    with pytest.raises(ParamsError, match="views"):
        validate_params({"views": 1})


def test_resume_gives_the_uninterrupted_weights_and_same_seed_same_metrics(tiny_processed, tmp_path):
    params = _params(tiny_processed, mode="joint", epochs=3, lr_milestones=[2], lr_gamma=0.5)
    whole = train(params, tmp_path / "whole")
    # interrupted after one epoch, with a DataLoader worker this time (augmentation must not depend on it)
    cut = train({**params, "workers": 1}, tmp_path / "cut", stop_after_epochs=1)
    assert len(cut.history) == 1 and load_checkpoint_dict(cut.last_checkpoint)["epoch"] == 1
    resumed = train(None, tmp_path / "cut", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = load_checkpoint(whole.last_checkpoint).state_dict()
    b = load_checkpoint(resumed.last_checkpoint).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # the same seed gives the same metrics (two separate runs on the CPU)
    assert _metrics(whole.history) == _metrics(resumed.history)
    assert [h["lr"] for h in whole.history] == [0.005, 0.005, 0.0025]
    assert whole.best_metric == resumed.best_metric
    # a different seed gives a different run
    other = train(TrainConfig.from_params({**params, "seed": 1, "epochs": 1}), tmp_path / "other")
    assert _metrics(other.history)[0] != _metrics(whole.history)[0]


def test_supcon_selection_without_probe_is_lowest_loss(tiny_processed, tmp_path, caplog):
    with caplog.at_level("INFO", logger="vfnb.training.engine"):
        result = train(_params(tiny_processed, mode="supcon", epochs=2, probe="none"), tmp_path / "none")
    assert result.selected_by == "train_loss"
    assert all(h["val_macro_f1"] is None for h in result.history)
    losses = [h["loss"] for h in result.history]
    assert result.best_metric == min(losses)
    best = load_checkpoint_dict(result.best_checkpoint)
    assert best["epoch"] == 1 + losses.index(min(losses)) and best["best_metric"] == min(losses)
    # what the run was trained on travels in every checkpoint, with the run's identity
    data, last = best["training_data"], load_checkpoint_dict(result.last_checkpoint)
    assert len(best["run_id"]) == 32 and last["run_id"] == best["run_id"] and last["training_data"] == data
    assert data["vertebrae"] == 30 and sum(data["grade_counts"].values()) == 30 and min(data["grade_counts"].values()) > 0
    assert data["synthetic"] is None  # the tiny dataset records nothing about its origin: never guessed
    assert data["patch_spacing_mm"] == pytest.approx([0.9, 0.9]) and data["hu_percentiles"][0] < data["hu_percentiles"][1]
    assert load_checkpoint(result.best_checkpoint).origin.mode == "supcon"
    # one line per epoch: run, mode, epoch, loss, validation metric, seconds
    lines = [r.getMessage() for r in caplog.records if r.name == "vfnb.training.engine"]
    assert len(lines) == 2 and lines[0].startswith(f"none (supcon) epoch 1/2: loss {losses[0]:.4f}, "
                                                   "val macro-F1 (probe) n/a, ")
    assert lines[1].split(", ")[2].endswith(" s")
    knn = train(_params(tiny_processed, mode="supcon", epochs=1, probe="knn"), tmp_path / "knn")
    assert 0.0 <= knn.history[0]["val_macro_f1"] <= 1.0 and knn.best_metric == knn.history[0]["val_macro_f1"]


def test_run_folder_rules(tiny_processed, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(VfnbError, match="not empty"):
        train(_params(tiny_processed, mode="ce", epochs=1), tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="last.pt"):
        train(None, tmp_path / "nothing", resume=True)
    # a run folder inside the dataset (or the dataset itself) is refused before anything is written
    before = sorted(p.relative_to(tiny_processed) for p in tiny_processed.rglob("*"))
    for inside in (tiny_processed / "runs" / "ce", tiny_processed):
        with pytest.raises(VfnbError, match="lies inside the input dataset"):
            train(_params(tiny_processed, mode="ce", epochs=1), inside)
    assert sorted(p.relative_to(tiny_processed) for p in tiny_processed.rglob("*")) == before


def test_params_validation_names_the_key(tmp_path):
    assert validate_params({})["lr"] == 0.005 and DEFAULT_PARAMS["temperature"] == 0.07
    with pytest.raises(ParamsError, match="'learning_rate'"):
        validate_params({"learning_rate": 0.1})
    for key, value in (("lr", -1), ("epochs", 0), ("mode", "simclr"), ("classifier_init", "zeros"), ("amp", "yes"),
                       ("lr_milestones", [1, "x"]),
                       ("batch_per_grade", 2.5), ("sync_bn", "true"), ("device", "tpu"), ("ce_views", 3)):
        with pytest.raises(ParamsError, match=repr(key)):
            validate_params({key: value})
    assert validate_params({"epochs": 3.0})["epochs"] == 3
    with pytest.raises(ParamsError, match="init_checkpoint"):
        validate_params({"mode": "linear"})
    with pytest.raises(ParamsError, match="batches_per_epoch"):
        validate_params({"batches_per_epoch": 5})
    assert parse_overrides(["lr=0.01", "lr_milestones=[3, 4]", "init_checkpoint=null", "amp=false"]) == {
        "lr": 0.01, "lr_milestones": [3, 4], "init_checkpoint": None, "amp": False}
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(ParamsError, match="'lrr'"):
        parse_overrides(["lrr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: ce\nepochz: 3\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml.*'epochz'"):
        train_from_cli([bad], [], tmp_path / "run")
    bad.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(VfnbError, match="bad.yaml"):
        train_from_cli([bad], [], tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_train_and_resume(tiny_processed, tmp_path, capsys):
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump(_params(tiny_processed, mode="ce", epochs=1)))
    out = tmp_path / "run"
    assert cli_main(["train", "--params", str(params_file), "-p", "epochs=1", "--out", str(out)]) == 0
    assert (out / "best.pt").is_file()
    printed = capsys.readouterr()
    assert "wrote" in printed.out
    assert printed.err.count("run (ce) epoch 1/1: loss ") == 1 and "val macro-F1 " in printed.err
    # continue the same run for one more epoch: only 'epochs' changes
    assert cli_main(["train", "--out", str(out), "--resume", "-p", "epochs=2"]) == 0
    assert capsys.readouterr().err.count("run (ce) epoch 2/2") == 1  # one line, however often the CLI ran
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]
    assert cli_main(["train", "--out", str(out), "--resume", "-p", "epochs=3", "-p", "lr=0.1"]) == 2
    assert "'lr'" in capsys.readouterr().err
    assert cli_main(["train", "--params", str(params_file), "-p", "nope=1", "--out", str(tmp_path / "x")]) == 2
    assert "'nope'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device_param", ["auto", "cuda", "cuda:1"])
def test_cuda_device_always_carries_an_index(device_param, monkeypatch):
    """torch.cuda.set_device refuses a bare torch.device("cuda"): found on an H200 with device: cuda."""
    from vfnb.training.distributed import Processes as _Dist

    chosen = []

    def set_device(device):
        assert isinstance(device, torch.device) and device.index is not None, device
        chosen.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = _Dist(device_param)
    assert ctx.device == chosen[0] == torch.device("cuda", 1 if device_param == "cuda:1" else 0)
    # with more processes per node than GPUs, a clear error instead of an invalid device
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ParamsError, match="LOCAL_RANK 3 but this machine has 2 CUDA device"):
        _Dist("auto")


def test_the_process_group_timeout_is_bounded_and_checked(monkeypatch):
    """torchrun processes wait a bounded time for a peer at a collective; VFNB_DIST_TIMEOUT_S sets it."""
    from vfnb.training.distributed import PROCESS_GROUP_TIMEOUT_S, process_group_timeout

    monkeypatch.delenv("VFNB_DIST_TIMEOUT_S", raising=False)
    assert process_group_timeout().total_seconds() == PROCESS_GROUP_TIMEOUT_S
    monkeypatch.setenv("VFNB_DIST_TIMEOUT_S", "90")
    assert process_group_timeout().total_seconds() == 90
    for bad in ("0", "-5", "soon", "inf", "nan"):
        monkeypatch.setenv("VFNB_DIST_TIMEOUT_S", bad)
        with pytest.raises(ParamsError, match=f"VFNB_DIST_TIMEOUT_S={bad!r}: expected a number of seconds > 0"):
            process_group_timeout()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_with_bf16_autocast_and_channels_last(tiny_processed, tmp_path):
    """The GPU path: bf16 autocast and channels-last-3d (both "auto" = on for CUDA), then finetune from it."""
    params = _params(tiny_processed, mode="joint", epochs=2, device="cuda", amp="auto", channels_last="auto")
    run = train(params, tmp_path / "joint")
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) and h["loss"] > 0 for h in run.history)
    model = load_checkpoint(run.last_checkpoint)  # saved from the GPU, loads on the CPU
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    x = torch.randn(4, 3, 16, 16, 16)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32 (TF32 convolutions round to 10 bits)
    try:
        with torch.no_grad():
            cpu_logits, cpu_proj = model(x)
            gpu = model.to("cuda").to(memory_format=torch.channels_last_3d)
            gpu_logits, gpu_proj = gpu(x.to("cuda").contiguous(memory_format=torch.channels_last_3d))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    assert torch.allclose(cpu_logits, gpu_logits.float().cpu(), atol=1e-3, rtol=1e-3)
    assert torch.allclose(cpu_proj, gpu_proj.float().cpu(), atol=1e-3, rtol=1e-3)
    # finetune on the GPU starts from the probe fit (features computed on the GPU), a candidate as epoch 0
    fin = train(_params(tiny_processed, mode="finetune", epochs=1, device="cuda",
                        init_checkpoint=str(run.best_checkpoint)), tmp_path / "finetune")
    assert fin.best_epoch in (0, 1) and fin.best_metric >= fin.history[0]["val_macro_f1"]


@pytest.mark.slow
def test_two_cpu_processes_see_different_vertebrae(tiny_processed, tmp_path, subprocess_env):
    params_file = tmp_path / "p.yaml"
    # 7-8 vertebrae per grade: replacement mode gives each rank 2 steps of 3 per grade, distinct within a step
    params_file.write_text(yaml.safe_dump(_params(tiny_processed, mode="joint", epochs=1, epoch_mode="replacement",
                                                  batches_per_epoch=2, log_names=True, sync_bn=True)))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "vfnb", "train", "--params", str(params_file), "--out", str(out)]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert len(json.loads((out / "history.json").read_text())) == 1
    logs = [[json.loads(line) for line in (out / f"names.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [len(log) for log in logs] == [2, 2]
    for step0, step1 in zip(*logs):
        assert step0["step"] == step1["step"]
        assert len(step0["names"]) == 12 and not set(step0["names"]) & set(step1["names"])
    assert proc.stdout.count("wrote") == 1  # only rank 0 prints


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tiny_processed, tmp_path, subprocess_env):
    """SIGKILL a real `vfnb train` process once it has written a checkpoint; `--resume` finishes it."""
    import signal
    import time

    params = _params(tiny_processed, mode="joint", epochs=8, epoch_mode="replacement", batches_per_epoch=4)
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump(params))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vfnb", "train", "--params", str(params_file), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (out / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    epoch_at_kill = load_checkpoint_dict(out / "last.pt")["epoch"]
    assert 1 <= epoch_at_kill < 8
    resumed = subprocess.run(cmd + ["--resume"], env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = train(params, tmp_path / "whole")
    a = load_checkpoint(whole.last_checkpoint).state_dict()
    b = load_checkpoint(out / "last.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == list(range(1, 9))
