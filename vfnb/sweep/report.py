"""The report across a sweep's runs: mean and t-interval per metric, paired SupCon - CE differences, the verdict, budget curves."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..study.budget import budget_curves, plot_budget_curves
from ..evaluate import (GRADE2_METRICS, HEADLINE_METRICS, METRIC_LABELS, METRIC_RANGE, MISSING, REGION_TITLES,
                        SPINE_REGIONS, finite_values, mean_interval)
from ..io import atomic_write_json, atomic_write_text
from ..plots import save_figure
from ..study import (MODEL_TITLES, REPORT_CSS, dataset_sentence, html_table, md_table, model_title, read_json,
                     recipe_deviations, strip_tags, markdown_text, OwnMarkdown)
from ..study.answer import sweep_answer, sweep_answer_rows
from ..study.report import wide_block
from .plan import SweepPlan

CONFIDENCE = 0.95
# (SupCon model, baseline): the paired differences the report shows
PAIRS = (("supcon_linear", "ce"), ("supcon_finetune", "ce"))
#: The test-set metrics a sweep collects from each run and aggregates: the study's headline
#: (quadratic-weighted kappa among them) and the grade >= 2 cut of moderate/severe fractures.
SWEEP_METRICS = (*HEADLINE_METRICS, *GRADE2_METRICS)
#: What the sweep aggregates per spine region (thoracic, lumbar), from each run's ``by_region``.
REGION_SWEEP_METRICS = ("macro_f1", "quadratic_kappa", "sensitivity", "specificity", "roc_auc")


def _range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take ([0, 1] unless :data:`METRIC_RANGE` says otherwise)."""
    return METRIC_RANGE.get(metric, (0.0, 1.0))


def _difference_range(metric: str) -> tuple[float, float]:
    low, high = _range(metric)
    return low - high, high - low


def _metric_value(metrics_doc: dict, model: str, metric: str, region: str | None = None):
    """One model's value of ``metric`` in a run's metrics.json (the whole set, or one region); None if absent."""
    entry = (metrics_doc.get("models") or {}).get(model) or {}
    if region is not None:
        entry = (entry.get("by_region") or {}).get(region) or {}
    entry = (entry.get("metrics") or {}).get(metric)
    value = entry.get("value") if isinstance(entry, dict) else entry
    return value if finite_values([value]) else None


def _region_metrics(metrics_doc: dict) -> dict:
    """``{region: {model: {metric: value}}}`` of :data:`REGION_SWEEP_METRICS`, for the regions the run evaluated."""
    models = metrics_doc.get("models") or {}
    return {region: {m: {k: _metric_value(metrics_doc, m, k, region) for k in REGION_SWEEP_METRICS}
                     for m in models if region in ((models[m] or {}).get("by_region") or {})}
            for region in SPINE_REGIONS
            if any(region in ((entry or {}).get("by_region") or {}) for entry in models.values())}


def aggregate_regions(runs: Sequence[dict], confidence: float = CONFIDENCE) -> dict:
    """``{region: {model: {metric: mean_interval}}}`` across the runs that evaluated that region."""
    out = {}
    for region in SPINE_REGIONS:
        held = [r.get("regions", {}).get(region) for r in runs if region in r.get("regions", {})]
        models = [m for m in MODEL_TITLES if any(m in h for h in held)]
        models += sorted({m for h in held for m in h} - set(models))
        if models:
            out[region] = {m: {k: mean_interval([h.get(m, {}).get(k) for h in held], confidence, bounds=_range(k))
                               for k in REGION_SWEEP_METRICS} for m in models}
    return out


