"""The study's report: ``index.html`` and ``summary.md`` of a run, written from what the notebooks recorded.

The page is for a reader who did not run the study: what was compared, on which data
(loudly when synthetic, and when a smoke run's numbers mean nothing), the headline
table with what each number is computed on, where the run departs from the paper's
recipe, the key figures, the notebooks, and the provenance. Every section is built by
its own function from ``metrics.json``, ``training.json``, the figure index and
``provenance.json``; the style sheet is ``report.css`` beside this module.
"""

from __future__ import annotations

import html
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..evaluate import (GRADE2_METRICS, HEADLINE_METRICS, METRIC_DECISION, METRIC_LABELS, MISSING, REGION_METRICS,
                        REGION_TITLES, SPINE_REGIONS, format_ci)
from ..io import atomic_write_text
from .answer import run_answer
from .params import recipe_deviations
from .paths import shown_path
from .records import TrainingSummary
from .registry import MODEL_TITLES, NOTEBOOK_TITLES, NOTEBOOKS, model_title
from .run import TRAINING_FILE, figure_index, read_json

REPORT_CSS = resources.files(__package__).joinpath("report.css").read_text(encoding="utf-8")
e = html.escape

#: Column groups of the headline table: how each metric decides (see vfnb.evaluate.METRIC_DECISION).
DECISION_HEADINGS = {"operating point": "At the operating point", "threshold-free": "Threshold-free",
                     "argmax": "Most probable grade (argmax)"}
SMOKE_WARNING = ("Smoke run: these numbers mean nothing. A smoke run trains on a dozen synthetic scans for a few "
                 "optimizer steps only to check that every notebook cell runs; do not read any result on this page "
                 "as a finding.")
INTRO = ("This report reproduces the study of Wei et al., <em>Faint Features Tell: Automatic Vertebrae Fracture "
         "Screening Assisted by Contrastive Learning</em> (BIBM 2022): a 3D CNN whose features are shaped by a "
         "supervised contrastive (SupCon) loss, then read by a linear classifier, grades each vertebra on the Genant "
         "scale (0 normal, 1 mild, 2 moderate, 3 severe), and is compared with a cross-entropy baseline trained with "
         "the same backbone, augmentation and budget.")


# ===================================================================== small pieces
# Markdown that could make a link or break a table: a backslash (it would escape what follows), a
# table's cell separator, and a closing bracket that opens a link target, reference or definition.
_MARKDOWN_SPECIAL = re.compile(r"(\\|\||\](?=[(\[:]))")


class OwnMarkdown(str):
    """Markdown vfnb wrote itself (a link to a run's page): :func:`markdown_text` keeps it as it is."""


def markdown_text(text: str) -> str:
    """Plain text -> Markdown that shows exactly that text: no tag or link can come of it.

    HTML's ``& < >`` become entities (Markdown renderers pass raw HTML through, so a
    folder named ``<svg onload=...>`` would otherwise become a live element; ``<`` also
    starts autolinks), and what could form a link (``[x](javascript:...)``) or split a
    table cell is backslash-escaped. Other Markdown punctuation is left as typed.
    """
    if isinstance(text, OwnMarkdown):
        return str(text)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def strip_tags(text: str) -> str:
    """The report's HTML -> Markdown text (summary.md, notebook Markdown), its strings escaped once.

    The HTML's text is already escaped (every user string goes through
    ``html.escape``), so its entities are decoded once and the plain text re-escaped
    for Markdown by :func:`markdown_text`.
    """
    return markdown_text(html.unescape(re.sub(r"<[^>]+>", "", text)))


#: Columns above which a table is set in the page's ``wide`` style (smaller type, scrolling inside the page).
WIDE_TABLE_COLUMNS = 8


def wide_block(table: str) -> str:
    """``table`` (HTML) in the page's ``wide`` style: smaller type, scrolling inside the page rather than widening it."""
    return f"<div class='wide'>{table}</div>"


