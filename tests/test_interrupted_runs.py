"""Real runs stopped part-way, then run again: killed (SIGKILL), interrupted (Ctrl-C, SIGINT), out of disk
(a file-size limit) and a torchrun worker lost; each time the rerun with the same command must finish and
agree with an uninterrupted run, and nothing half-written may pass for finished.

Every case is a real ``vfnb`` process (a signal cannot be sent to a run in the test's own process),
marked ``integration``: ``make test-integration`` runs them, ``make test`` leaves them out. To keep them
affordable, the studies run ``params/smoke.yaml`` cut down further (:data:`TINY_STUDY`), share one
SynthSpine folder, and each kill comes as soon as ``run.log`` names the notebook it targets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "params" / "smoke.yaml"
NOTEBOOKS = ("00_data_exploration", "01_supcon_pretraining", "02_finetuning", "03_evaluation")
# smoke.yaml with the least training and reporting that still runs every notebook and every model
TINY_STUDY = {"supcon_epochs": 1, "supcon_warmup_epochs": 0, "linear_epochs": 1, "finetune_epochs": 1,
              "ce_epochs": 1, "batches_per_epoch": 1, "n_boot": 10, "occlusion_checked": 0, "n_errors_shown": 0,
              "scans_shown": 0, "patches_per_grade": 1, "height_patches_per_grade": 3}
RUN_TIMEOUT = 900  # seconds one study may take on a loaded 2-core machine

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------ processes
def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Linux /proc), so a test can check that none outlives a kill."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


class Run:
    """A ``vfnb`` process in a session of its own (as a shell job is), its console output in a file."""

    def __init__(self, args: list[str], log: Path, env: dict, preexec=None, cwd: Path | None = None):
        self.log = log
        self._fh = open(log, "wb")
        def setup():
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, even under a runner that ignores it
            if preexec is not None:
                preexec()

        self.proc = subprocess.Popen([sys.executable, "-m", *args], stdout=self._fh, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True, preexec_fn=setup, cwd=cwd)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = RUN_TIMEOUT) -> None:
        self.wait_until(lambda: re.search(pattern, self.text(), re.MULTILINE), f"console line {pattern!r}", timeout)

    def wait_until(self, condition, what: str, timeout: float = RUN_TIMEOUT) -> None:
        _wait_until(condition, timeout, what, self.proc, self.log)

    def stop(self, sig: int, settle: float = 1.5) -> set[int]:
        """Send ``sig`` ``settle`` s from now: SIGINT to the process group (a terminal's Ctrl-C), SIGKILL to the
        main process alone (a kill -9, the OOM killer); wait for it; return the processes it had started."""
        time.sleep(settle)  # into the step, not at its first line
        assert self.proc.poll() is None, f"ended before it could be stopped:\n{self.text()[-3000:]}"
        children = _descendants(self.proc.pid)
        if sig == signal.SIGINT:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(sig)
        self.finish(timeout=120)
        return children

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._fh.close()


def _assert_none_left(children: set[int], within: float = 30.0) -> None:
    """What the stopped run had started (the notebook kernel, pool workers) ends on its own, in bounded time."""
    _wait_until(lambda: not any(_alive(p) for p in children), within,
                f"processes {sorted(p for p in children if _alive(p))} left running")


def _one_line_interrupt(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("interrupted"), text[-2000:]


# ------------------------------------------------------------------ studies
def _study_args(out: Path, data_dir: Path, *extra: str) -> list[str]:
    args = ["vfnb", "study", "--params", str(SMOKE), "-p", f"data_dir={data_dir}", "--out", str(out)]
    for key, value in TINY_STUDY.items():
        args += ["-p", f"{key}={value}"]
    return [*args, *extra]


def _without_run_ids(value):
    """``value`` without its ``run_id`` entries: each training run gets a fresh random one."""
    if isinstance(value, dict):
        return {k: _without_run_ids(v) for k, v in value.items() if k != "run_id"}
    if isinstance(value, list):
        return [_without_run_ids(v) for v in value]
    return value


def _numbers(run_dir: Path) -> dict:
    """What a study concluded: ``metrics.json`` and the operating points (training runs' ids aside)."""
    return _without_run_ids({"metrics": json.loads((run_dir / "metrics.json").read_text()),
                             "points": json.loads((run_dir / "operating_points.json").read_text())})


def _staging_of(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".tmp-{out.name}-*"))


def _data_root(data_dir: Path) -> Path:
    return data_dir / "synthspine-s0-n12"


def _assert_data_cache_consistent(data_dir: Path) -> None:
    """Each cached SynthSpine folder is either absent or complete with its manifest; no other name could be
    taken for a complete one."""
    root = _data_root(data_dir)
    if not root.exists():
        return
    original, processed = root / "original", root / "processed-32"
    if original.exists():
        assert (original / "synth.json").is_file() and (original / "annotation.yaml").is_file()
        assert len(list((original / "img").glob("*.nii.gz"))) == 12
    if processed.exists():
        assert (processed / "synth_processed.json").is_file() and (processed / "patches.csv").is_file()
    for entry in root.iterdir():
        assert entry.name in ("original", "processed-32") or entry.name.startswith("."), entry


@pytest.fixture(scope="module")
def study_data(tmp_path_factory, subprocess_env_module) -> dict:
    """The SynthSpine cache of this module, made by runs killed while making it, then an uninterrupted study.

    1. Ctrl-C while SynthSpine is generated, 2. SIGKILL while its patches are pre-processed; after each the
    cache holds nothing a rerun would take as complete. 3. An uninterrupted run: the reference numbers.
    """
    base = tmp_path_factory.mktemp("interrupted-studies")
    data_dir, env = base / "data", subprocess_env_module
    out = base / "reference"

    run = Run(_study_args(out, data_dir), base / "gen.log", env)
    run.wait_for(r"generating 12 CTs")
    run.wait_until(lambda: list(data_dir.rglob("img/*.nii.gz")), "a first SynthSpine case written", 300)
    children = run.stop(signal.SIGINT, settle=0.5)
    assert run.proc.returncode != 0
    _one_line_interrupt(run.text())
    _assert_none_left(children)
    _assert_data_cache_consistent(data_dir)
    assert not (_data_root(data_dir) / "original").exists(), "generation was interrupted, yet it looks complete"
    assert not out.exists() and not _staging_of(out)

    run = Run(_study_args(out, data_dir), base / "pre.log", env)
    root = _data_root(data_dir)
    run.wait_until(lambda: list(root.glob(".tmp-processed-32-*/**/*.nii.gz")), "pre-processing started", 600)
    children = run.stop(signal.SIGKILL, settle=0.3)
    assert run.proc.returncode == -signal.SIGKILL
    _assert_none_left(children)
    _assert_data_cache_consistent(data_dir)
    assert (root / "original").is_dir() and not (root / "processed-32").exists()

    run = Run(_study_args(out, data_dir), base / "reference.log", env)
    assert run.finish() == 0, run.text()[-3000:]
    assert not list(root.glob(".tmp-*")), "the killed pre-processing's staging folder was not cleared"
    _assert_data_cache_consistent(data_dir)
    return {"base": base, "data_dir": data_dir, "reference": out, "numbers": _numbers(out)}


@pytest.fixture(scope="module")
def subprocess_env_module() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_a_study_stopped_in_each_notebook_reruns_to_the_uninterrupted_numbers(study_data, subprocess_env_module):
    """One --out, the same command each time: SIGKILL, then Ctrl-C, in notebook 00, then 01, 02 and 03; then
    left to finish, it gives the numbers of the uninterrupted run (the CPU path is deterministic)."""
    base, data_dir = study_data["base"], study_data["data_dir"]
    out = base / "stopped"
    for i, name in enumerate(NOTEBOOKS):
        for sig in (signal.SIGKILL, signal.SIGINT):
            run = Run(_study_args(out, data_dir), base / f"stopped-{i}-{sig.name}.log", subprocess_env_module)
            run.wait_for(rf"^\[{i + 1}/4\] {name} \.\.\.")
            children = run.stop(sig)
            _assert_none_left(children)
            if sig == signal.SIGINT:
                assert run.proc.returncode == 130
                _one_line_interrupt(run.text())
                assert "vfnb study stopped before it finished" in run.text()
                assert not _staging_of(out), "an interrupted run removes its staging folder"
            else:
                assert run.proc.returncode == -signal.SIGKILL
                assert _staging_of(out), "the killed run's staging folder is expected beside --out"
            assert not out.exists(), f"stopped in {name}, yet {out} exists"
            assert not out.with_name(out.name + ".failed").exists(), "an interrupted run is not a failed one"
            _assert_data_cache_consistent(data_dir)
    run = Run(_study_args(out, data_dir), base / "stopped-rerun.log", subprocess_env_module)
    assert run.finish() == 0, run.text()[-3000:]
    assert not _staging_of(out) and not out.with_name(out.name + ".failed").exists()
    for name in NOTEBOOKS:
        assert (out / f"{name}.html").is_file() and (out / f"{name}.ipynb").is_file()
    assert "study complete" in (out / "run.log").read_text()
    assert _numbers(out) == study_data["numbers"]


def _limit_file_size(limit: int):
    def preexec():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_file_size_limit_while_the_report_is_written_names_the_file_and_keeps_the_previous_run(
        study_data, subprocess_env_module):
    base, out = study_data["base"], study_data["reference"]
    before = _tree(out)
    # room for every file notebook 00 writes (its executed notebook the largest), not for its rendered page
    page, notebook = (len(before[f"00_data_exploration.{ext}"]) for ext in ("html", "ipynb"))
    assert notebook < page
    run = Run(_study_args(out, study_data["data_dir"], "--overwrite"), base / "fsize.log", subprocess_env_module,
              preexec=_limit_file_size((notebook + page) // 2))
    code = run.finish()
    text = run.text()
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: ") and "File too large" in last, last
    assert last.startswith(f"error: {out / '00_data_exploration.html'}: File too large"), last
    assert _tree(out) == before, "the previous run was changed"
    assert not _staging_of(out) and not out.with_name(out.name + ".failed").exists()
    assert not [p for p in out.parent.iterdir()
                if p.name.startswith(f".tmp-{out.name}-") or (p.name.startswith(".old-") and p.name.endswith(out.name))]


# ------------------------------------------------------------------ sweeps
def _sweep_file(folder: Path, data_dir: Path) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"study_params": [str(SMOKE)],
                                    "overrides": {**TINY_STUDY, "data_dir": str(data_dir)},
                                    "grid": {"seed": [0, 1]}}))
    return path