def aggregate(runs: Sequence[dict], confidence: float = CONFIDENCE) -> tuple[dict, dict]:
    """Across-run statistics from ``runs`` (each ``{"metrics": {model: {metric: value}}}``).

    Returns ``(models, paired)``: ``models[model][metric]`` = :func:`mean_interval`;
    ``paired["<a> - <b>"][metric]`` = :func:`mean_interval` of the per-run difference
    a - b over the runs holding both, plus ``wins`` (runs where a > b) and ``ties``.
    """
    present = [m for m in MODEL_TITLES if any(m in r["metrics"] for r in runs)]
    present += sorted({m for r in runs for m in r["metrics"]} - set(present))
    models = {m: {k: mean_interval([r["metrics"].get(m, {}).get(k) for r in runs], confidence, bounds=_range(k))
                  for k in SWEEP_METRICS} for m in present}
    paired = {}
    for a, b in PAIRS:
        if a not in present or b not in present:
            continue
        table = {}
        for k in SWEEP_METRICS:
            diffs = [r["metrics"][a][k] - r["metrics"][b][k] for r in runs
                     if finite_values([r["metrics"].get(a, {}).get(k)]) and finite_values([r["metrics"].get(b, {}).get(k)])]
            table[k] = {**mean_interval(diffs, confidence, bounds=_difference_range(k)), "wins": sum(d > 0 for d in diffs),
                        "ties": sum(d == 0 for d in diffs)}
        paired[f"{a} - {b}"] = {"model": a, "baseline": b, "metrics": table}
    return models, paired


