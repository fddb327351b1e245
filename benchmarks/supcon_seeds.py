"""Experiment: how much does SupCon pretraining help a linear probe, seed by seed?

Trains the SupCon encoder of the default study (``params/default.yaml``: backbone,
cube, batches, epochs, learning rate) on the default SynthSpine (SYNTHETIC data)
once per seed, then fits a class-balanced logistic-regression probe on the pooled
features of the training vertebrae, before (the seed's random initialisation) and
after pretraining, and grades the validation vertebrae
(:func:`vfnb.study.probe_comparison`). Prints one line per seed and writes the
table as JSON. The test list is never read.

    .venv/bin/python benchmarks/supcon_seeds.py --seeds 0 1 2 [--out /tmp/supcon_seeds.json] [-p key=value ...]
    .venv/bin/python benchmarks/supcon_seeds.py --synth-seed 1 ...   # another SynthSpine draw

Each row also says whether SupCon left its collapse value: the last epoch's loss
against the loss of projections with no grade structure, and the mean cosine
between projections of two views of one vertebra, of same-grade and of
other-grade vertebrae (:class:`vfnb.models.losses.ProjectionSimilarity`).

About 4-5 min per seed on 2 CPU cores. SynthSpine is generated into ``data/`` first
when missing (as ``make study`` does).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from vfnb.data.processed import ProcessedDataset
    from vfnb.data.synth import ensure_default_dataset
    from vfnb.io import atomic_write_text, load_yaml
    from vfnb.models.checkpoints import load_checkpoint
    from vfnb.study import PERMUTATION_P, initial_model, probe_comparison
    from vfnb.training.engine import parse_overrides, train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None, help="JSON file for the table (default: print only)")
    ap.add_argument("--dataset", default=None, help="a processed dataset instead of the default SynthSpine")
    ap.add_argument("--tag", default=None, help="split tag of --dataset (default: the study's tag)")
    ap.add_argument("--synth-seed", type=int, default=None,
                    help="SynthSpine generator seed (default: the study's; generated into data/ when missing)")
    ap.add_argument("--label", default="", help="a name for this setting, copied into every row")
    ap.add_argument("--summarize", metavar="DIR", default=None,
                    help="print a Markdown table of every JSON result in DIR (one row per setting and seed), train nothing")
    ap.add_argument("-p", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="training parameter override, e.g. -p epochs=4")
    args = ap.parse_args(argv)
    if args.summarize:
        print(summary_table(Path(args.summarize)))
        return 0

    d = load_yaml(ROOT / "params" / "default.yaml")
    if args.synth_seed is not None:
        d["synth_seed"] = args.synth_seed
    if args.dataset is None:
        paths = ensure_default_dataset(ROOT / d["data_dir"], cases=d["synth_cases"], seed=d["synth_seed"],
                                       size=d["patch_size"], workers=max(1, int(d["workers"])), tag="synth",
                                       folds=d["synth_folds"], val_fraction=d["val_fraction"])
    else:
        paths = {"processed": Path(args.dataset)}
    d["tag"] = args.tag or d["tag"]
    data = ProcessedDataset(paths["processed"])
    train_records, val_records = data.records("train", d["tag"]), data.records("val", d["tag"])
    base = dict(mode="supcon", dataset=str(paths["processed"]), tag=d["tag"], backbone=d["backbone"],
                head=d["head"], feature_dim=d["feature_dim"], cube_size=d["cube_size"],
                batch_per_grade=d["batch_per_grade"], epoch_mode=d["epoch_mode"],
                batches_per_epoch=d["batches_per_epoch"], epochs=d["supcon_epochs"], lr=d["supcon_lr"],
                momentum=d["momentum"], weight_decay=d["weight_decay"], lr_schedule=d["lr_schedule"],
                temperature=d["temperature"], base_temperature=d["base_temperature"], probe=d["probe"],
                workers=d["workers"], progress=False,
                warmup_epochs=d.get("supcon_warmup_epochs", 0), augmentation=d.get("supcon_augmentation", "paper"))
    base.update(parse_overrides(args.overrides))
    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = train({**base, "seed": seed}, Path(tmp) / "supcon")
            stages = {"init": initial_model({**base, "seed": seed}),
                      "best": load_checkpoint(result.best_checkpoint),
                      "last": load_checkpoint(result.last_checkpoint)}
            table = probe_comparison(stages, train_records, val_records, base["cube_size"], device="cpu",
                                     seed=seed, n_permutations=1000)
        last = result.history[-1]
        row = {"label": args.label, "synth_seed": d["synth_seed"] if args.dataset is None else None,
               "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
               "train_seconds": round(sum(h["epoch_seconds"] for h in result.history), 1),
               "steps": last.get("steps"), "last_loss": round(float(last["loss"]), 4),
               "loss_no_structure": last.get("loss_no_structure"),
               **{k: (None if last.get(k) is None else round(float(last[k]), 3))
                  for k in ("proj_cos_own_view", "proj_cos_same_grade", "proj_cos_other_grade")},
               "best_epoch": int(max(result.history, key=lambda h: h["val_macro_f1"] or -1)["epoch"]),
               **{f"{stage}_{key}": round(float(table.loc[stage, col]), 4)
                  for stage in ("init", "best", "last")
                  for key, col in (("macro_f1", "macro-F1"), ("fracture_auc", "fracture AUC"),
                                   ("p", PERMUTATION_P))},
               "chance_always_normal_macro_f1": round(float(table.loc["chance: always grade 0", "macro-F1"]), 4),
               "chance_uniform_macro_f1": round(float(table.loc["chance: uniform guess", "macro-F1"]), 4),
               "epoch_loss": [round(float(h["loss"]), 4) for h in result.history],
               "epoch_val_fracture_auc": [None if h["val_fracture_auc"] is None
                                          else round(float(h["val_fracture_auc"]), 3) for h in result.history]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        atomic_write_text(args.out, json.dumps({"params": base, "rows": rows}, indent=1) + "\n")
    return 0


def escaped(row: dict) -> bool:
    """SupCon left its collapse: last loss >= 5 % below the no-structure value, and the last-epoch probe
    beats the random initialisation's (higher macro-F1, permutation p < 0.05)."""
    return (row["last_loss"] < 0.95 * row["loss_no_structure"] and row["last_macro_f1"] > row["init_macro_f1"]
            and row["last_p"] < 0.05)