def _sweep_table(out: Path) -> tuple[dict, list[str]]:
    """The sweep's numbers (``sweep.json`` but the time it was written) and the tables of its page."""
    doc = _without_run_ids(json.loads((out / "sweep.json").read_text()))
    doc.pop("written_utc")
    return doc, re.findall(r"<table.*?</table>", (out / "index.html").read_text(), re.DOTALL)


def test_a_sweep_stopped_while_a_point_runs_reuses_finished_points_and_redoes_the_stopped_one(
        study_data, subprocess_env_module):
    """An uninterrupted two-point sweep; then a sweep holding its finished first point (copied, as from another
    machine's --only job) stopped by Ctrl-C, then by SIGKILL, while its second point runs; then rerun."""
    import shutil

    base = study_data["base"]
    sweep = _sweep_file(base, study_data["data_dir"])
    whole = base / "sweep-whole"
    run = Run(["vfnb", "sweep", "--params", str(sweep), "--out", str(whole)], base / "sweep-whole.log",
              subprocess_env_module)
    assert run.finish(2 * RUN_TIMEOUT) == 0, run.text()[-3000:]

    out = base / "sweep-stopped"
    shutil.copytree(whole / "runs" / "seed-0", out / "runs" / "seed-0")
    finished = out / "runs" / "seed-0" / "metrics.json"
    kept = (finished.read_bytes(), finished.stat().st_mtime_ns)
    args = ["vfnb", "sweep", "--params", str(sweep), "--out", str(out)]
    for k, sig in enumerate((signal.SIGINT, signal.SIGKILL)):
        run = Run(args, base / f"sweep-stopped-{k}.log", subprocess_env_module)
        run.wait_for(r"^\[2/2\] seed-1 \.\.\.")
        run.wait_for(r"00_data_exploration \.\.\.")
        children = run.stop(sig, settle=5)
        _assert_none_left(children)
        assert run.proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
        assert "seed-0: finished before, kept" in run.text()
        if sig == signal.SIGINT:
            _one_line_interrupt(run.text())
            assert "vfnb sweep stopped while seed-1 ran" in run.text()
        assert not (out / "runs" / "seed-1").exists()
    run = Run(args, base / "sweep-stopped-rerun.log", subprocess_env_module)
    assert run.finish() == 0, run.text()[-3000:]
    assert "seed-0: finished before, kept" in run.text()
    assert (finished.read_bytes(), finished.stat().st_mtime_ns) == kept
    assert _numbers(out / "runs" / "seed-1") == _numbers(whole / "runs" / "seed-1")
    assert _sweep_table(out) == _sweep_table(whole)