def _fmt(value, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _cell(stats: dict, digits: int = 2) -> str:
    """``mean [low, high]``; "n/a" for an interval that does not exist (n < 2) or a missing mean."""
    if stats.get("mean") is None:
        return MISSING
    interval = (MISSING if stats.get("ci_low") is None
                else f"{_fmt(stats['ci_low'], digits)}, {_fmt(stats['ci_high'], digits)}")
    return f"{_fmt(stats['mean'], digits)} [{interval}]"


def _paired_cell(stats: dict) -> str:
    """``mean [low, high], won W/N`` (``, T ties`` when some runs tie)."""
    ties = f", {stats['ties']} ties" if stats.get("ties") else ""
    return f"{_cell(stats)}, won {stats['wins']}/{stats['n']}{ties}"


def collect_runs(out: Path, plan: SweepPlan) -> list[dict]:
    """The finished runs of ``plan`` in grid order: name, folder, grid values, headline metrics, dataset."""
    runs = []
    for name, point in plan.points:
        doc = read_json(out / "runs" / name / "metrics.json")
        if not isinstance(doc, dict):
            continue
        metrics = {m: {k: _metric_value(doc, m, k) for k in SWEEP_METRICS} for m in (doc.get("models") or {})}
        params = read_json(out / "runs" / name / "provenance.json") or {}
        runs.append({"name": name, "folder": f"runs/{name}", "grid": point, "metrics": metrics,
                     "comparisons": doc.get("comparisons") or {},
                     "regions": _region_metrics(doc), "dataset": doc.get("dataset") or {},
                     "params": params.get("params") or {}})
    return runs


# the question the study asks, in the numbers that answer it: (metrics.json key, words)
ANSWER_METRICS = (("roc_auc", "fracture AUC"), ("macro_f1", "macro-F1"), ("quadratic_kappa", "quadratic-weighted kappa"),
                  ("recall_grade1", "grade-1 recall"))


def _verdict(d: dict) -> str:
    low, high = d.get("ci_low"), d.get("ci_high")
    if low is not None and low > 0:
        return f"SupCon higher (won {d['wins']}/{d['n']})"
    if high is not None and high < 0:
        return f"cross-entropy higher (SupCon won {d['wins']}/{d['n']})"
    return f"no difference these runs can tell (SupCon won {d.get('wins', 0)}/{d.get('n', 0)})"


def answer(models: dict, paired: dict, n_runs: int, pair: tuple[str, str] = ("supcon_linear", "ce")) -> dict:
    """Does SupCon beat cross-entropy at this budget? ``{"table": [...], "text": "..."}`` (empty text: no pair).

    Per :data:`ANSWER_METRICS`: both models' mean [interval] across runs, and the paired
    difference with its interval. The verdict per metric follows the interval of the
    paired difference only: above 0 SupCon is higher, below 0 cross-entropy is, and an
    interval that holds 0 (or none, with one run) shows no difference these runs can tell.
    """
    a, b = pair
    diff = (paired.get(f"{a} - {b}") or {}).get("metrics") or {}
    if a not in models or b not in models or not diff:
        return {"table": [], "text": ""}
    table = [{"metric": words, a: models[a].get(key) or {}, b: models[b].get(key) or {},
              "difference": diff.get(key) or {}, "verdict": _verdict(diff.get(key) or {})}
             for key, words in ANSWER_METRICS]
    text = (f"Over {n_runs} training run{'s' if n_runs != 1 else ''}, {model_title(a)} against the "
            f"{model_title(b).lower()}, paired run by run: "
            + "; ".join(f"{row['metric']}: {row['verdict']}" for row in table) + ".")
    return {"table": table, "text": text}


INTERVALS = (f"{100 * CONFIDENCE:.0f} % t-interval of the mean across training runs (seeds/folds), n - 1 degrees "
             "of freedom, clipped to the values a metric can take; not the per-run bootstrap over patients")
BUDGET_CAPTION = ("Validation macro-F1 and fracture AUC against {x}: a logistic-regression probe on the pooled "
                  "features of the SupCon encoder and of the cross-entropy baseline's encoder, refitted after every "
                  "epoch; line: mean across runs, band: lowest to highest run.")


@dataclass
class _SweepTables:
    """Everything the sweep's pages show, computed once for the HTML page and the Markdown summary."""

    title: str
    opening: list
    opening_head: list
    opening_rows: list
    count: str
    grid_text: str
    dataset_text: str
    synthetic: bool
    verdict: dict
    answer_rows: list
    deviation_rows: list
    metric_rows: list
    region_rows: list
    paired_rows: list
    runs: list
    failed: dict
    figure: Path | None
    caption: str

    heads = property(lambda self: [METRIC_LABELS[k] for k in SWEEP_METRICS])
    region_heads = property(lambda self: ["Model", "Vertebrae of", *[METRIC_LABELS[k] for k in REGION_SWEEP_METRICS]])
    answer_head = ["Test metric", MODEL_TITLES["supcon_linear"], MODEL_TITLES["ce"], "Paired difference", "Verdict"]
    deviation_head = ["Parameter", "What it sets", "These runs", "Paper"]

    def run_rows(self, link) -> list:
        return [(link(r), [", ".join(f"{k}={v}" for k, v in r["grid"].items()), model_title(m),
                           *[_fmt(r["metrics"][m].get(k)) for k in SWEEP_METRICS]])
                for r in self.runs for m in r["metrics"]]


def _sweep_document(out: Path, plan: SweepPlan, runs: list, models: dict, paired: dict, regions: dict, verdict: dict,
                    deviations: list, budget: dict, figure: Path | None, failed: dict) -> dict:
    return {
        "schema": 1,
        "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sweep": plan.describe(),
        "synthetic": any(r["dataset"].get("synthetic") for r in runs),
        "intervals": INTERVALS,
        "runs_planned": len(plan.points),
        "runs_finished": len(runs),
        "runs_missing": [n for n, _ in plan.points if n not in {r["name"] for r in runs}],
        "runs_failed": failed,
        "runs": [{k: r[k] for k in ("name", "folder", "grid", "metrics", "comparisons", "regions")} for r in runs],
        "models": {m: {"title": model_title(m), "metrics": v} for m, v in models.items()},
        "by_region": regions,
        "paired": paired,
        "answer": {**verdict, "opening": sweep_answer(runs, any(r["dataset"].get("synthetic") for r in runs),
                                                      CONFIDENCE)},
        "recipe_deviations": deviations,
        "budget_curves": {**budget, "figure": "figures/budget_curves.png" if figure else None},
    }


def _sweep_html(t: _SweepTables) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(t.title)}</title>",
             f"<style>{REPORT_CSS}</style></head><body><h1>{e(t.title)}</h1>"]
    if t.opening:
        parts.append("<div class='answer'><h2>The answer across these runs</h2>"
                     + "".join(f"<p>{e(s)}</p>" for s in t.opening)
                     + (html_table(t.opening_head, t.opening_rows) if t.opening_rows else "") + "</div>")
    parts.append(f"<p>The study run once per grid point ({e(t.grid_text)}); {e(t.count)}.</p>")
    if t.dataset_text:
        parts.append(f"<p class='{'synthetic' if t.synthetic else 'note'}'>{t.dataset_text}</p>")
    parts.append(f"<p class='note'>Brackets: {e(INTERVALS)}. “{MISSING}”: fewer than 2 runs.</p>")
    if t.verdict["text"]:
        parts += ["<h2>The study's question: does SupCon pretraining beat cross-entropy?</h2>",
                  f"<p>{e(t.verdict['text'])}</p>", html_table(t.answer_head, t.answer_rows)]
    if t.deviation_rows:
        parts += ["<h3>The recipe: where these runs depart from the paper</h3>",
                  html_table(t.deviation_head, t.deviation_rows)]
    parts += ["<h2>Test-set metrics across runs</h2>", html_table(["Model", *t.heads], t.metric_rows)]
    if t.region_rows:
        parts += ["<h3>Thoracic and lumbar vertebrae across runs</h3>", html_table(t.region_heads, t.region_rows)]
    parts += ["<h2>Paired difference, SupCon minus cross-entropy</h2>",
              "<p class='note'>Per run, the SupCon model's value minus the cross-entropy baseline's on the same "
              "seed/fold; mean [interval] of those differences, and in how many runs SupCon was higher.</p>",
              html_table(["Difference", *t.heads], t.paired_rows) if t.paired_rows else "<p>No run holds both models.</p>",
              "<h2>Budget curves</h2>"]
    if t.figure:
        data = base64.b64encode(t.figure.read_bytes()).decode("ascii")
        parts.append(f"<figure style='max-width:100%'><img src='data:image/png;base64,{data}' alt='{e(t.caption)}'>"
                     f"<figcaption>{e(t.caption)} (<a href='figures/budget_curves.png'>PNG</a>)</figcaption></figure>")
    else:
        parts.append("<p>No training history found in the finished runs.</p>")
    rows = t.run_rows(lambda r: r)
    table = ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in ["Run", "Grid values", "Model", *t.heads]) + "</tr>"
             + "".join(f"\n<tr><td><a href='{e(r['folder'])}/index.html'>{e(r['name'])}</a></td>"
                       + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for r, cells in rows) + "\n</table>")
    parts.append("<h2>Runs</h2>" + wide_block(table))
    if t.failed:
        parts.append("<h2>Failed runs</h2><ul>" + "".join(f"<li>{e(n)}: {e(m)}</li>" for n, m in t.failed.items())
                     + "</ul>")
    parts.append("<p>Files: <a href='sweep.json'>sweep.json</a> (every number above, per run and aggregated).</p>"
                 "</body></html>\n")
    return "\n".join(parts)


