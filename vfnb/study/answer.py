"""The study's answer in words: does SupCon beat cross-entropy here, and how do the networks compare with measuring heights?

Two halves, one question:

- :func:`study_comparisons` (notebook 03, into ``metrics.json`` under ``comparisons``):
  each SupCon grader against the cross-entropy baseline, and each network against each
  morphometry grader, as paired patient-bootstrap differences
  (:func:`vfnb.evaluate.paired.paired_difference`) of macro-F1 and the quadratic-weighted kappa;
- :func:`run_answer` (the run's index page) and :func:`sweep_answer` (the sweep page):
  the sentences, computed from those numbers, never typed. A difference whose interval
  holds 0 is said to be one the test set (or the runs) cannot tell apart.

Which SupCon grader speaks for SupCon is the one with the higher test macro-F1 (mean
across runs for a sweep); the sentence says it was chosen so, since choosing on the
test set slightly favours SupCon.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..evaluate import METRIC_RANGE, MISSING, finite_values, mean_interval
from .registry import GRADERS, MODELS, MORPHOMETRY_TITLES, PRETRAINED, model_title

#: The cross-entropy baseline every SupCon grader is compared with.
BASELINE = "ce"
#: The SupCon graders (trained from the SupCon encoder).
SUPCON_MODELS = tuple(m for m in GRADERS if MODELS[m].starts_from == PRETRAINED)
#: The networks (every trained grader) and the morphometry graders ("the ruler").
NETWORKS = GRADERS
MORPHOMETRY = tuple(MORPHOMETRY_TITLES)
#: The metrics the answer is stated in: (metrics.json key, words).
ANSWER_METRICS = (("macro_f1", "macro-F1"), ("quadratic_kappa", "quadratic-weighted kappa"))
PAIRED_METHOD = "paired percentile bootstrap over patients (the same resampled patients for both models)"


def comparison_pairs(models: Sequence[str]) -> list[tuple[str, str]]:
    """``(model, baseline)`` pairs among ``models``: SupCon graders vs CE, then every network vs every morphometry grader."""
    present = set(models)
    pairs = [(m, BASELINE) for m in SUPCON_MODELS if m in present and BASELINE in present]
    pairs += [(n, r) for n in NETWORKS if n in present for r in MORPHOMETRY if r in present]
    return pairs


def comparison_key(model: str, baseline: str) -> str:
    return f"{model} - {baseline}"


def study_comparisons(tables: Mapping[str, Any], thresholds: Mapping[str, float], n_boot: int, seed: int,
                      alpha: float = 0.05) -> dict:
    """``metrics.json``'s ``comparisons``: the paired differences of :func:`comparison_pairs`.

    ``tables``: model -> test predictions (all on the same vertebrae); ``thresholds``:
    model -> operating point. Each entry: ``model``, ``baseline``, ``metrics``
    (name -> ``{"value", "ci_low", "ci_high", "n_valid"}`` of model - baseline),
    ``method``, ``n_boot``, ``seed``, ``confidence``.
    """
    from ..evaluate.metrics import jsonable
    from ..evaluate.paired import paired_difference

    out = {}
    for model, baseline in comparison_pairs(list(tables)):
        diff = paired_difference(tables[model], tables[baseline], [k for k, _ in ANSWER_METRICS],
                                 (thresholds[model], thresholds[baseline]), n_boot=n_boot, seed=seed, alpha=alpha)
        out[comparison_key(model, baseline)] = {
            "model": model, "baseline": baseline, "metrics": {k: v.as_dict() for k, v in diff.items()},
            "method": PAIRED_METHOD, "n_boot": int(n_boot), "seed": int(seed), "confidence": 1.0 - float(alpha)}
    return jsonable(out)


# ===================================================================== words
def _value(entry: Any) -> float | None:
    value = entry.get("value") if isinstance(entry, Mapping) else entry
    return float(value) if finite_values([value]) else None


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return MISSING
    return f"{value:+.2f}".replace("-", "−") if signed else f"{value:.2f}"


def _title(model: str) -> str:
    return model_title(model)


def _baseline_words(baseline: str) -> str:
    return "the cross-entropy baseline" if baseline == BASELINE else _title(baseline)


def side_words(model: str) -> str:
    """A model as the verdict names it: SupCon, cross-entropy, the network, measuring heights."""
    if model in SUPCON_MODELS:
        return "SupCon"
    if model == BASELINE:
        return "cross-entropy"
    return "measuring heights" if model in MORPHOMETRY else _title(model)


def interval_verdict(low: float | None, high: float | None, model: str, baseline: str,
                     where: str = "on this test set") -> str:
    """What an interval of model - baseline says: who is better, or that they cannot be told apart."""
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return "no interval could be computed"
    first = "the network" if model in NETWORKS and baseline in MORPHOMETRY else side_words(model)
    if low > 0:
        return f"{first} is better {where}"
    if high < 0:
        return f"{side_words(baseline)} is better {where}"
    return f"they cannot be told apart {where}"


def best_of(values: Mapping[str, float | None], candidates: Sequence[str]) -> str | None:
    """The candidate with the highest value (the first on a tie); None when none has a value."""
    held = [(values[m], -i, m) for i, m in enumerate(candidates) if values.get(m) is not None]
    return max(held)[2] if held else None


def _metric_points(metrics: Mapping, metric: str) -> dict[str, float | None]:
    return {m: _value((entry.get("metrics") or {}).get(metric)) for m, entry in (metrics.get("models") or {}).items()}


def _difference_clause(metrics: Mapping, model: str, baseline: str, key: str, words: str) -> str:
    """``"macro-F1 0.34 against 0.30, a difference of +0.04 (paired 95 % interval −0.02 to +0.10): they cannot ..."``."""
    points = _metric_points(metrics, key)
    a, b = points.get(model), points.get(baseline)
    head = f"{words} {_num(a)} against {_num(b)}" if a is not None and b is not None else words
    comparison = (metrics.get("comparisons") or {}).get(comparison_key(model, baseline))
    if not comparison:
        diff = None if a is None or b is None else a - b
        return (f"{head}, a difference of {_num(diff, True)} (no paired interval was recorded for this run, so "
                "whether they differ is not stated)")
    d = comparison["metrics"].get(key) or {}
    low, high = _value(d.get("ci_low")), _value(d.get("ci_high"))
    level = 100 * float(comparison.get("confidence") or 0.95)
    interval = (f"paired {level:.0f} % interval {_num(low, True)} to {_num(high, True)}"
                if low is not None and high is not None else "no paired interval: too few valid resamples")
    return f"{head}, a difference of {_num(_value(d), True)} ({interval}): {interval_verdict(low, high, model, baseline)}"


def run_answer(metrics: Mapping, synthetic: bool) -> list[str]:
    """The sentences that open a run's index page (plain text; empty without the models to compare).

    SupCon (its better grader here) against the cross-entropy baseline in macro-F1 and
    kappa; the best network against the best morphometry grader in macro-F1; and what
    the data are.
    """
    models = metrics.get("models") or {}
    f1 = _metric_points(metrics, "macro_f1")
    sentences = []
    supcon = best_of(f1, [m for m in SUPCON_MODELS if m in models])
    if supcon and BASELINE in models:
        chosen = (" (the better SupCon grader on this test set, a choice that favours SupCon slightly)"
                  if sum(m in models for m in SUPCON_MODELS) > 1 else "")
        clauses = [_difference_clause(metrics, supcon, BASELINE, k, w) for k, w in ANSWER_METRICS]
        sentences.append(f"Does SupCon beat cross-entropy? {_title(supcon)}{chosen} against the cross-entropy "
                         f"baseline: {clauses[0]}; {clauses[1]}.")
    network = best_of(f1, [m for m in NETWORKS if m in models])
    ruler = best_of(f1, [m for m in MORPHOMETRY if m in models])
    if network and ruler:
        sentences.append(f"Against measuring heights: the best network ({_title(network)}) against the best "
                         f"morphometry grader ({_title(ruler)}): "
                         f"{_difference_clause(metrics, network, ruler, 'macro_f1', 'macro-F1')}.")
    if sentences:
        test = metrics.get("test") or {}
        size = f"{test.get('vertebrae', '?')} test vertebrae of {test.get('patients', '?')} patients"
        sentences.append(f"These are synthetic data (SynthSpine, {size}): the answer holds for this generator, not for "
                         "patients." if synthetic else f"Measured on {size}.")
    return sentences


# ===================================================================== across a sweep's runs
def _run_difference(run: Mapping, model: str, baseline: str, metric: str) -> float | None:
    a, b = (run["metrics"].get(m, {}).get(metric) for m in (model, baseline))
    return a - b if finite_values([a]) and finite_values([b]) else None


def _run_interval(run: Mapping, model: str, baseline: str, metric: str) -> tuple[float | None, float | None]:
    entry = ((run.get("comparisons") or {}).get(comparison_key(model, baseline)) or {}).get("metrics", {}).get(metric)
    entry = entry or {}
    return _value(entry.get("ci_low")), _value(entry.get("ci_high"))


def run_winner(run: Mapping, model: str, baseline: str, metric: str = "macro_f1") -> str:
    """Who won one run (``"SupCon"``, ``"cross-entropy"``, ``"tie"``), and whether its own paired interval tells them apart."""
    diff = _run_difference(run, model, baseline, metric)
    if diff is None:
        return MISSING
    low, high = _run_interval(run, model, baseline, metric)
    name = side_words(model) if diff > 0 else (side_words(baseline) if diff < 0 else "tie")
    if low is None or high is None:
        return name
    return f"{name}; {'told apart' if low > 0 or high < 0 else 'not told apart'}"


def _mean_over_runs(runs: Sequence[Mapping], model: str, metric: str) -> float | None:
    values = finite_values([r["metrics"].get(model, {}).get(metric) for r in runs])
    return sum(values) / len(values) if values else None


def _sweep_clause(runs: Sequence[Mapping], model: str, baseline: str, key: str, words: str, confidence: float) -> str:
    diffs = [d for d in (_run_difference(r, model, baseline, key) for r in runs) if d is not None]
    if not diffs:
        return f"{words}: not recorded for both by these runs"
    low, high = METRIC_RANGE.get(key, (0.0, 1.0))
    stats = mean_interval(diffs, confidence, bounds=(low - high, high - low))
    won, lost = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    ties = len(diffs) - won - lost
    spread = (f"sd {_num(stats['sd'])}; {100 * confidence:.0f} % t-interval {_num(stats['ci_low'], True)} to "
              f"{_num(stats['ci_high'], True)}" if stats["sd"] is not None else "one run: no spread")
    verdict = interval_verdict(stats["ci_low"], stats["ci_high"], model, baseline, "across these runs")
    verdict = verdict if stats["sd"] is not None else "one run cannot tell them apart"
    intervals = [i for i in (_run_interval(r, model, baseline, key) for r in runs) if None not in i]
    apart = sum(lo > 0 or hi < 0 for lo, hi in intervals)
    within = (f"; within a run, the paired patient-bootstrap interval told them apart in {apart} of {len(intervals)}"
              if intervals else "")
    return (f"in {words}, {_title(model)} won {won} of {len(diffs)} runs and {_baseline_words(baseline)} {lost}"
            + (f" ({ties} ties)" if ties else "")
            + f"; mean difference {_num(stats['mean'], True)} ({spread}): {verdict}{within}")


def sweep_answer(runs: Sequence[Mapping], synthetic: bool, confidence: float = 0.95) -> list[str]:
    """The sentences that open a sweep page, from its finished runs (plain text).

    ``runs``: each ``{"metrics": {model: {metric: value}}, "comparisons": ...}`` (a
    run's ``comparisons`` may be missing). SupCon is the SupCon grader with the higher
    mean macro-F1 across runs; the differences are run by run (same seed or fold).
    """
    if not runs:
        return []
    present = {m for r in runs for m in r["metrics"]}
    mean_f1 = {m: _mean_over_runs(runs, m, "macro_f1") for m in present}
    sentences = []
    supcon = best_of(mean_f1, [m for m in SUPCON_MODELS if m in present])
    n = len(runs)
    if supcon and BASELINE in present:
        chosen = (" (the SupCon grader with the higher mean macro-F1 across runs)"
                  if sum(m in present for m in SUPCON_MODELS) > 1 else "")
        clauses = [_sweep_clause(runs, supcon, BASELINE, k, w, confidence) for k, w in ANSWER_METRICS]
        sentences.append(f"Does SupCon beat cross-entropy? Over {n} run{'s' if n != 1 else ''}, {_title(supcon)}"
                         f"{chosen} against the cross-entropy baseline, run by run: {clauses[0]}; {clauses[1]}.")
    network = best_of(mean_f1, [m for m in NETWORKS if m in present])
    ruler = best_of(mean_f1, [m for m in MORPHOMETRY if m in present])
    if network and ruler:
        sentences.append(f"Against measuring heights: the best network on average ({_title(network)}) against the "
                         f"best morphometry grader ({_title(ruler)}): "
                         f"{_sweep_clause(runs, network, ruler, 'macro_f1', 'macro-F1', confidence)}.")
    if sentences:
        sentences.append("These are synthetic data (SynthSpine): the answer holds for this generator, not for patients."
                         if synthetic else "Measured on the runs' test sets.")
    return sentences


def sweep_answer_rows(runs: Sequence[Mapping]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """``(head, rows)``: per run, the SupCon grader's and the baseline's macro-F1, the difference and who won."""
    present = {m for r in runs for m in r["metrics"]}
    mean_f1 = {m: _mean_over_runs(runs, m, "macro_f1") for m in present}
    supcon = best_of(mean_f1, [m for m in SUPCON_MODELS if m in present])
    if not supcon or BASELINE not in present:
        return [], []
    head = ["Run", "Grid values", f"{_title(supcon)}: macro-F1", "Cross-entropy baseline: macro-F1",
            "Difference [paired 95 % interval]", "Higher (told apart by the run's paired interval?)"]
    rows = []
    for r in runs:
        diff = _run_difference(r, supcon, BASELINE, "macro_f1")
        low, high = _run_interval(r, supcon, BASELINE, "macro_f1")
        interval = f" [{_num(low, True)}, {_num(high, True)}]" if low is not None and high is not None else ""
        rows.append((r["name"], [", ".join(f"{k}={v}" for k, v in (r.get("grid") or {}).items()),
                                 _num(r["metrics"].get(supcon, {}).get("macro_f1")),
                                 _num(r["metrics"].get(BASELINE, {}).get("macro_f1")),
                                 _num(diff, True) + interval, run_winner(r, supcon, BASELINE)]))
    return head, rows