# ------------------------------------------------------------------ torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(torchrun_pid: int) -> dict[int, int]:
    """RANK -> pid of the training processes torchrun started."""
    ranks = {}
    for pid in _descendants(torchrun_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"vfnb" in cmdline and b"train" in cmdline:
            for item in environ:
                if item.startswith(b"RANK="):
                    ranks[int(item[5:])] = pid
    return ranks


def _ddp_params(dataset: Path, epochs: int) -> dict:
    return {"dataset": str(dataset), "tag": "t0", "mode": "joint", "epochs": epochs, "epoch_mode": "replacement",
            "batches_per_epoch": 2, "cube_size": 16, "backbone": "resnet10",
            "backbone_kwargs": {"block_inplanes": [4, 8, 8, 16]}, "workers": 0, "threads": 1,
            "eval_batch_size": 32, "progress": False, "device": "cpu"}


def _torchrun(params_file: Path, out: Path, log: Path, env: dict) -> Run:
    return Run(["torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                f"--master_port={_free_port()}", "-m", "vfnb", "train", "--params", str(params_file),
                "--out", str(out)], log, env)


def test_a_torchrun_worker_that_hangs_ends_the_run_after_the_process_group_timeout(
        tiny_processed, tmp_path, subprocess_env_module):
    """A peer stopped (SIGSTOP), not dead: no socket closes, so only the collective timeout ends the wait."""
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump(_ddp_params(tiny_processed, epochs=200)))
    out = tmp_path / "ddp"
    run = _torchrun(params_file, out, tmp_path / "ddp.log", {**subprocess_env_module, "VFNB_DIST_TIMEOUT_S": "20"})
    run.wait_until(lambda: (out / "last.pt").is_file(), "a first checkpoint", 300)
    ranks = _ranks(run.proc.pid)
    children = _descendants(run.proc.pid)
    os.kill(ranks[1], signal.SIGSTOP)
    start = time.monotonic()
    try:
        code = run.finish(timeout=240)
        elapsed = time.monotonic() - start
        print(f"torchrun exited {code} {elapsed:.1f} s after rank 1 was stopped (timeout 20 s)")
        assert code != 0 and elapsed < 240
        _assert_none_left(children, within=60)
    finally:  # never leave a stopped process behind, whatever the outcome
        for pid in children | {run.proc.pid}:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not list(out.glob(".tmp-*")), "a half-written checkpoint was left"


