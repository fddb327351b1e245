"""Sweeps on SLURM: the options' checks, points mapped to submitit jobs, failures, Ctrl-C, and a real cluster.

The unit tests need no scheduler: submitit's ``LocalExecutor`` stands in for SLURM (each
job a separate Python process that unpickles and runs the call, as a SLURM job does), and
the study is a stand-in that writes a small ``metrics.json``. The last test runs a
two-point smoke sweep through a real SLURM; it is skipped unless ``sinfo`` answers
(``make slurm-test`` starts a single-node SLURM, runs it, stops SLURM).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vfnb import cli
from vfnb.evaluate import HEADLINE_METRICS
from vfnb.sweep import SweepError, run_sweep
from vfnb.sweep import slurm as sweep_slurm
from vfnb.sweep.slurm import SlurmOptions, check_picklable, parse_time, slurm_options

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def fake_study(params_files, overrides, out, progress=True):
    """A module-level stand-in for run_study (a job must import it): metrics.json per run; seed 1 fails,
    seed 2 sleeps (a job to interrupt)."""
    seed = yaml.safe_load(Path(params_files[-1]).read_text())["seed"]
    if seed == 1 and os.environ.get("VFNB_TEST_FAIL_SEED_1"):
        raise RuntimeError(f"notebook 01 failed for seed {seed}")
    if seed == 2:
        time.sleep(120)
    out = Path(out)
    out.mkdir(parents=True)
    models = {m: {"title": m, "metrics": {k: {"value": 0.5 + 0.1 * seed, "ci_low": 0.0, "ci_high": 1.0, "n_valid": 10}
                                          for k in HEADLINE_METRICS}} for m in ("supcon_linear", "ce")}
    (out / "metrics.json").write_text(json.dumps({"dataset": {"name": "SynthSpine", "synthetic": True},
                                                  "models": models, "pid": os.getpid()}))
    (out / "index.html").write_text("<html></html>")
    return out


def sweep_file(tmp_path: Path, grid: str = "{seed: [0, 1]}", slurm: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"study_params: []\noverrides: {{supcon_epochs: 1, supcon_warmup_epochs: 0}}\ngrid: {grid}\n"
                    + (f"slurm: {slurm}\n" if slurm else ""))
    return path


def local_executor(folder, options, job_name):
    """submitit's LocalExecutor in SLURM's place: a real separate process per job."""
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=options.time_min, cpus_per_task=options.cpus)
    return executor


@pytest.fixture
def job_env(monkeypatch):
    """The jobs' Python finds this checkout and this test module (as a cluster job finds the shared checkout)."""
    paths = [str(ROOT), str(HERE), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sweep_slurm, "POLL_S", 0.2)


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("text, minutes", [(90, 90), ("90", 90), ("1:30", 2), ("02:00:00", 120), ("1-00", 1440),
                                           ("1-02:30", 1590), ("0-00:00:30", 1)])
def test_time_limits_in_sbatch_formats(text, minutes):
    assert parse_time(text, "--slurm-time") == minutes


@pytest.mark.parametrize("options, message", [
    ({"time": "abc"}, r"--slurm-time = 'abc': expected a time limit"),
    ({"time": "0"}, r"--slurm-time = '0': expected a time limit above zero"),
    ({"time": "1:2:3:4"}, r"--slurm-time = '1:2:3:4'"),
    ({"cpus": "0"}, r"--slurm-cpus = '0': expected a whole number of CPUs per job, 1 or more"),
    ({"cpus": "two"}, r"--slurm-cpus = 'two'"),
    ({"mem": "lots"}, r"--slurm-mem = 'lots': expected memory above zero, e.g. 16G"),
    ({"mem": "0G"}, r"--slurm-mem = '0G'"),
    ({"partition": "gpu; rm -rf /"}, r"--slurm-partition = 'gpu; rm -rf /': expected a partition name"),
    ({"nodes": 3}, r"slurm option 'nodes' is unknown; expected partition, time, cpus, mem"),
])
def test_bad_options_are_refused_naming_the_flag(options, message):
    with pytest.raises(SweepError, match=message):
        slurm_options(None, "sweep.yaml", options)


