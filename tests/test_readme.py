"""Every command in README.md works as written, on tiny data.

The README's fenced code blocks are extracted in order. Each must be preceded (blank
lines allowed) by a marker comment saying what this test does with it:

    <!-- readme-test: run | OLD -> NEW | ... -->
        run the block with bash (``set -e``) in one work folder shared by every block,
        in README order, ``vfnb`` being this Python's ``-m vfnb``;
    <!-- readme-test: run verse | ... -->
        the same, after writing a tiny fake VerSe release: ``verse/`` (rawdata and
        derivatives of a few subjects) and its grade table ``verse_grades.csv``;
    <!-- readme-test: run dicom | ... -->
        the same, after writing a SynthSpine CT as a DICOM series (``my_ct_dicom/``) and the
        TotalSegmentator ``total`` map of it (``my_ct_total.nii.gz``);
    <!-- readme-test: file NAME -->
        write the block to NAME in the work folder (a file later commands read);
    <!-- readme-test: check | ... -->
        a command too costly to run here (a whole study, a sweep, a make target, several
        processes): each line is checked without running it. ``vfnb study / sweep /
        train`` (also after ``torchrun ... -m vfnb``): parsed by vfnb's own argument
        parser, the parameters merged and validated as the command validates them before
        it starts, and a named processed dataset must hold the split lists it needs.
        ``make ...``: ``make -n -B`` with the same arguments must succeed (the target
        exists and its recipe expands). The smoke study (tests/test_study.py) and the
        sweep tests run the study and sweep code for real;
    <!-- readme-test: skip: REASON -->
        not run (installs into your own Jupyter, starts a server, ...).

``| OLD -> NEW`` replaces text before the block runs or is checked (small sizes for tiny
data). Every OLD must occur in its block, so a substitution cannot go stale silently.
A block without a marker fails the test, so a new README command cannot go untested
unnoticed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->", re.S)
FENCE = re.compile(r"^\s*```(\S*)\s*$")  # indented fences (in lists) count too
CLUSTER_ENV = {"SLURM_ARRAY_TASK_ID": "0"}  # what an array job of the README's cluster example sees


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    kind: str | None = None  # run, file, check, skip
    arg: str = ""  # run: "verse" or ""; file: the name; skip: the reason
    substitutions: list[tuple[str, str]] = field(default_factory=list)

    def where(self) -> str:
        return f"README.md line {self.line}"

    def substituted(self) -> str:
        text = self.text
        for old, new in self.substitutions:
            assert old in text, f"{self.where()}: substitution {old!r} -> {new!r} does not occur in the block"
            text = text.replace(old, new)
        return text


def _parse_marker(body: str, where: str) -> tuple[str, str, list[tuple[str, str]]]:
    head, *subs = [part.strip() for part in body.split(" | ")]
    kind, _, arg = head.partition(" ")
    if kind == "skip:":
        kind, arg = "skip", arg.strip()
    assert kind in ("run", "file", "check", "skip"), f"{where}: unknown readme-test marker {head!r}"
    assert kind != "skip" or arg, f"{where}: a skip marker must give its reason (skip: REASON)"
    assert kind != "file" or arg, f"{where}: a file marker must name the file (file NAME)"
    assert kind != "run" or arg in ("", "verse", "dicom"), f"{where}: 'run' takes nothing, 'verse' or 'dicom', not {arg!r}"
    pairs = []
    for sub in subs:
        old, sep, new = sub.partition(" -> ")
        assert sep and old, f"{where}: substitution {sub!r} is not 'OLD -> NEW'"
        pairs.append((old, new))
    return kind, arg.strip(), pairs


def _html_comment(lines: list[str], i: int) -> tuple[str, int]:
    """The HTML comment starting on line ``i`` (it may span lines), and the line after it."""
    j = i
    while "-->" not in lines[j] and j + 1 < len(lines):
        j += 1
    return "\n".join(lines[i:j + 1]), j + 1


def _fenced_body(lines: list[str], i: int) -> tuple[str, int]:
    """The text of the fenced block opening on line ``i``, and the line after its closing fence."""
    j = i + 1
    while j < len(lines) and not lines[j].lstrip().startswith("```"):
        j += 1
    return "".join(line + "\n" for line in lines[i + 1:j]), j + 1


def readme_blocks(text: str | None = None) -> list[Block]:
    """The README's fenced blocks with their markers (``kind`` None when a block has none)."""
    lines = (README.read_text() if text is None else text).splitlines()
    blocks, i, pending = [], 0, None  # pending: (marker text, its line) waiting for its block
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            body, after = _fenced_body(lines, i)
            block = Block(line=i + 1, lang=fence.group(1), text=body)
            if pending is not None:
                block.kind, block.arg, block.substitutions = _parse_marker(*pending)
            blocks.append(block)
            i, pending = after, None
        elif lines[i].lstrip().startswith("<!--"):
            comment, after = _html_comment(lines, i)
            found = MARKER.search(comment)
            pending = (found.group(1), f"README.md line {i + 1}") if found else pending
            i = after
        else:
            if lines[i].strip():
                pending = None  # a marker applies only to the block right after it
            i += 1
    return blocks


