"""A run folder's records rewritten with paths relative to the folder it was made from, nothing else changed."""

import json

import torch

from vfnb.study.portable import make_portable


def test_machine_paths_become_relative_and_everything_else_stays(tmp_path):
    root = tmp_path / "repo"
    run = root / "results" / "r"
    (run / "figures").mkdir(parents=True)
    (run / "dataset.json").write_text(json.dumps({"processed": f"{root}/data/x", "auc": 0.9512}))
    (run / "params.yaml").write_text(f"data_dir: {root}/data\nseed: 0\n")
    (run / "run.log").write_text(f"study complete: {root}/results/r/index.html; cwd {root}\n")
    png = bytes(range(256)) + str(root).encode()
    (run / "figures" / "a.png").write_bytes(png)
    changed = make_portable(run, root)
    assert sorted(p.name for p in changed) == ["dataset.json", "params.yaml", "run.log"]
    assert json.loads((run / "dataset.json").read_text()) == {"processed": "data/x", "auc": 0.9512}
    assert (run / "params.yaml").read_text() == "data_dir: data\nseed: 0\n"
    assert (run / "run.log").read_text() == "study complete: results/r/index.html; cwd .\n"
    assert (run / "figures" / "a.png").read_bytes() == png
    assert make_portable(run, root) == []  # nothing left to rewrite


def test_a_checkpoints_recorded_paths_become_relative_and_its_tensors_stay(tmp_path):
    root = tmp_path / "repo"
    run = root / "results" / "r" / "runs" / "supcon_linear"
    run.mkdir(parents=True)
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7}
    params = {"dataset": f"{root}/data/x", "init_checkpoint": f"{root}/results/r/runs/supcon/best.pt", "lr": 0.01,
              "tag": "synth-f0"}
    torch.save({"model": weights, "params": params, "epoch": 3}, run / "best.pt")
    assert make_portable(root / "results" / "r", root) == [run / "best.pt"]
    saved = torch.load(run / "best.pt", weights_only=True)
    assert saved["params"] == {"dataset": "data/x", "init_checkpoint": "results/r/runs/supcon/best.pt", "lr": 0.01,
                               "tag": "synth-f0"}
    assert torch.equal(saved["model"]["w"], weights["w"]) and saved["epoch"] == 3
    assert make_portable(root / "results" / "r", root) == []
