"""A run folder's records rewritten with paths relative to the folder it was made from, nothing else changed."""

import json

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