def test_the_sweep_files_block_is_checked_and_flags_win():
    block = {"partition": "short", "time": "01:00:00", "cpus": 4, "mem": "8g"}
    assert slurm_options(block, "s.yaml") == SlurmOptions("short", 60, 4, "8G")
    assert slurm_options(block, "s.yaml", {"time": "30", "cpus": None, "mem": "500"}) == SlurmOptions("short", 30, 4,
                                                                                                      "500M")
    assert slurm_options(None) == SlurmOptions(None, 240, 2, None)
    with pytest.raises(SweepError, match=r"s\.yaml: slurm: time = '1 hour'"):
        slurm_options({"time": "1 hour"}, "s.yaml")
    with pytest.raises(SweepError, match=r"s\.yaml: slurm: unknown key 'gpus'; expected partition, time, cpus, mem"):
        slurm_options({"gpus": 1}, "s.yaml")
    with pytest.raises(SweepError, match=r"s\.yaml: 'slurm' must be a mapping"):
        slurm_options([1], "s.yaml")
    assert SlurmOptions("short", 60, 4, "8G").sbatch_parameters() == {
        "time": 60, "cpus_per_task": 4, "nodes": 1, "ntasks_per_node": 1, "signal_delay_s": 90,
        "partition": "short", "mem": "8G"}
    # a short limit is warned a quarter before its end, not 90 s before (which would be at once)
    assert SlurmOptions(time_min=2).sbatch_parameters()["signal_delay_s"] == 30