def html_table(head: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], row_class: Sequence[str] = ()) -> str:
    """A plain HTML table; ``rows`` are ``(label, cells)``, all escaped; ``row_class[i]`` styles row i.

    A table of more than :data:`WIDE_TABLE_COLUMNS` columns (a column per metric) is
    set with :func:`wide_block` so it stays within the page's width.
    """
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for i, (label, cells) in enumerate(rows):
        cls = f" class='{row_class[i]}'" if i < len(row_class) and row_class[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in (label, *cells)) + "</tr>")
    table = "".join(out) + "</table>"
    return wide_block(table) if len(head) > WIDE_TABLE_COLUMNS else table


def md_table(head: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]]) -> list[str]:
    """A Markdown table; every heading and cell is shown as text (:func:`markdown_text`)."""
    m = markdown_text
    return (["| " + " | ".join(m(h) for h in head) + " |", "|---" * len(head) + "|"]
            + [f"| {m(label)} | " + " | ".join(m(c) for c in cells) + " |" for label, cells in rows])


def dataset_sentence(data: Mapping) -> str:
    """What the data are, as HTML: loudly synthetic for SynthSpine; the enriched cohorts' notes last, when there are."""
    note = "".join(f" {e(data[key])}" for key in ("test_note", "val_note") if data.get(key))
    if data.get("synthetic"):
        return ("The data are <strong>synthetic</strong>: SynthSpine, spine CTs generated from code "
                f"({data.get('cases', '?')} cases, {data.get('vertebrae', '?')} graded vertebrae). "
                "They model vertebral anatomy, bone density and Genant-graded fractures, but no metal, "
                "degenerative disease or scanner artefacts beyond noise and blur. Every number below is a "
                "number on synthetic data, not evidence about clinical performance." + note)
    where = shown_path(data["processed"]) if data.get("processed") else "?"
    return (f"The data are the processed dataset at <code>{e(where)}</code> "
            f"({data.get('cases', '?')} cases, {data.get('vertebrae', '?')} graded vertebrae)." + note)


def smoke_banner(params: Mapping) -> str:
    """The banner of a smoke run (HTML; empty otherwise)."""
    return f"<p class='smoke'><strong>{e(SMOKE_WARNING)}</strong></p>" if params.get("smoke") else ""


def _training(run_dir: Path) -> TrainingSummary | None:
    data = read_json(run_dir / TRAINING_FILE)
    try:
        return TrainingSummary.from_dict(data, str(run_dir / TRAINING_FILE)) if isinstance(data, dict) else None
    except Exception:  # an older run folder: the report does without the notes
        return None


# ===================================================================== the answer, and the sweep a run belongs to
#: The file a sweep writes beside its ``runs/`` folder before its first run starts (``vfnb.sweep.runner``).
SWEEP_PLAN_FILE = "plan.json"


def sweep_page_of(run_dir: Path) -> str | None:
    """The sweep page relative to a run's page (``../../index.html``) when the run was made by a sweep, else None.

    A sweep builds each run at ``<sweep>/runs/<run>/`` (through a staging folder beside
    it, in the same ``runs/``) after recording its plan in ``<sweep>/plan.json``; a run
    elsewhere is a standalone run and links nowhere.
    """
    runs = Path(run_dir).absolute().parent
    return "../../index.html" if runs.name == "runs" and (runs.parent / SWEEP_PLAN_FILE).is_file() else None


def sweep_line(run_dir: Path) -> str:
    """The line that links a sweep's run to its sweep page (HTML; empty for a standalone run)."""
    link = sweep_page_of(run_dir)
    if link is None:
        return ""
    return (f"<p class='note'>This run is one of the runs of a sweep: <a href='{e(link)}'>the sweep's page</a> "
            "states the answer across all its runs.</p>")


def answer_section(metrics: Mapping, data: Mapping) -> str:
    """The study's answer on this run's test set, computed from metrics.json (HTML; empty without metrics)."""
    sentences = run_answer(metrics, bool(data.get("synthetic")))
    if not sentences:
        return ""
    return "<div class='answer'><h2>The answer on this test set</h2>" + "".join(
        f"<p>{e(s)}</p>" for s in sentences) + "</div>"