def test_a_torchrun_worker_killed_mid_training_ends_the_run_in_bounded_time(
        tiny_processed, tmp_path, subprocess_env_module):
    params = _ddp_params(tiny_processed, epochs=200)
    params_file = tmp_path / "p.yaml"
    params_file.write_text(yaml.safe_dump(params))

    def torchrun(out: Path, log: Path) -> Run:
        return _torchrun(params_file, out, log, subprocess_env_module)

    out = tmp_path / "ddp"
    run = torchrun(out, tmp_path / "ddp.log")
    run.wait_until(lambda: (out / "last.pt").is_file(), "a first checkpoint", 300)
    ranks = _ranks(run.proc.pid)
    assert set(ranks) == {0, 1}, ranks
    children = _descendants(run.proc.pid)
    os.kill(ranks[1], signal.SIGKILL)
    start = time.monotonic()
    code = run.finish(timeout=180)
    elapsed = time.monotonic() - start
    print(f"torchrun exited {code} {elapsed:.1f} s after rank 1 was killed")
    assert code != 0 and elapsed < 180
    _assert_none_left(children, within=60)
    assert not list(out.glob(".tmp-*")), "a half-written checkpoint was left"
    from vfnb.models.checkpoints import load_checkpoint_dict

    assert load_checkpoint_dict(out / "last.pt")["epoch"] >= 1  # what is there loads: it was written whole

    fresh = tmp_path / "ddp-again"
    params_file.write_text(yaml.safe_dump({**params, "epochs": 1}))
    again = torchrun(fresh, tmp_path / "again.log")
    assert again.finish(timeout=300) == 0, again.text()[-3000:]
    assert (fresh / "best.pt").is_file() and (fresh / "last.pt").is_file()