def _sweep_markdown(t: _SweepTables) -> str:
    md = [f"# {t.title}", ""]
    if t.opening:
        md += ["## The answer across these runs", ""] + [markdown_text(s) + "\n" for s in t.opening]
        md += (md_table(t.opening_head, t.opening_rows) + [""]) if t.opening_rows else []
    md += [f"The study run once per grid point ({t.grid_text}); {t.count}.", ""]
    if t.dataset_text:
        md += [strip_tags(t.dataset_text), ""]
    md += [f"Brackets: {INTERVALS}. {MISSING}: fewer than 2 runs.", ""]
    if t.verdict["text"]:
        md += ["## The study's question: does SupCon pretraining beat cross-entropy?", "", t.verdict["text"], ""]
        md += md_table(t.answer_head, t.answer_rows) + [""]
    if t.deviation_rows:
        md += ["### The recipe: where these runs depart from the paper", ""]
        md += md_table(t.deviation_head, t.deviation_rows) + [""]
    md += ["## Test-set metrics across runs", ""] + md_table(["Model", *t.heads], t.metric_rows)
    if t.region_rows:
        md += ["", "### Thoracic and lumbar vertebrae across runs", ""] + md_table(t.region_heads, t.region_rows)
    md += ["", "## Paired difference, SupCon minus cross-entropy", ""] + md_table(["Difference", *t.heads],
                                                                                   t.paired_rows)
    md += ["", "## Budget curves", "", f"![{t.caption}](figures/budget_curves.png)" if t.figure
           else "No training history.", ""]
    md += ["## Runs", ""] + md_table(["Run", "Grid values", "Model", *t.heads],
                                     t.run_rows(lambda r: OwnMarkdown(f"[{markdown_text(r['name'])}]({r['folder']}/index.html)")))
    if t.failed:
        md += ["", "## Failed runs", ""] + [f"- {markdown_text(n)}: {markdown_text(m)}" for n, m in t.failed.items()]
    return "\n".join(md) + "\n"