# ===================================================================== headline
def headline_rows(metrics: Mapping) -> list[tuple[str, list[str]]]:
    """Rows ``(label, [cell per HEADLINE_METRICS])``: each model of this study, then the paper's."""
    rows = [(entry.get("title") or model_title(model),
             [format_ci(entry.get("metrics", {}).get(k)) for k in HEADLINE_METRICS])
            for model, entry in (metrics.get("models") or {}).items()]
    paper = metrics.get("paper")
    if paper:
        rows.append((paper.get("label", "Paper (as reported, on its own data)"),
                     [format_ci(paper.get("metrics", {}).get(k)) for k in HEADLINE_METRICS]))
    return rows


def identical_models(metrics: Mapping) -> list[tuple[str, str]]:
    """Pairs of models whose headline numbers (with their intervals) are all the same."""
    models = metrics.get("models") or {}
    names = list(models)
    cells = {m: [models[m].get("metrics", {}).get(k) for k in HEADLINE_METRICS] for m in names}
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if cells[a] == cells[b]]


def headline_notes(metrics: Mapping, training: TrainingSummary | None) -> list[str]:
    """Plain-text notes under the headline table: models that kept their start, identical rows."""
    notes = []
    kept = [m for m, t in (training.models if training else {}).items() if t.kept_start and m in MODEL_TITLES]
    for model in kept:
        notes.append(f"{model_title(model)}: training did not improve validation macro-F1 on its start, so the "
                     "selected checkpoint is the start itself (epoch 0: the SupCon encoder with the linear probe's "
                     "logistic-regression classifier).")
    for a, b in identical_models(metrics):
        notes.append(f"{model_title(a)} and {model_title(b)} have identical numbers: they are the same network"
                     + (" (see the note above)." if {a, b} & set(kept) else "."))
    return notes


def _decision_sentence(op: Mapping, params: Mapping) -> str:
    target = op.get("target_specificity", params.get("target_specificity", "?"))
    return ("Sensitivity and specificity are read at each model's operating point: a vertebra is called fractured "
            "(grade ≥ 1) when its fracture probability, 1 − P(grade 0), reaches the threshold chosen on the "
            f"validation set for a specificity of {target}. ROC AUC uses every threshold. Macro-F1, the "
            "quadratic-weighted kappa and grade-1 recall grade each vertebra by its most probable grade (argmax), with no threshold: the two kinds can "
            "disagree (high specificity at the operating point while argmax grades call normal vertebrae "
            "fractured, or no fracture found at the operating point while argmax grades find them).")


def headline_section(metrics: Mapping, params: Mapping, training: TrainingSummary | None) -> str:
    if not metrics.get("models"):
        return "<h2>Headline: test set</h2><p>No metrics.json was written: see the evaluation notebook.</p>"
    op, ci, test = metrics.get("operating_point") or {}, metrics.get("ci") or {}, metrics.get("test") or {}
    groups: dict[str, int] = {}
    for key in HEADLINE_METRICS:
        groups[METRIC_DECISION[key]] = groups.get(METRIC_DECISION[key], 0) + 1
    head = ("<tr><th rowspan='2'>Model</th>"
            + "".join(f"<th class='group' colspan='{n}'>{e(DECISION_HEADINGS[g])}</th>" for g, n in groups.items())
            + "</tr><tr>" + "".join(f"<th>{e(METRIC_LABELS[k].split(' (')[0])}</th>" for k in HEADLINE_METRICS)
            + "</tr>")
    n_models = len(metrics["models"])
    body = "".join(f"<tr{' class=paper' if i >= n_models else ''}><td>{e(label)}</td>"
                   + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>"
                   for i, (label, cells) in enumerate(headline_rows(metrics)))
    parts = ["<h2>Headline: test set</h2>",
             f"<p class='note'>{e(_decision_sentence(op, params))} Brackets: "
             f"{100 * float(ci.get('level') or 0.95):.0f} % confidence intervals by bootstrap over patients "
             f"({e(str(ci.get('n_boot', '?')))} resamples). Test set: {e(str(test.get('vertebrae', '?')))} vertebrae "
             f"of {e(str(test.get('patients', '?')))} patients. “{MISSING}”: undefined on these data, or not "
             "reported by the paper.</p>",
             f"<table>{head}{body}</table>"]
    parts += [f"<p class='note'>{e(note)}</p>" for note in headline_notes(metrics, training)]
    if metrics.get("paper"):
        parts.append(f"<p class='note'>The last row is the paper's own report, on its own data "
                     f"({e(metrics['paper'].get('data', 'its clinical CTs'))}); it is not a result of this run "
                     "and is not directly comparable.</p>")
    return "".join(parts)