def summary_table(folder: Path) -> str:
    """Markdown: one row per (setting, SynthSpine seed, training seed) of the JSON files in ``folder``."""
    head = ("| setting | SynthSpine | seed | steps | last loss (no structure) | cosine own / same / other grade "
            "| probe init: macro-F1 / AUC | probe last: macro-F1 / AUC / p | best epoch: macro-F1 / AUC | escaped |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    def f(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        for r in doc["rows"]:
            # joint mode's loss adds the classifier's cross-entropy: no no-structure value, no escape rule
            verdict = "n/a" if r["loss_no_structure"] is None else ("yes" if escaped(r) else "no")
            lines.append(
                f"| {r['label']} | {r['synth_seed']} | {r['seed']} | {r['steps']} | {f(r['last_loss'])} "
                f"({f(r['loss_no_structure'])}) | {f(r['proj_cos_own_view'])} / {f(r['proj_cos_same_grade'])} / "
                f"{f(r['proj_cos_other_grade'])} | {f(r['init_macro_f1'])} / {f(r['init_fracture_auc'])} | "
                f"{f(r['last_macro_f1'])} / {f(r['last_fracture_auc'])} / {f(r['last_p'], 3)} | "
                f"{r['best_epoch']}: {f(r['best_macro_f1'])} / {f(r['best_fracture_auc'])} | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
