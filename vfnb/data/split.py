"""Patient-grouped, grade-stratified split lists for a processed dataset.

Writes ``train_file_list.<tag>.yaml``, ``val_file_list.<tag>.yaml`` and
``test_file_list.<tag>.yaml`` (YAML lists of patch file names, see
:mod:`vfnb.data.processed`). Every vertebra of one CT (image id) lands in the
same list, always. CTs are stratified by their *worst* Genant grade, so fractured
CTs spread over the lists in proportion as far as the counts allow.

- ``folds=1``: ``test_fraction`` of the CTs go to test; ``val_fraction`` of the
  remaining (training) CTs go to validation.
- ``folds=k>1``: tags ``<tag>-f0`` .. ``<tag>-f{k-1}``; fold i's test list is the
  i-th of k disjoint CT groups; its validation list is ``val_fraction`` of that
  fold's training CTs.

- ``test_only``: CTs (image ids) that join every test list written and never a
  training or validation list, e.g. a fracture-enriched test cohort. The other CTs
  are split exactly as without them. Such a test set's prevalence is not the
  population's, so its PPV and NPV are not population values.
- ``val_only``: CTs that join every validation list written and never a training
  or test list, e.g. a fracture-enriched validation cohort, so that model selection
  rests on more fractured vertebrae. The other CTs are split exactly as without them.

How CTs are assigned (systematic stratified sampling): CTs are ordered by worst
grade, shuffled within each grade with the seed, and a list's share is taken at
evenly spaced positions along that order (random phase). Each grade then
contributes ``share x count`` CTs, within one, and the total is exact.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ..errors import DatasetError, ParamsError
from ..levels import GRADES
from .processed import SPLITS, ProcessedDataset, check_tag, list_path, write_file_list


def _stratified_order(worst_by_ct: dict[str, int], rng: np.random.Generator) -> list[str]:
    """CT ids grouped by worst grade (severe first), shuffled within each grade."""
    order = []
    for grade in sorted(set(worst_by_ct.values()), reverse=True):
        ids = sorted(ct for ct, g in worst_by_ct.items() if g == grade)
        order += [ids[i] for i in rng.permutation(len(ids))]
    return order


def _take_share(order: list[str], count: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Pick ``count`` CTs at evenly spaced positions of ``order``; returns ``(picked, rest)``."""
    n = len(order)
    if count <= 0:
        return [], list(order)
    phase = rng.random()
    # position p is picked when the running count floor(p*count/n + phase) steps up: exactly `count` picks
    picked_mask = [np.floor((p + 1) * count / n + phase) > np.floor(p * count / n + phase) for p in range(n)]
    picked = [ct for ct, m in zip(order, picked_mask) if m]
    rest = [ct for ct, m in zip(order, picked_mask) if not m]
    return picked, rest


def _share_count(n: int, fraction: float) -> int:
    """round(n * fraction), at least one when the fraction is positive, leaving at least one CT."""
    if fraction <= 0 or n < 2:
        return 0
    return min(max(1, int(round(n * fraction))), n - 1)


def _fold_groups(order: list[str], folds: int, rng: np.random.Generator) -> list[list[str]]:
    start = int(rng.integers(folds))
    groups = [[] for _ in range(folds)]
    for p, ct in enumerate(order):
        groups[(p + start) % folds].append(ct)
    return groups


def _fixed_cts(root: Path, fixed, worst_by_ct: dict, kind: str) -> set[str]:
    """The ``test_only`` / ``val_only`` image ids (``kind``), each checked to be a CT of the dataset."""
    ids = {str(ct) for ct in fixed}
    missing = sorted(ids - set(worst_by_ct))
    if missing:
        raise DatasetError(f"{root}: {kind} CT(s) {missing[:3]} have no patches in img/; expected image ids "
                           "of the dataset")
    return ids


def _check_params(folds, val_fraction, test_fraction) -> None:
    if not isinstance(folds, (int, np.integer)) or isinstance(folds, bool) or folds < 1:
        raise ParamsError(f"folds={folds!r}: expected an integer >= 1")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ParamsError(f"val_fraction={val_fraction!r}: expected a fraction in [0, 1)")
    if folds == 1 and not 0.0 <= float(test_fraction) < 1.0:
        raise ParamsError(f"test_fraction={test_fraction!r}: expected a fraction in [0, 1)")