# ===================================================================== grade >= 2 and the spine regions
GRADE2_NOTE = ("Moderate or severe fractures (grade ≥ 2), the usual clinical cut: sensitivity and specificity when "
               "the most probable grade is 2 or 3 (no threshold is chosen for this cut), ROC AUC of P(grade 2) + "
               "P(grade 3) over every threshold.")
REGION_NOTE = ("Every region is evaluated as a test set of its own, at each model's operating point, with the "
               "bootstrap over the patients that have vertebrae in it; cervical vertebrae count in the whole set only.")


def grade2_rows(metrics: Mapping) -> list[tuple[str, list[str]]]:
    """Rows ``(model, [cell per GRADE2_METRICS])`` of this study's models."""
    return [(entry.get("title") or model_title(model), [format_ci(entry.get("metrics", {}).get(k)) for k in GRADE2_METRICS])
            for model, entry in (metrics.get("models") or {}).items()]


def region_rows(metrics: Mapping) -> list[tuple[str, list[str]]]:
    """Rows ``(model, [region, vertebrae, cell per REGION_METRICS])`` for the regions each model was evaluated on."""
    rows = []
    for model, entry in (metrics.get("models") or {}).items():
        regions = entry.get("by_region") or {}
        rows += [(entry.get("title") or model_title(model),
                  [REGION_TITLES[r], str(regions[r].get("n_vertebrae", MISSING)),
                   *[format_ci((regions[r].get("metrics") or {}).get(k)) for k in REGION_METRICS]])
                 for r in SPINE_REGIONS if r in regions]
    return rows


REGION_HEAD = ["Model", "Vertebrae of", "Vertebrae", *(METRIC_LABELS[k] for k in REGION_METRICS)]


def field_section(metrics: Mapping) -> str:
    """Grade >= 2 and the thoracic / lumbar numbers (HTML; empty without metrics)."""
    if not metrics.get("models"):
        return ""
    parts = ["<h2>Moderate and severe fractures; thoracic and lumbar vertebrae (test set)</h2>",
             f"<p class='note'>{e(GRADE2_NOTE)}</p>",
             html_table(["Model", *(METRIC_LABELS[k] for k in GRADE2_METRICS)], grade2_rows(metrics))]
    rows = region_rows(metrics)
    parts += ([f"<p class='note'>{e(REGION_NOTE)}</p>", html_table(REGION_HEAD, rows)] if rows
              else ["<p>No region: the predictions carried no vertebra level.</p>"])
    return "".join(parts)


def field_markdown(metrics: Mapping) -> list[str]:
    """:func:`field_section` as Markdown lines."""
    if not metrics.get("models"):
        return []
    md = ["", "## Moderate and severe fractures; thoracic and lumbar vertebrae (test set)", "", GRADE2_NOTE, ""]
    md += md_table(["Model", *(METRIC_LABELS[k] for k in GRADE2_METRICS)], grade2_rows(metrics))
    rows = region_rows(metrics)
    md += ["", REGION_NOTE, ""] + md_table(REGION_HEAD, rows) if rows else ["", "No region: no vertebra level."]
    return md


