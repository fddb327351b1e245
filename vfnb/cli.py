"""The ``vfnb`` command: thin wrappers over the package API.

Each sub-command parses its arguments and calls one function; errors the user
can fix (:class:`vfnb.errors.VfnbError`) print ``error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .entry import setup_entry_point
from .errors import VfnbError

SYNTH_HELP = (
    "Generate SynthSpine, a SYNTHETIC spine CT dataset (original layout: img/, seg/, "
    "annotation.yaml, plus synth_truth.csv with every vertebra's true heights and grade, and "
    "synth.json). Case k depends only on (seed, k). It models runs of 8-12 vertebrae between T4 and "
    "L5 (rarely T13/L6) with kyphosis/lordosis; vertebral bodies with cortical shell, textured "
    "trabecular bone and endplates; pedicles, laminae, spinous/transverse/articular processes, "
    "canal; discs; ribs; muscle, fat, lungs and air; sizes by level and sex; bone density classes; "
    "Genant-graded wedge/biconcave/crush fractures with faint signs (endplate irregularity and "
    "step, cortical buckling, a dense compaction band) graded against the vertebra's own heights; "
    "normal variation that can look like mild deformity (thoracolumbar wedging, deep endplate "
    "concavities, short-bodied and mildly degenerative normals); partial-volume blur, noise with a "
    "reconstruction kernel's grain and RAS/LPS/permuted/oblique headers; CSF in the canal; aorta, "
    "vena cava, kidneys and bowel gas; seg/ holds segmenter-style label maps (about 1 mm generous, "
    "sometimes bleeding into a disc), seg_exact/ the exact ones the grades were drawn on. "
    "--test-cases adds a fracture-enriched test cohort, --val-cases a fracture-enriched validation cohort. It does NOT model metal, degenerative "
    "disease beyond mild endplate changes, other pathology, contrast, scoliosis, detailed organs, "
    "or scanner artefacts beyond noise and blur. Results on it are results on synthetic data. "
    "'vfnb synth realism --out DIR' measures how close it looks to real CT."
)


#: Examples printed at the end of each sub-command's --help (the README's commands).
EXAMPLES = {
    "synth": ["vfnb synth data/synthspine --cases 12 --seed 0"],
    "preprocess": ["vfnb preprocess data/mydata/original data/mydata/processed --size 64 --workers 2"],
    "split": ["vfnb split data/mydata/processed --tag main", "vfnb split data/mydata/processed --tag cv --folds 5"],
    "check": ["vfnb check data/mydata/original", "vfnb check data/mydata/processed"],
    "import-verse": ["vfnb import-verse ~/verse20 ~/verse20/fracture_grades.csv data/verse/original"],
    "train": ["vfnb train -p mode=ce -p dataset=data/mydata/processed -p tag=main -p epochs=20 --out runs/ce",
              "vfnb train --out runs/ce --resume"],
    "predict": ["vfnb predict --ct scan.nii.gz --seg scan_vertebrae.nii.gz --checkpoint runs/ce/best.pt "
                "--out grades.csv --report scan.html",
                "vfnb predict --ct dicom/series_folder --seg totalseg/ct_vertebrae.nii.gz --out grades.csv"],
    "study": ["vfnb study --params params/smoke.yaml --out results/smoke",
              "vfnb study --params params/default.yaml -p seed=1 --out results/seed1"],
    "sweep": ["vfnb sweep --params params/sweep.yaml --out results/sweep-seeds",
              "vfnb sweep --params params/sweep.yaml --out results/sweep-seeds --only seed=2",
              "vfnb sweep --params params/sweep.yaml --out results/sweep-seeds --executor slurm --slurm-time 1:00:00"],
}


def _examples(command: str, before: str = "") -> str:
    lines = "\n".join(f"  {line}" for line in EXAMPLES[command])
    return (before + "\n\n" if before else "") + f"examples:\n{lines}"


def _cmd_synth(a):
    from .data.synth import generate_dataset

    out = generate_dataset(a.out, cases=a.cases, seed=a.seed, workers=a.workers, overwrite=a.overwrite,
                           test_cases=a.test_cases, val_cases=a.val_cases)
    print(f"wrote {out}")


def _cmd_preprocess(a):
    from .data.preprocess import preprocess_dataset

    out = preprocess_dataset(a.original, a.processed, size=a.size, workers=a.workers, overwrite=a.overwrite)
    print(f"wrote {out}")


def _cmd_split(a):
    from .data.split import split_dataset

    split_dataset(a.processed, a.tag, folds=a.folds, val_fraction=a.val_fraction,
                  test_fraction=a.test_fraction, seed=a.seed, overwrite=a.overwrite)


def _cmd_check(a):
    from .data.check import check_dataset

    report = check_dataset(a.dataset)
    # summary_text() ends with one `warning:` / `error:` line per problem
    print(report.summary_text())
    return 1 if report.errors else 0


def _cmd_import_verse(a):
    from .data.verse import import_verse

    out = import_verse(a.verse_root, a.grades, a.out, overwrite=a.overwrite, allow_missing=a.allow_missing)
    print(f"wrote {out}")


def _cmd_train(a):
    from .training.engine import LOG, show_progress, train_from_cli

    handler = show_progress()  # one line per epoch on stderr, while this command runs
    try:
        train_from_cli(a.params, a.param, a.out, resume=a.resume)
    finally:
        LOG.removeHandler(handler)


def _cmd_predict(a):
    # the first output comes after PyTorch, the model and the scan are loaded: say so at once
    print(f"vfnb predict: reading {a.ct} (loading PyTorch and the model first: a few seconds)", file=sys.stderr)
    from .inference.command import predict_command

    failed = predict_command(a.ct, a.seg, a.checkpoint, a.out, device=a.device, overwrite=a.overwrite,
                             saliency_dir=a.saliency, report=a.report, operating_points=a.operating_points,
                             model_name=a.model, accept_foreign_operating_points=a.accept_foreign_operating_points,
                             label_map=a.label_map, series=a.series, resume=a.resume, dicom_seg=a.dicom_seg,
                             label_scheme=a.labels)
    return 1 if failed else 0


def _cmd_study(a):
    from .study import run_study

    run_study(a.params, a.param, a.out, overwrite=a.overwrite)


def _cmd_sweep(a):
    from .sweep import run_sweep

    slurm = {"partition": a.slurm_partition, "time": a.slurm_time, "cpus": a.slurm_cpus, "mem": a.slurm_mem}
    result = run_sweep(a.params, a.param, a.out, only=a.only, aggregate_only=a.aggregate_only, executor=a.executor,
                       slurm=slurm)
    if result.report is not None:
        print(f"report: {result.report}")
    print(f"ran {len(result.ran)}, finished before {len(result.skipped)}, failed {len(result.failed)}")
    for name, message in result.failed.items():
        print(f"failed: {name}: {message}", file=sys.stderr)
    return 1 if result.failed else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="vfnb", description="Vertebral fracture grading with supervised contrastive learning.")
    p.add_argument("--version", action="version", version=f"vfnb {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(sub)
    _add_model_commands(sub)
    _add_study_commands(sub)
    for command, subparser in sub.choices.items():
        subparser.formatter_class = _Formatter
        subparser.epilog = _examples(command, subparser.epilog or "")
    return p


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps text that has its own lines (epilogs, examples) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line + "\n" for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def _add_data_commands(sub) -> None:
    s = sub.add_parser("synth", help="generate the SynthSpine synthetic dataset", description=SYNTH_HELP)
    s.add_argument("out", type=Path, help="folder to create (original layout)")
    s.add_argument("--cases", type=int, default=64, help="number of CT scans to generate (default 64)")
    s.add_argument("--seed", type=int, default=0, help="generator seed; case k depends only on (seed, k) (default 0)")
    s.add_argument("--workers", type=int, default=1, help="scans generated in parallel (default 1)")
    s.add_argument("--test-cases", type=int, default=0,
                   help="extra scans of a fracture-enriched test cohort, named synth-s<seed>-t<k> (default 0)")
    s.add_argument("--val-cases", type=int, default=0,
                   help="extra scans of a fracture-enriched validation cohort, named synth-s<seed>-v<k> (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if vfnb wrote it before")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("preprocess", help="original layout -> per-vertebra patches (processed layout)")
    s.add_argument("original", type=Path, help="dataset in the original layout (img/, seg/, annotation.yaml)")
    s.add_argument("processed", type=Path, help="folder to create (processed layout: img/, seg/, patches.csv)")
    s.add_argument("--size", type=int, default=128, help="in-plane patch size in voxels (default 128)")
    s.add_argument("--workers", type=int, default=1, help="scans processed in parallel (default 1)")
    s.add_argument("--overwrite", action="store_true", help="replace PROCESSED if it exists")
    s.set_defaults(func=_cmd_preprocess)

    s = sub.add_parser("split", help="patient-grouped, grade-stratified train/val/test lists")
    s.add_argument("processed", type=Path, help="processed dataset to write the lists into")
    s.add_argument("--tag", required=True, help="name of the lists: <split>_file_list.TAG.yaml")
    s.add_argument("--folds", type=int, default=1, help="k > 1 writes TAG-f0 .. TAG-f{k-1}")
    s.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the training CTs kept for validation (default 0.2)")
    s.add_argument("--test-fraction", type=float, default=0.2, help="share of the CTs for the test list when "
                                                                     "--folds 1 (default 0.2)")
    s.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace existing lists of the same tag")
    s.set_defaults(func=_cmd_split)

    s = sub.add_parser("check", help="validate an original or processed dataset and summarise it",
                       description="Check every file of a dataset (original or processed layout) and print a "
                                   "summary with one line per problem. Exit status 1 when there are errors.")
    s.add_argument("dataset", type=Path, help="dataset folder (original or processed layout)")
    s.set_defaults(func=_cmd_check)

    s = sub.add_parser("import-verse", help="VerSe release + grade table -> original layout")
    s.add_argument("verse_root", type=Path, help="VerSe release or split folder (rawdata/, derivatives/), or a folder above several")
    s.add_argument("grades", type=Path, help="wide spreadsheet (CSV/XLSX, <Level>_fx-g columns) or long CSV subject,level,grade")
    s.add_argument("out", type=Path, help="folder to create (original layout)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if vfnb wrote it before")
    s.add_argument("--allow-missing", action="store_true",
                   help="grades for scans not below VERSE_ROOT (e.g. one split folder of a release) or for "
                        "levels absent from a label map are warnings and skipped, not errors")
    s.set_defaults(func=_cmd_import_verse)


def _add_model_commands(sub) -> None:
    from .training.config import help_text

    s = sub.add_parser("train", help="train a model (supcon, linear, finetune, joint, ce)", epilog=help_text(),
                       description="Train one model into a run folder (params.yaml, best.pt, last.pt, history.json, "
                                   "metrics.csv), one line per epoch on stderr. Several processes: "
                                   "torchrun --nproc_per_node=N -m vfnb train ... The defaults listed below are "
                                   "vfnb train's own (48^3 cubes, 30 epochs, lr 0.005), neither the paper's "
                                   "recipe (params/paper.yaml) nor the study's default one (params/default.yaml: "
                                   "32^3 cubes and per-model budgets and learning rates); `vfnb study` passes "
                                   "its own values to each model it trains.")
    s.add_argument("--params", type=Path, action="append", default=[],
                   help="YAML file of training parameters (repeatable; later files win)")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="set one training parameter, read as YAML (3, 0.5, [800, 900]); KEY= means null")
    s.add_argument("--out", type=Path, required=True,
                   help="run folder to create (must not exist or be empty); with --resume, the run to continue")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("predict", help="grade every vertebra of one CT (with a checkpoint, or from measured heights)")
    s.add_argument("--ct", type=Path, required=True,
                   help="CT scan: a NIfTI file in HU or a folder holding its DICOM series; or a folder of NIfTI "
                        "CTs (then --seg is a folder of label maps, paired by file name, and the table gets a scan "
                        "column)")
    s.add_argument("--series", metavar="UID",
                   help="the SeriesInstanceUID of the series to grade when the --ct DICOM folder holds several")
    s.add_argument("--seg", type=Path, required=True,
                   help="its vertebra label map, NIfTI on the same grid (VerSe labels or TotalSegmentator `total` "
                        "IDs), or a folder of TotalSegmentator's per-structure masks; or a folder of them")
    s.add_argument("--labels", choices=("auto", "verse", "totalsegmentator"), default="auto",
                   help="numbering of the label map: auto (default: found from the file, refused when it cannot be "
                        "told without guessing), verse or totalsegmentator")
    s.add_argument("--checkpoint", type=Path,
                   help="vfnb checkpoint (best.pt of a run) or one of the study's released checkpoints; without it "
                        "the morphometry grader grades each vertebra from its measured heights (Genant's bands, no "
                        "probabilities)")
    s.add_argument("--out", type=Path, help="CSV table, one row per vertebra (default: print CSV)")
    s.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    s.add_argument("--saliency", type=Path, metavar="DIR",
                   help="also write one Grad-CAM heat map per vertebra (NIfTI, the CT's grid) into DIR")
    s.add_argument("--report", type=Path, metavar="HTML",
                   help="also write a one-page report of the scan (grades, heights, saliency, provenance); "
                        "with folders of scans, a folder for one page per scan")
    s.add_argument("--label-map", type=Path, metavar="NIFTI",
                   help="also write the label map recoloured by predicted grade on the CT's grid (codes 1-4 grades "
                        "0-3, 5 not assessable, 6 not graded), a levels map (x_levels.nii.gz) and their 3D Slicer "
                        "(.ctbl) and ITK-SNAP (.label.txt) colour tables beside it; with folders of scans, a folder")
    s.add_argument("--dicom-seg", type=Path, metavar="DCM",
                   help="when --ct is a DICOM series: also write a DICOM Segmentation referring to it, one segment per "
                        "graded vertebra named with its level and grade (for a PACS or a DICOM viewer)")
    s.add_argument("--operating-points", type=Path, metavar="JSON",
                   help="a study's operating_points.json: the table (screening_threshold, screened_fracture) and the "
                        "report give the screening decision at its validated threshold")
    s.add_argument("--model", help="which model's operating point, when the JSON holds several (e.g. ce)")
    s.add_argument("--accept-foreign-operating-points", action="store_true",
                   help="use an operating point not chosen for this checkpoint (another run's); every output says so")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--resume", action="store_true",
                   help="with folders of scans: grade only the scans an earlier run with the same inputs did not "
                        "finish (failed or never reached), keep the rest")
    s.set_defaults(func=_cmd_predict)


def _add_study_commands(sub) -> None:
    s = sub.add_parser("study", help="run the study notebooks with papermill and render the report",
                       description="Run notebooks/00-03 with papermill in this environment and write the run "
                                   "folder: executed notebooks and their HTML, index.html, summary.md, "
                                   "metrics.json, provenance.json, figures/. Parameters: params/default.yaml, "
                                   "then each --params file, then each -p (later wins).")
    s.add_argument("--params", type=Path, action="append", default=[], required=True,
                   help="YAML parameter file merged over params/default.yaml (repeatable)")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter; the value is read as YAML (3, 0.5, null, [a, b]); KEY= means null")
    s.add_argument("--out", type=Path, required=True, help="run folder to create, e.g. results/<name>")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder (only once the new run is complete)")
    s.set_defaults(func=_cmd_study)

    s = sub.add_parser("sweep", help="run the study over a grid of seeds/folds and aggregate across runs",
                       description="Run the study once per grid point of a sweep file (params/sweep.yaml: "
                                   "study_params, overrides, grid, slurm) into OUT/runs/<key>-<value>, in sequence "
                                   "here or as one SLURM job each (--executor slurm), skipping finished runs, then "
                                   "write OUT/index.html, summary.md and sweep.json: "
                                   "mean and 95 % t-interval across runs, paired SupCon - CE differences, budget "
                                   "curves. Exit status 1 when a run failed.")
    s.add_argument("--params", type=Path, action="append", default=[], required=True,
                   help="sweep file (repeatable; a later file replaces an earlier file's keys)")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a sweep key (study_params, overrides, grid, slurm) replaced, or a study parameter fixed for "
                        "every run")
    s.add_argument("--out", type=Path, required=True, help="sweep folder, e.g. results/sweep-<name> (created or resumed)")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                      help="run only the grid points with this value (repeatable; one cluster job per point); "
                           "writes no report")
    mode.add_argument("--aggregate-only", action="store_true", help="run nothing; write the report from finished runs")
    s.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: run the points here, one after another (default); slurm: one SLURM job per point "
                        "(submitit; logs in OUT/slurm/), wait for all, then report. Ctrl-C cancels the jobs")
    s.add_argument("--slurm-partition", metavar="NAME", help="--executor slurm: partition (default: the cluster's)")
    s.add_argument("--slurm-time", metavar="TIME", help="--executor slurm: time limit per job, minutes or "
                                                         "[D-]HH:MM:SS (default 240 minutes)")
    s.add_argument("--slurm-cpus", metavar="N", help="--executor slurm: CPUs per job (default 2)")
    s.add_argument("--slurm-mem", metavar="MEM", help="--executor slurm: memory per job, e.g. 16G (default: the "
                                                       "cluster's); these four override the sweep file's slurm: block")
    s.set_defaults(func=_cmd_sweep)


def _realism_parser() -> argparse.ArgumentParser:
    """``vfnb synth realism``: a sub-mode of ``synth`` (its own parser: ``synth`` takes a folder as its argument)."""
    p = argparse.ArgumentParser(
        prog="vfnb synth realism", formatter_class=_Formatter,
        description="Measure how close SynthSpine looks to real CT, per vertebra: core median HU and SD (>= 4 mm "
                    "inside the label), share of label voxels below 100 HU, spinal canal HU, and the noise "
                    "texture (residual neighbour correlation); on a freshly generated SynthSpine cohort (or "
                    "--synth DIR) and, when given, a real CT with its vertebra label map. Writes realism.csv, "
                    "summary.json (with the reference ranges of real CT) and realism.png. SynthSpine is SYNTHETIC.",
        epilog="examples:\n  vfnb synth realism --out results/realism\n"
               "  vfnb synth realism --real scan.nii.gz --seg scan_vertebrae.nii.gz --out results/realism\n"
               "(to generate a dataset into a folder named realism: vfnb synth ./realism)")
    p.add_argument("--out", type=Path, required=True, help="folder to create for the report")
    p.add_argument("--real", type=Path, help="a real CT: NIfTI file or DICOM series folder")
    p.add_argument("--seg", type=Path, help="its vertebra label map (VerSe or TotalSegmentator; file or folder)")
    p.add_argument("--synth", type=Path, help="measure this SynthSpine folder instead of generating a cohort")
    p.add_argument("--cases", type=int, default=8, help="SynthSpine cases to generate (default 8)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if vfnb wrote it before")
    p.set_defaults(func=_cmd_synth_realism, command="synth realism")
    return p


def _cmd_synth_realism(a):
    from .data.synth.realism import dataset_rows, real_rows, synth_rows, write_realism_report
    from .errors import ParamsError

    if (a.real is None) != (a.seg is None):
        raise ParamsError("synth realism: --real and --seg go together (a CT and its vertebra label map)")
    if a.cases < 1:
        raise ParamsError(f"synth realism: --cases {a.cases}; expected at least 1")
    real = real_rows(a.real, a.seg) if a.real is not None else []
    synth = dataset_rows(a.synth) if a.synth is not None else synth_rows(a.cases, a.seed)
    out = write_realism_report(a.out, synth, real, overwrite=a.overwrite)
    print(f"wrote {out}")


def _parse_args(argv: list[str] | None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["synth", "realism"]:
        return _realism_parser().parse_args(argv[2:])
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_entry_point()
    args = _parse_args(argv)
    try:
        code = args.func(args)
    except VfnbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only or full disk, permissions, a vanished file: say where, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (vfnb {args.command} could not read or write this path; "
              "check free space and permissions)", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"error: vfnb {args.command} ran out of memory; expected inputs of a size this machine can "
              "hold (see docs/GUARANTEES.md for the size limits)", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, saying what was kept where the command says so
        logging.getLogger("asyncio").addFilter(drop_dead_kernel_reports)
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def drop_dead_kernel_reports(record: logging.LogRecord) -> bool:
    """False for asyncio's report of a notebook cell whose kernel died, the rest pass.

    Ctrl-C reaches the notebook kernel too (one process group), so the cell a study was
    running ends with nbclient's ``DeadKernelError`` in a task nobody awaits any more;
    asyncio would print that task's traceback as the interpreter exits, after the one-line
    message that already says what happened.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and type(exc).__name__ == "DeadKernelError")


if __name__ == "__main__":
    sys.exit(main())