def test_a_bad_block_in_the_sweep_file_fails_before_anything_runs(tmp_path, capsys):
    bad = sweep_file(tmp_path, slurm="{cpus: -2}")
    calls = []
    with pytest.raises(SweepError, match=r"sweep\.yaml: slurm: cpus = -2"):  # checked with the local executor too
        run_sweep([bad], out=tmp_path / "sw", progress=False, run_one=lambda *a, **k: calls.append(a))
    assert calls == [] and not (tmp_path / "sw").exists()
    good = sweep_file(tmp_path)
    assert cli.main(["sweep", "--params", str(good), "--out", str(tmp_path / "sw"), "--executor", "slurm",
                     "--slurm-time", "forever"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --slurm-time = 'forever'") and "Traceback" not in err
    assert not (tmp_path / "sw").exists()


def test_without_slurm_commands_the_slurm_executor_refuses_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(SweepError, match=r"--executor slurm: 'sbatch' is not on PATH"):
        run_sweep([sweep_file(tmp_path)], out=tmp_path / "sw", progress=False, run_one=fake_study, executor="slurm")
    assert not (tmp_path / "sw").exists()
    with pytest.raises(SweepError, match=r"executor 'k8s' is unknown; expected one of local, slurm"):
        run_sweep([sweep_file(tmp_path)], out=tmp_path / "sw", run_one=fake_study, executor="k8s")


def test_only_importable_calls_are_sent_to_a_job():
    def closure(*args, **kwargs):
        return None

    with pytest.raises(SweepError, match=r"point p: cannot be sent to a SLURM job .*module-level function"):
        check_picklable(closure, (), "point p")
    main_function = type(closure)(closure.__code__, {"__name__": "__main__"})
    main_function.__module__ = "__main__"
    with pytest.raises(SweepError, match=r"defined in a script \(__main__\)"):
        check_picklable(main_function, (), "point p")
    check_picklable(fake_study, (Path("x"), {"seed": 1}), "point p")  # by reference: imports on the worker


# ------------------------------------------------------------------ points as submitit jobs
def test_each_point_is_one_job_running_run_point_and_a_rerun_submits_nothing(tmp_path, job_env):
    """submitit's DebugExecutor (the job runs in this process, no scheduler) records what each job is given."""
    import submitit

    from vfnb.sweep.runner import run_point

    out = tmp_path / "sw"
    submitted = []

    class Recording(submitit.DebugExecutor):
        def submit(self, fn, *args, **kwargs):
            submitted.append((fn, args))
            return super().submit(fn, *args, **kwargs)

    def executor(folder, options, job_name):
        assert folder == out / "slurm" and options == SlurmOptions(None, 5, 1, None)
        return Recording(folder)

    result = run_sweep([sweep_file(tmp_path, slurm="{time: 5, cpus: 1}")], out=out, progress=False,
                       run_one=fake_study, executor="slurm", make_executor=executor)
    assert result.ok and result.ran == ["seed-0", "seed-1"] and list(result.jobs) == ["seed-0", "seed-1"]
    # one job per point, each running the local executor's function for one point with that point's values
    assert [fn for fn, _ in submitted] == [run_point, run_point]
    assert [(args[1], args[3]["seed"], args[4]) for _, args in submitted] == [("seed-0", 0, fake_study),
                                                                            ("seed-1", 1, fake_study)]
    assert submitted[0][1][3] == {"supcon_epochs": 1, "supcon_warmup_epochs": 0, "seed": 0}
    book = json.loads((out / "slurm" / "jobs.json").read_text())
    assert book["options"] == {"partition": None, "time_min": 5, "cpus": 1, "mem": None}
    for name in ("seed-0", "seed-1"):
        job = book["jobs"][name]
        assert job["job_id"] == result.jobs[name] and job["outcome"] == "finished" and job["worker"]["ran"] is True
        assert Path(job["stderr"]).parent == out / "slurm"  # logs in the sweep folder
        assert (out / "runs" / name / "metrics.json").is_file()
    assert yaml.safe_load((out / "params" / "seed-1.yaml").read_text())["seed"] == 1
    assert (out / "index.html").is_file() and json.loads((out / "sweep.json").read_text())["runs_finished"] == 2

    def refuse(*args):
        raise AssertionError("a finished sweep submitted a job")

    again = run_sweep([sweep_file(tmp_path, slurm="{time: 5, cpus: 1}")], out=out, progress=False,
                      run_one=fake_study, executor="slurm", make_executor=refuse)
    assert again.ok and again.jobs == {} and again.skipped == ["seed-0", "seed-1"]
    assert json.loads((out / "slurm" / "jobs.json").read_text()) == book


@pytest.mark.slow  # the job process imports torch (through vfnb.sweep), which takes a while on a busy 2-core machine
def test_a_failed_job_names_its_log_and_run_folder_and_the_page_has_the_others(tmp_path, job_env, monkeypatch, capsys):
    """A real job process (submitit's LocalExecutor): the call is unpickled and imported there, and fails."""
    out = tmp_path / "sw"
    assert run_sweep([sweep_file(tmp_path)], out=out, only=["seed=0"], progress=False, run_one=fake_study).ok
    monkeypatch.setenv("VFNB_TEST_FAIL_SEED_1", "1")
    result = run_sweep([sweep_file(tmp_path)], out=out, progress=True, run_one=fake_study, executor="slurm",
                       make_executor=local_executor)
    assert result.skipped == ["seed-0"] and result.ran == [] and set(result.failed) == {"seed-1"}
    message, job_id = result.failed["seed-1"], result.jobs["seed-1"]
    assert message.startswith(f"RuntimeError: notebook 01 failed for seed 1 (SLURM job {job_id}; ")
    log = out / "slurm" / f"{job_id}_0_log.err"
    assert f"log {log}; run folder {out / 'runs' / 'seed-1'})" in message and "Traceback" in log.read_text()
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["runs_finished"] == 1 and "seed-1" in doc["runs_failed"]
    assert json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]["seed-1"]["outcome"] == "failed"
    err = capsys.readouterr().err
    assert f"slurm: seed-1: submitted as SLURM job {job_id}" in err and "slurm: 1 jobs: " in err
    assert "[1/1] seed-1 FAILED: RuntimeError" in err


def test_ctrl_c_while_waiting_cancels_the_jobs(tmp_path, job_env, monkeypatch, capsys):
    out = tmp_path / "sw"
    real_sleep = time.sleep

    def interrupt_once_running(seconds):
        book = json.loads((out / "slurm" / "jobs.json").read_text())
        if all(Path(j["stdout"]).exists() for j in book["jobs"].values()):  # both jobs started
            raise KeyboardInterrupt
        real_sleep(0.2)

    monkeypatch.setattr(sweep_slurm.time, "sleep", interrupt_once_running)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([sweep_file(tmp_path, "{seed: [0, 2]}")], out=out, progress=False, run_one=fake_study,
                  executor="slurm", make_executor=local_executor)
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]
    assert jobs["seed-2"]["outcome"] == "cancelled"
    assert "interrupted: cancelled SLURM job(s)" in capsys.readouterr().err
    pid = int(jobs["seed-2"]["job_id"])  # LocalExecutor's job id is the job's process id
    for _ in range(50):
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0:
            break
        real_sleep(0.1)
    else:
        pytest.fail(f"job process {pid} still runs after Ctrl-C")
    assert not (out / "runs" / "seed-2" / "metrics.json").exists()