# ===================================================================== other sections
def recipe_section(params: Mapping) -> str:
    deviations = recipe_deviations(params)
    out = "<h2>Recipe: where this run departs from the paper</h2>"
    if not deviations:
        return out + "<p>None: every setting that defines the method has the paper's value.</p>"
    rows = "".join(f"<tr><td><code>{e(d['key'])}</code></td><td>{e(d['meaning'])}</td><td>{e(str(d['value']))}</td>"
                   f"<td>{e(str(d['paper']))}</td></tr>" for d in deviations)
    return out + f"<table><tr><th>Parameter</th><th>What it sets</th><th>This run</th><th>Paper</th></tr>{rows}</table>"


def figures_section(figures: Sequence[Mapping]) -> str:
    key = [f for f in figures if f.get("key")]
    if not key:
        return ""
    items = "".join(f"<figure><a href='{e(f['path'])}'><img src='{e(f['path'])}' alt='{e(f.get('caption', ''))}'>"
                    f"</a><figcaption>{e(f.get('caption', ''))}</figcaption></figure>" for f in key)
    return f"<h2>Key figures</h2><div>{items}</div>"


def notebooks_section(notebooks: Sequence[str], seconds: Mapping[str, float], figures: Sequence[Mapping]) -> str:
    rows = "".join(f"<tr><td>{e(NOTEBOOK_TITLES.get(n, n))}</td><td><a href='{e(n)}.html'>{e(n)}.html</a></td>"
                   f"<td><a href='{e(n)}.ipynb'>{e(n)}.ipynb</a></td><td>{seconds.get(n, 0):.0f} s</td></tr>"
                   for n in notebooks)
    out = ("<h2>Notebooks</h2><table><tr><th>Notebook</th><th>Report</th><th>Executed notebook</th><th>Time</th></tr>"
           f"{rows}</table>")
    others = [f for f in figures if not f.get("key")]
    if others:
        out += ("<details><summary>All other figures</summary><ul>"
                + "".join(f"<li><a href='{e(f['path'])}'>{e(f.get('caption') or f['path'])}</a></li>" for f in others)
                + "</ul></details>")
    return out


def provenance_rows(provenance: Mapping) -> list[tuple[str, str]]:
    git, data, machine = provenance.get("git") or {}, provenance.get("data") or {}, provenance.get("machine") or {}
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    return [
        ("Code", f"commit {git.get('commit') or 'unknown'}{dirty}"),
        ("Run", f"{provenance.get('started_utc', '?')} → {provenance.get('finished_utc', '?')} "
                f"({provenance.get('total_seconds', 0):.0f} s of notebooks)"),
        ("Data", f"{data.get('name', '?')} · fingerprint {str(data.get('fingerprint', '?'))[:16]}… · "
                 f"tag {data.get('tag', '?')}"),
        ("Seeds", ", ".join(f"{k}={v}" for k, v in (provenance.get("seeds") or {}).items())),
        ("Machine", f"{machine.get('cpu', '?')} · {machine.get('cores', '?')} cores · {machine.get('ram_gb', '?')} GB RAM"
                    + (f" · GPU {machine['gpu']}" if machine.get("gpu") else "") + f" · {machine.get('platform', '')}"),
        ("Packages", ", ".join(f"{k} {v}" for k, v in (provenance.get("packages") or {}).items() if v)),
    ]


def provenance_section(provenance: Mapping, params: Mapping) -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in provenance_rows(provenance))
    return ("<h2>Provenance</h2><table>" + rows + "</table><p>Files: <a href='metrics.json'>metrics.json</a> "
            "(every reported number, per model, with its confidence interval) · <a href='params.yaml'>params.yaml</a> "
            "(the merged parameters) · <a href='provenance.json'>provenance.json</a> · <a href='run.log'>run.log</a> "
            "(the console output of the run).</p><details><summary>Merged parameters (paths as given)</summary><pre>"
            + e(yaml.safe_dump(dict(params), sort_keys=False)) + "</pre></details>")