def write_sweep_report(out: str | os.PathLike, plan: SweepPlan, failed: dict | None = None) -> Path:
    """Write ``sweep.json``, ``summary.md``, ``index.html`` and ``figures/budget_curves.png``; return index.html."""
    out = Path(out)
    failed = dict(failed or {})
    runs = collect_runs(out, plan)
    models, paired = aggregate(runs)
    regions = aggregate_regions(runs)
    datasets = [r["dataset"] for r in runs]
    synthetic = any(d.get("synthetic") for d in datasets)
    budget = budget_curves([out / "runs" / r["name"] for r in runs])
    figure = None
    if budget["curves"]:
        figure = save_figure(plot_budget_curves(budget, f"Budget curves across {len(runs)} runs"
                                                + (" (synthetic data)" if synthetic else "")),
                             out / "figures" / "budget_curves.png")
    verdict = answer(models, paired, len(runs))
    deviations = recipe_deviations(runs[0]["params"]) if runs and runs[0]["params"] else []
    document = _sweep_document(out, plan, runs, models, paired, regions, verdict, deviations, budget, figure, failed)
    atomic_write_json(out / "sweep.json", document)
    missing = document["runs_missing"]
    opening_head, opening_rows = sweep_answer_rows(runs)
    tables = _SweepTables(
        title=f"vfnb sweep: {out.name}", opening=sweep_answer(runs, synthetic, CONFIDENCE),
        opening_head=opening_head, opening_rows=opening_rows,
        count=(f"{len(runs)} of {len(plan.points)} planned runs finished"
               + (f"; missing: {', '.join(missing)}" if missing else "")
               + (f"; failed in this sweep: {', '.join(failed)}" if failed else "")),
        grid_text="; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in plan.grid.items()),
        dataset_text=(dataset_sentence(next((d for d in datasets if d.get("synthetic")), datasets[0]))
                      if datasets else ""),
        synthetic=synthetic, verdict=verdict,
        answer_rows=[(row["metric"], [_cell(row["supcon_linear"]), _cell(row["ce"]), _cell(row["difference"]),
                                      row["verdict"]]) for row in verdict["table"]],
        deviation_rows=[(d["key"], [d["meaning"], str(d["value"]), str(d["paper"])]) for d in deviations],
        metric_rows=[(model_title(m), [_cell(models[m][k]) for k in SWEEP_METRICS]) for m in models],
        region_rows=[(model_title(m), [REGION_TITLES[region], *[_cell(stats[k]) for k in REGION_SWEEP_METRICS]])
                     for region, by_model in regions.items() for m, stats in by_model.items()],
        paired_rows=[(f"{model_title(p['model'])} − {model_title(p['baseline'])}",
                      [_paired_cell(p["metrics"][k]) for k in SWEEP_METRICS]) for p in paired.values()],
        runs=runs, failed=failed, figure=figure, caption=BUDGET_CAPTION.format(x=budget["x"]))
    index = atomic_write_text(out / "index.html", _sweep_html(tables))
    atomic_write_text(out / "summary.md", _sweep_markdown(tables))
    return index