def test_a_refused_first_submission_stops_before_anything_runs(tmp_path, capsys):
    class Refusing:
        def submit(self, fn, *args):
            raise RuntimeError("sbatch: error: Batch job submission failed:\n Requested node configuration is "
                               "not available")

    out = tmp_path / "sw"
    with pytest.raises(SweepError, match=r"--executor slurm: submission failed: RuntimeError: sbatch: error: Batch "
                                         r"job submission failed: Requested node configuration is not available"):
        run_sweep([sweep_file(tmp_path)], out=out, progress=False, run_one=fake_study, executor="slurm",
                  make_executor=lambda *a: Refusing())
    assert not (out / "runs").exists() and not (out / "slurm" / "jobs.json").exists()


def test_a_rerun_waits_for_the_jobs_an_interrupted_submission_left_running(tmp_path, monkeypatch, capsys):
    """The submitting process was killed, its jobs still run: the same command watches them, submits nothing."""
    import submitit
    from submitit.core.utils import cloudpickle_dump

    from vfnb.sweep.runner import run_point
    from vfnb.sweep.slurm import JobBook

    out = tmp_path / "sw"
    book = JobBook(out / "slurm")
    paths = {name: submitit.SlurmJob(folder=out / "slurm", job_id=job_id).paths
             for name, job_id in (("seed-0", "70"), ("seed-1", "71"))}
    for (name, job_paths), job_id in zip(paths.items(), ("70", "71")):
        book.add(name, type("Submitted", (), {"job_id": job_id, "paths": job_paths})())
    book.save(SlurmOptions())
    polls = []

    def squeue(job_ids):  # the cluster: both running, then each ends after writing its result, as a job does
        polls.append(list(job_ids))
        if len(polls) == 2:
            for name, job_paths in paths.items():
                value = run_point(out, name, [], {"seed": int(name[-1])}, fake_study, False)
                cloudpickle_dump(("success", value), job_paths.result_pickle)
        return {job_id: "RUNNING" if len(polls) < 2 else "COMPLETED" for job_id in job_ids}

    monkeypatch.setattr(sweep_slurm, "queue_states", squeue)
    monkeypatch.setattr(sweep_slurm, "POLL_S", 0.01)
    monkeypatch.setattr("vfnb.sweep.runner.check_cluster", lambda options: None)
    monkeypatch.setattr(submitit.SlurmExecutor,
                        "submit", lambda *a, **k: pytest.fail("submitted a point whose job still runs"))
    result = run_sweep([sweep_file(tmp_path)], out=out, progress=True, run_one=fake_study, executor="slurm")
    assert result.ok and result.ran == ["seed-0", "seed-1"] and result.jobs == {"seed-0": "70", "seed-1": "71"}
    err = capsys.readouterr().err
    assert "seed-0: SLURM job 70 of an earlier run of this sweep is still RUNNING: waiting for it" in err
    assert json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]["seed-1"]["outcome"] == "finished"