# ------------------------------------------------------------------ the markers themselves

def test_every_readme_block_has_a_marker():
    blocks = readme_blocks()
    assert blocks, "README.md has no code blocks"
    unmarked = [f"{b.where()} ({b.text.splitlines()[0] if b.text.strip() else 'empty'})" for b in blocks if b.kind is None]
    assert not unmarked, ("code blocks without a '<!-- readme-test: ... -->' marker (see tests/test_readme.py): "
                          + "; ".join(unmarked))
    for b in blocks:
        b.substituted()  # every substitution applies


def test_marker_parsing():
    text = ("intro\n<!-- readme-test: run | a=1 -> a=2 -->\n\n```bash\nx a=1\n```\n"
            "<!-- readme-test: skip: no reason here -->\ntext in between\n```bash\ny\n```\n"
            "<!-- readme-test: file my.yaml -->\n```yaml\nk: v\n```\n")
    run, unmarked, written = readme_blocks(text)
    assert (run.kind, run.substitutions, run.substituted()) == ("run", [("a=1", "a=2")], "x a=2\n")
    assert unmarked.kind is None  # prose between a marker and its block cancels the marker
    (indented,) = readme_blocks("- a list item:\n\n  ```bash\n  z\n  ```\n")
    assert indented.kind is None and indented.text == "  z\n"
    assert (written.kind, written.arg, written.text) == ("file", "my.yaml", "k: v\n")
    with pytest.raises(AssertionError, match="does not occur"):
        Block(1, "bash", "x\n", "run", "", [("gone", "y")]).substituted()
    with pytest.raises(AssertionError, match="unknown readme-test marker"):
        readme_blocks("<!-- readme-test: runn -->\n```bash\nx\n```\n")


# ------------------------------------------------------------------ the install routes