# ===================================================================== the pages
def _index_html(title: str, params: Mapping, provenance: Mapping, metrics: Mapping, training, figures,
                notebooks: Sequence[str], sweep: str = "") -> str:
    data = provenance.get("data") or {}
    return "\n".join([
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        "<h1>Vertebral fracture grading with supervised contrastive learning</h1>",
        smoke_banner(params), sweep, answer_section(metrics, data), f"<p>{INTRO}</p>",
        f"<p class='{'synthetic' if data.get('synthetic') else 'note'}'>{dataset_sentence(data)}</p>",
        headline_section(metrics, params, training), field_section(metrics), recipe_section(params),
        figures_section(figures),
        notebooks_section(notebooks, provenance.get("notebook_seconds") or {}, figures),
        provenance_section(provenance, params), "</body></html>", ""])


def _summary_md(title: str, params: Mapping, provenance: Mapping, metrics: Mapping, training, figures,
                notebooks: Sequence[str], sweep: str = "") -> str:
    op = metrics.get("operating_point") or {}
    md = [f"# {title}", ""] + ([f"**{SMOKE_WARNING}**", ""] if params.get("smoke") else [])
    if sweep:
        md += ["This run is one of the runs of a sweep: [the sweep's page](../../index.html) states the answer "
               "across all its runs.", ""]
    answer = run_answer(metrics, bool((provenance.get("data") or {}).get("synthetic")))
    md += (["## The answer on this test set", ""] + [markdown_text(s) + "\n" for s in answer]) if answer else []
    md += ["Reproduction of Wei et al., *Faint Features Tell* (BIBM 2022): SupCon-shaped features versus a "
           "cross-entropy baseline for Genant grading of vertebrae on CT.", "",
           strip_tags(dataset_sentence(provenance.get("data") or {})), "", "## Headline (test set)", ""]
    if metrics.get("models"):
        md += md_table(["Model", *(METRIC_LABELS[k] for k in HEADLINE_METRICS)], headline_rows(metrics))
        md += ["", "95 % CIs by bootstrap over patients. " + _decision_sentence(op, params)]
        md += [""] + [f"- {markdown_text(note)}" for note in headline_notes(metrics, training)]
        if metrics.get("paper"):
            md.append("The paper's row is its own report on its own data, not a result of this run.")
    md += field_markdown(metrics)
    md += ["", "## Recipe: where this run departs from the paper", ""]
    deviations = recipe_deviations(params)
    md += (md_table(["Parameter", "What it sets", "This run", "Paper"],
                    [(f"`{d['key']}`", [d["meaning"], d["value"], d["paper"]]) for d in deviations]) if deviations
           else ["None: every setting that defines the method has the paper's value."])
    md += ["", "## Key figures", ""] + [f"![{f.get('caption', '')}]({f['path']})" for f in figures if f.get("key")]
    seconds = provenance.get("notebook_seconds") or {}
    md += ["", "## Notebooks", ""] + [f"- {NOTEBOOK_TITLES.get(n, n)}: [{n}.html]({n}.html), [{n}.ipynb]({n}.ipynb) "
                                      f"({seconds.get(n, 0):.0f} s)" for n in notebooks]
    md += ["", "## Provenance", ""] + [f"- **{markdown_text(k)}**: {markdown_text(v)}" for k, v in provenance_rows(provenance)]
    md += ["", "Files: [metrics.json](metrics.json), [params.yaml](params.yaml), [provenance.json](provenance.json)", ""]
    return "\n".join(md)


def write_report(run_dir: Path, params: Mapping[str, Any], provenance: Mapping[str, Any],
                 notebooks: Sequence[str] = NOTEBOOKS, name: str | None = None) -> tuple[Path, Path]:
    """Write ``index.html`` and ``summary.md`` of the run in ``run_dir``; return both paths.

    ``params``: the merged parameters as the user gave them (shown on the page);
    ``name``: the run's name for the title (default: the folder's name).
    """
    run_dir = Path(run_dir)
    parts = (f"vfnb study: {name or run_dir.name}", params, provenance, read_json(run_dir / "metrics.json") or {},
             _training(run_dir), figure_index(run_dir), notebooks, sweep_line(run_dir))
    index = atomic_write_text(run_dir / "index.html", _index_html(*parts))
    summary = atomic_write_text(run_dir / "summary.md", _summary_md(*parts))
    return index, summary