def format_split_counts(counts: dict) -> str:
    """Text table: one line per tag and list with CTs and vertebrae per Genant grade."""
    lines = [f"{'tag':<14}{'list':<6}{'CTs':>5}" + "".join(f"{'g' + str(g):>6}" for g in GRADES) + f"{'total':>7}"]
    for tag, per_split in counts.items():
        for split, c in per_split.items():
            lines.append(f"{tag:<14}{split:<6}{c['cts']:>5}" + "".join(f"{c['grades'][g]:>6}" for g in GRADES)
                         + f"{c['vertebrae']:>7}")
    return "\n".join(lines)


def split_dataset(processed, tag: str, folds: int = 1, val_fraction: float = 0.2, test_fraction: float = 0.2,
                  seed: int = 0, overwrite: bool = False, verbose: bool = True, test_only=(), val_only=()) -> dict:
    """Write patient-grouped, worst-grade-stratified train/val/test lists for ``processed``.

    Returns ``{tag: {split: {"cts": n, "vertebrae": n, "grades": {0: n, 1: n, 2: n, 3: n}}}}``
    (one tag, or ``<tag>-f0`` .. for ``folds > 1``) and prints it when ``verbose``.
    Deterministic for a given ``seed``. Refuses to replace existing lists of a tag
    it would write unless ``overwrite``. The dataset is checked first
    (:func:`vfnb.data.check.require_valid`). ``test_only``: image ids placed in every
    test list and in no other; ``val_only``: in every validation list and in no other
    (each must be a CT of the dataset, and none both).
    """
    from .check import require_valid

    check_tag(tag)
    _check_params(folds, val_fraction, test_fraction)
    root = Path(processed)
    tags = [tag] if folds == 1 else [f"{tag}-f{i}" for i in range(folds)]
    existing = [list_path(root, s, t) for t in tags for s in SPLITS if list_path(root, s, t).exists()]
    if existing and not overwrite:
        raise DatasetError(f"{existing[0]}: list already exists (tag {tag!r}; choose another tag, "
                           "or pass overwrite=True / --overwrite)")
    require_valid(root)
    dataset = ProcessedDataset(root)
    names_by_ct: dict[str, list[str]] = defaultdict(list)
    worst_by_ct: dict[str, int] = {}
    grade_of = {}
    for patch in dataset.patches:
        names_by_ct[patch.image_id].append(patch.filename)
        worst_by_ct[patch.image_id] = max(worst_by_ct.get(patch.image_id, 0), patch.grade)
        grade_of[patch.filename] = patch.grade
    fixed_test = _fixed_cts(root, test_only, worst_by_ct, "test-only")
    fixed_val = _fixed_cts(root, val_only, worst_by_ct, "validation-only")
    both = sorted(fixed_test & fixed_val)
    if both:
        raise ParamsError(f"{root}: CT(s) {both[:3]} are named both test-only and validation-only; expected each in one")
    worst_by_ct = {ct: g for ct, g in worst_by_ct.items() if ct not in fixed_test | fixed_val}
    n_cts = len(worst_by_ct)
    needed = max(folds, 2) if (folds > 1 or test_fraction > 0) else 1
    if n_cts < needed:
        raise DatasetError(f"{root}: {n_cts} CT(s) in img/, too few for this split (need at least {needed})")

    rng = np.random.default_rng(seed)
    order = _stratified_order(worst_by_ct, rng)
    plans = []  # (tag, train order, test ids)
    if folds == 1:
        test, rest = _take_share(order, _share_count(n_cts, test_fraction), rng)
        plans.append((tag, rest, test))
    else:
        groups = _fold_groups(order, folds, rng)
        for i, test in enumerate(groups):
            test_set = set(test)
            plans.append((tags[i], [ct for ct in order if ct not in test_set], test))

    counts = {}
    for plan_tag, train_order, test in plans:
        val, train = _take_share(train_order, _share_count(len(train_order), val_fraction), rng)
        counts[plan_tag] = {}
        for split, cts in (("train", train), ("val", list(val) + sorted(fixed_val)),
                           ("test", list(test) + sorted(fixed_test))):
            names = sorted(n for ct in cts for n in names_by_ct[ct])
            write_file_list(root, split, plan_tag, names)
            grades = Counter(grade_of[n] for n in names)
            counts[plan_tag][split] = {"cts": len(cts), "vertebrae": len(names),
                                       "grades": {g: grades.get(g, 0) for g in GRADES}}
    if verbose:
        print(format_split_counts(counts))
    return counts