def _make_dry_run(*args: str) -> str:
    done = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"make -n -B {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def _torch_install_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "pip install" in line and "torch==" in line]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_torch_routes():
    """Default: torch==2.13.0 from the configured index; TORCH_INDEX adds --index-url to that line only."""
    default = _make_dry_run("install")
    line = _torch_install_line(default)
    assert line.rstrip().endswith("torch==2.13.0") and "--index-url" not in default
    cpu = _make_dry_run("install", "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert _torch_install_line(cpu).rstrip().endswith("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert cpu.count("--index-url") == 1  # the other packages keep the usual index
    assert "-r requirements.in -c requirements.lock" in cpu


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_runs_as_root():
    """JupyterLab refuses root without --allow-root: `make lab` adds it exactly when run as root."""
    lab = [line for line in _make_dry_run("lab").splitlines() if "jupyter lab" in line]
    assert len(lab) == 1
    assert ("--allow-root" in lab[0]) == (os.geteuid() == 0)


# ------------------------------------------------------------------ checking costly commands

def _commands(text: str, env: dict) -> list[list[str]]:
    """Shell lines of a block as argument lists: continuations joined, comments dropped, $VARS expanded."""
    joined = re.sub(r"\\\n", " ", text)
    commands = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words:
                commands.append([re.sub(r"\$(\w+)", lambda m: env[m.group(1)], w) for w in words])
    return commands


def _check_split_list(dataset, tag, split: str, where: str) -> None:
    from vfnb.data.processed import read_file_list

    if dataset == "synthspine":
        return  # generated on first use
    names = read_file_list(Path(dataset), split, tag)  # DatasetError naming the file when absent
    assert names, f"{where}: {dataset}: the {split} list of tag {tag!r} is empty"


def _check_vfnb(argv: list[str], where: str) -> None:
    """What the command checks before it starts work, without starting it."""
    from vfnb.cli import build_parser

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: vfnb {' '.join(argv)}: the argument parser refused it (exit {exc.code})")
    if args.command == "study":
        from vfnb.study import merge_params, validate_study_params

        params = merge_params(args.params, args.param)
        validate_study_params(params)
        _check_split_list(params["dataset"], params["tag"], "test", where)
    elif args.command == "sweep":
        from vfnb.study import merge_params, validate_study_params
        from vfnb.sweep import load_sweep, select_points

        plan = load_sweep(args.params, args.param)
        for _, point in select_points(plan, args.only) if args.only else plan.points:
            params = {**merge_params(plan.study_params), **plan.overrides, **point}
            validate_study_params(params)
    elif args.command == "train":
        from vfnb.training.config import load_params_files, parse_overrides, validate_params

        params = {**load_params_files(args.params), **parse_overrides(args.param)}
        validate_params(params)
        _check_split_list(params["dataset"], params.get("tag", "default"), "train", where)
    else:
        pytest.fail(f"{where}: 'vfnb {args.command}' is cheap enough to run: mark its block 'run'")


def _check_block(block: Block, env: dict) -> None:
    for words in _commands(block.substituted(), env):
        where = f"{block.where()}: {' '.join(words)}"
        if words[0] == "vfnb":
            _check_vfnb(words[1:], where)
        elif words[0] == "torchrun":
            module = words.index("-m") + 1 if "-m" in words else len(words)
            assert words[module:module + 1] == ["vfnb"], f"{where}: expected torchrun ... -m vfnb ..."
            _check_vfnb(words[module + 1:], where)
        elif words[0] == "make":
            if shutil.which("make") is not None:
                _make_dry_run(*words[1:])
        else:
            pytest.fail(f"{where}: no way to check {words[0]!r}; run the block, or mark it skip with a reason")


# ------------------------------------------------------------------ running cheap commands

def _write_verse_release(work: Path) -> None:
    """A tiny fake VerSe release laid out as published (``verse/dataset-verse19training``: BIDS names,
    float32 label maps, centroid files) and its wide grade table (``<level>_fx-g`` and ``_fx-s`` columns)."""
    import json

    from vfnb.io import save_nifti

    rows = ["verse_ID,sex,T11_fx-g,T11_fx-s,T12_fx-g,T12_fx-s,L1_fx-g,L1_fx-s"]
    for i in range(6):
        subject = f"sub-verse{i:03d}"
        ct = np.full((24, 24, 40), -50, np.int16)
        seg = np.zeros(ct.shape, np.float32)  # VerSe stores many label maps as floating point
        for k, label in enumerate((18, 19, 20)):  # T11, T12, L1 stacked up the z axis, L1 lowest
            z0 = 4 + 12 * (2 - k)
            ct[6:18, 6:18, z0:z0 + 9] = 600
            seg[6:18, 6:18, z0:z0 + 9] = label
        affine = np.diag([1.0, 1.0, 1.0, 1.0])
        release = work / "verse" / "dataset-verse19training"
        save_nifti(release / "rawdata" / subject / f"{subject}_ct.nii.gz", ct, affine)
        save_nifti(release / "derivatives" / subject / f"{subject}_seg-vert_msk.nii.gz", seg, affine)
        centroids = [{"direction": ["R", "A", "S"]}] + [
            {"label": label, "X": 12.0, "Y": 12.0, "Z": 8.0 + 12 * (2 - k)} for k, label in enumerate((18, 19, 20))]
        (release / "derivatives" / subject / f"{subject}_seg-subreg_ctd.json").write_text(json.dumps(centroids))
        grades = (0, i % 4, 0) if i % 2 else (0, 0, 0)
        rows.append(f"{i}," + "FM"[i % 2] + "".join(f",{g}," for g in grades))
    (work / "verse_grades.csv").write_text("\n".join(rows) + "\n")


def _write_dicom_ct(work: Path) -> None:
    """A SynthSpine CT written as the scanner's DICOM series (``my_ct_dicom/``), and the map TotalSegmentator's
    ``total`` task would write for it (``my_ct_total.nii.gz``: its vertebra IDs, on dcm2niix's grid)."""
    from dicom_series import write_series
    from vfnb.data.label_schemes import TOTALSEG_TOTAL_VERTEBRAE
    from vfnb.data.resample import onto_grid
    from vfnb.data.scan_input import read_ct
    from vfnb.data.synth.dataset import generate_dataset
    from vfnb.io import load_nifti, save_nifti
    from vfnb.levels import label_from_level

    synth = generate_dataset(work / ".synth-ct", cases=1, seed=5, progress=False)
    ct, affine, _ = load_nifti(synth / "img" / "synth-s5-0000.nii.gz")
    seg, _, _ = load_nifti(synth / "seg" / "synth-s5-0000.nii.gz")
    write_series(work / "my_ct_dicom", ct, affine)
    grid = read_ct(work / "my_ct_dicom")
    verse = onto_grid(seg, affine, grid.image.shape, grid.affine)
    total = np.zeros(verse.shape, np.uint8)
    for ts_id, name in TOTALSEG_TOTAL_VERTEBRAE.items():
        if name.startswith("vertebrae_"):
            total[verse == label_from_level(name.split("_", 1)[1])] = ts_id
    save_nifti(work / "my_ct_total.nii.gz", total, grid.affine)


def _run_block(block: Block, work: Path, env: dict) -> None:
    if block.arg == "verse":
        _write_verse_release(work)
    if block.arg == "dicom":
        _write_dicom_ct(work)
    script = "set -euo pipefail\n" + block.substituted()
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"{block.where()} failed (exit {done.returncode}):\n{script}\n"
                                  f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")


def _work_folder(tmp_path: Path) -> tuple[Path, dict]:
    """A folder standing in for the repository root (params/ linked in), and the environment
    in which ``vfnb`` is this checkout run by this Python."""
    work = tmp_path / "repo"
    (work / ".bin").mkdir(parents=True)
    (work / "params").symlink_to(ROOT / "params")
    shim = work / ".bin" / "vfnb"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vfnb "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, **CLUSTER_ENV}
    env["PATH"] = f"{work / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return work, env


@pytest.mark.slow
def test_readme_commands_work_as_written(tmp_path, monkeypatch):
    work, env = _work_folder(tmp_path)
    monkeypatch.chdir(work)  # the checks read relative paths as the commands would
    for name, value in CLUSTER_ENV.items():
        monkeypatch.setenv(name, value)
    done = []
    for block in readme_blocks():
        assert block.kind is not None, f"{block.where()}: no readme-test marker"
        if block.kind == "run":
            _run_block(block, work, env)
        elif block.kind == "file":
            (work / block.arg).write_text(block.substituted())
        elif block.kind == "check":
            _check_block(block, env)
        done.append(block.kind)
    assert done.count("run") >= 4 and "check" in done
    # what the run blocks left behind is what the README says they write
    assert (work / "my_patches" / "patches.csv").is_file()
    assert (work / "runs" / "linear" / "best.pt").is_file()
    table = (work / "synth-s0-0000_grades.csv").read_text().splitlines()
    assert table[0].startswith("model_notes,label,level,") and "pred,p0,p1,p2,p3,fracture_prob" in table[0]
    assert len(table) > 2
    assert (work / "verse_patches" / "test_file_list.verse.yaml").is_file()
