"""``python -m benchmarks``: run the benchmarks, print a table, write the JSON.

    python -m benchmarks                      # everything (~20-30 min on 2 quiet cores)
    python -m benchmarks --quick              # tiny sizes, 1 repetition (a smoke test)
    python -m benchmarks --only augmentation training
    python -m benchmarks --study-dir results/default   # read the study's wall time
    python -m benchmarks --markdown benchmarks/results/cpu-2core.json
    python -m benchmarks --update-doc         # BENCHMARKS.md tables from benchmarks/results/*.json

Results go to ``benchmarks/results/<machine>.json`` (``--machine``, default a
sanitised ``<cpu model>-<cores>core``) unless ``--out`` says otherwise (``--quick``:
to the temporary folder, never among the committed results); with
``--only`` the sections not rerun are kept from the existing file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import harness

SECTIONS = ("augmentation", "pipeline", "training", "steps", "inference", "predict", "predict_dicom", "heights_peer", "data",
            "study")


@dataclass
class Config:
    quick: bool = False
    reps: int = 5
    warmup: int = 1
    timeout: float = 3600.0
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    study_dir: Path | None = None
    data_dir: Path | None = None
    with_study: bool = False


def _section_runner(name: str):
    import importlib

    return importlib.import_module(f"benchmarks.{name}").run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 1 repetition: checks the harness, "
                   "the figures mean nothing")
    p.add_argument("--only", nargs="+", choices=SECTIONS, metavar="NAME",
                   help=f"run only these sections ({', '.join(SECTIONS)})")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/<machine>.json)")
    p.add_argument("--machine", help="machine name for the results file (default: sanitised CPU model + cores)")
    p.add_argument("--reps", type=int, help="timed repetitions per figure (default 5; 1 with --quick)")
    p.add_argument("--study-dir", type=Path, help="a finished study folder whose provenance gives the "
                   "end-to-end wall time")
    p.add_argument("--with-study", action="store_true", help="run the default study (~15 min) to time it")
    p.add_argument("--workdir", type=Path, help="scratch folder for generated data (default: a temporary "
                   "folder, removed afterwards)")
    p.add_argument("--data-dir", type=Path, help="where the default study's SynthSpine lives or is generated "
                   "(default: the repository's data/, shared with `make study`)")
    p.add_argument("--markdown", type=Path, metavar="JSON", help="print a results JSON as Markdown and exit")
    p.add_argument("--update-doc", action="store_true", help="rewrite the results section of BENCHMARKS.md "
                   "from every benchmarks/results/*.json and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.markdown is not None:
        try:
            results = json.loads(args.markdown.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: {args.markdown}: cannot read results JSON ({exc})", file=sys.stderr)
            return 2
        print(harness.markdown_report(results, source=str(args.markdown)))
        return 0

    if args.update_doc:
        try:
            path = harness.update_doc(harness.REPO_ROOT / "BENCHMARKS.md", harness.RESULTS_DIR)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
        return 0

    machine = args.machine or harness.default_machine_name()
    if args.out:
        out = args.out
    elif args.quick:  # smoke figures never land among the committed results
        out = Path(tempfile.gettempdir()) / f"vfnb-bench-quick-{harness.slug(machine)}.json"
    else:
        out = harness.RESULTS_DIR / f"{harness.slug(machine)}.json"
    sections = list(args.only or SECTIONS)
    reps = args.reps or (1 if args.quick else 5)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {
        "machine_name": machine,
        "date": harness.now_iso(),
        "command": command.strip(),
        "quick": bool(args.quick),
        "reps": reps,
        "machine": harness.machine_info(),
    }
    print(f"vfnb benchmarks on {machine}: {meta['machine']['cpu_model']}, {meta['machine']['cores']} cores, "
          f"load {meta['machine'].get('load_average_1_5_15')}", flush=True)

    figures: dict = {}
    errors: dict = {}
    durations: dict = {}
    with tempfile.TemporaryDirectory(prefix="vfnb-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = Config(quick=args.quick, reps=reps, warmup=1, workdir=workdir, study_dir=args.study_dir,
                     data_dir=args.data_dir,
                     with_study=args.with_study)
        for name in sections:
            print(f"[{name}] ...", flush=True)
            t0 = time.perf_counter()
            try:
                got = _section_runner(name)(cfg)
                figures.update(got)
                print(harness.format_table(got) if got else f"[{name}] nothing measured", flush=True)
            except Exception as exc:  # one failed section must not lose the others
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                errors[name] = detail
                print(f"[{name}] not measured: {detail}", file=sys.stderr, flush=True)
            durations[name] = round(time.perf_counter() - t0, 1)
    meta["sections"] = {name: {"date": meta["date"], "command": meta["command"], "seconds": durations[name]}
                        for name in sections}
    path = harness.write_results(out, meta, figures, errors, sections_run=sections, merge=bool(args.only))
    print()
    print(harness.format_table(figures))
    print(f"\nwrote {path}" + (f" ({len(errors)} section(s) not measured: {', '.join(errors)})" if errors else ""))
    return 1 if errors and not figures else 0


if __name__ == "__main__":
    sys.exit(main())