def test_the_local_slurm_script_refuses_clearly_without_root_or_packages(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH holding `id` and none of SLURM's or munge's commands
    bin_dir.mkdir()
    (bin_dir / "id").symlink_to(shutil.which("id"))
    script = [shutil.which("bash"), str(ROOT / "scripts" / "slurm-local.sh")]
    env = {"PATH": str(bin_dir), "VFNB_SLURM_DIR": str(tmp_path / "state")}
    done = subprocess.run([*script, "start"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    if os.geteuid() == 0:
        assert "missing munged slurmctld slurmd sinfo scontrol squeue scancel sbatch" in done.stderr
        assert "apt-get install -y slurmctld slurmd munge" in done.stderr
    else:
        assert "must run as root" in done.stderr
    assert not (tmp_path / "state").exists()  # refused before writing anything
    usage = subprocess.run([*script, "restart"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "usage: " in usage.stderr and "start|stop|status" in usage.stderr


# ------------------------------------------------------------------ a real SLURM
def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _slurm_answers(), reason="no SLURM answers (sinfo); `make slurm-test` starts a local one "
                                                 "and runs this test")
def test_a_two_point_smoke_sweep_on_slurm(tmp_path, smoke_data_dir, monkeypatch):
    from vfnb.study import prepare_dataset

    smoke = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    # the dataset first, once: two jobs generating the same SynthSpine at once would race
    prepare_dataset("synthspine", str(smoke_data_dir), "synth-f0", synth_cases=smoke["synth_cases"],
                    patch_size=smoke["patch_size"], synth_folds=smoke["synth_folds"],
                    val_fraction=smoke["val_fraction"])
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"study_params": [str(ROOT / "params" / "smoke.yaml")],
                                     "overrides": {"data_dir": str(smoke_data_dir)}, "grid": {"seed": [0, 1]},
                                     "slurm": {"time": 30, "cpus": 1}}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sweep_slurm, "POLL_S", 2.0)
    out = tmp_path / "sweep"
    result = run_sweep([sweep], out=out, executor="slurm")
    assert result.ok, result.failed
    assert sorted(result.ran) == ["seed-0", "seed-1"] and set(result.jobs) == {"seed-0", "seed-1"}
    book = json.loads((out / "slurm" / "jobs.json").read_text())["jobs"]
    for name, job_id in result.jobs.items():
        assert book[name]["job_id"] == job_id and book[name]["outcome"] == "finished"
        assert book[name]["worker"]["slurm_job_id"] == job_id  # the point ran inside that SLURM job
        assert (out / "runs" / name / "metrics.json").is_file()
    for _ in range(60):  # the result is written before srun and the batch script return: COMPLETING, then COMPLETED
        states = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(result.jobs.values())],
                                capture_output=True, text=True).stdout.split()
        if states.count("COMPLETED") == 2:
            break
        time.sleep(1)
    assert states.count("COMPLETED") == 2, states
    assert (out / "index.html").is_file() and json.loads((out / "sweep.json").read_text())["runs_finished"] == 2
    again = run_sweep([sweep], out=out, executor="slurm")
    assert again.ok and again.jobs == {} and sorted(again.skipped) == ["seed-0", "seed-1"]
    assert json.loads((out / "slurm" / "jobs.json").read_text())["jobs"] == book
    print(f"slurm smoke sweep: jobs {result.jobs}", file=sys.stderr)
