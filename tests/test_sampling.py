"""Class-balanced batch sampling (STUDY §1.5)."""

from __future__ import annotations

from collections import Counter

import pytest

from vfnb.data.sampling import ClassBalancedBatchSampler
from vfnb.errors import ParamsError

# 40 of grade 0, 10 of grade 1, 7 of grade 2, 13 of grade 3, interleaved
GRADES = [0] * 40 + [1] * 10 + [2] * 7 + [3] * 13
GRADES = [GRADES[(i * 37) % len(GRADES)] for i in range(len(GRADES))]


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


def test_balanced_epoch_is_smallest_grade_over_k_without_replacement():
    sampler = ClassBalancedBatchSampler(GRADES, per_grade=3, seed=1)
    batches = _epoch(sampler, 0)
    assert len(sampler) == len(batches) == 7 // 3
    for batch in batches:
        assert Counter(GRADES[i] for i in batch) == {0: 3, 1: 3, 2: 3, 3: 3}
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))  # no vertebra twice in an epoch


def test_deterministic_per_seed_and_epoch():
    a = ClassBalancedBatchSampler(GRADES, per_grade=2, seed=3)
    b = ClassBalancedBatchSampler(GRADES, per_grade=2, seed=3)
    assert _epoch(a, 4) == _epoch(b, 4)
    assert _epoch(a, 4) != _epoch(a, 5)
    c = ClassBalancedBatchSampler(GRADES, per_grade=2, seed=4)
    assert _epoch(a, 4) != _epoch(c, 4)
    # all grade-2 vertebrae are seen every epoch (7 // 2 = 3 batches -> 6 of 7)
    seen = Counter(GRADES[i] for b in _epoch(a, 0) for i in b)
    assert seen[2] == 6


def test_ranks_get_disjoint_vertebrae_within_each_step():
    world = 2
    samplers = [ClassBalancedBatchSampler(GRADES, per_grade=3, seed=0, rank=r, world_size=world) for r in range(world)]
    per_rank = [_epoch(s, 2) for s in samplers]
    assert all(len(p) == 7 // (3 * world) == len(s) for p, s in zip(per_rank, samplers))
    for step in range(len(per_rank[0])):
        a, b = set(per_rank[0][step]), set(per_rank[1][step])
        assert not a & b
        assert Counter(GRADES[i] for i in per_rank[0][step]) == {0: 3, 1: 3, 2: 3, 3: 3}


def test_replacement_mode_makes_longer_epochs():
    sampler = ClassBalancedBatchSampler(GRADES, per_grade=3, mode="replacement", batches_per_epoch=20, seed=0)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        assert Counter(GRADES[i] for i in batch) == {0: 3, 1: 3, 2: 3, 3: 3}
        assert len(set(batch)) == len(batch)
    seen = Counter(i for b in batches for i in b)
    assert max(seen.values()) > 1  # with replacement across batches
    # two ranks: disjoint within a step too
    r0 = _epoch(ClassBalancedBatchSampler(GRADES, 3, "replacement", 5, seed=0, rank=0, world_size=2), 1)
    r1 = _epoch(ClassBalancedBatchSampler(GRADES, 3, "replacement", 5, seed=0, rank=1, world_size=2), 1)
    assert all(not set(a) & set(b) for a, b in zip(r0, r1))
    # default length: as many batches as a balanced epoch
    assert len(ClassBalancedBatchSampler(GRADES, 3, "replacement")) == 2


def test_refuses_what_cannot_be_balanced():
    with pytest.raises(ParamsError, match="grade 2 has only 7"):
        ClassBalancedBatchSampler(GRADES, per_grade=8)
    with pytest.raises(ParamsError, match="replacement"):
        ClassBalancedBatchSampler(GRADES, per_grade=3, world_size=3, rank=0)
    with pytest.raises(ParamsError, match="batches_per_epoch"):
        ClassBalancedBatchSampler(GRADES, per_grade=3, batches_per_epoch=4)
    with pytest.raises(ParamsError, match="mode"):
        ClassBalancedBatchSampler(GRADES, mode="shuffled")
    with pytest.raises(ParamsError, match="empty"):
        ClassBalancedBatchSampler([], per_grade=1)


# ------------------------------------------------------------------ samples for figures
def test_pick_per_grade_draws_each_grade_once_in_record_order():
    from vfnb.data.sampling import pick_per_grade

    records = [{"name": f"v{i}", "grade": g} for i, g in enumerate(GRADES)]
    picked = pick_per_grade(records, 4, seed=3)
    assert [r["grade"] for r in picked] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    for grade in range(4):
        names = [r["name"] for r in picked if r["grade"] == grade]
        positions = [int(n[1:]) for n in names]
        assert positions == sorted(positions) and len(set(names)) == 4
    assert pick_per_grade(records, 4, seed=3) == picked and pick_per_grade(records, 4, seed=4) != picked
    few = pick_per_grade([r for r in records if r["grade"] != 2], 50, seed=0)
    assert Counter(r["grade"] for r in few) == {0: 40, 1: 10, 3: 13}  # all of each, no grade 2


def test_subsample_keeps_order_and_size():
    from vfnb.data.sampling import subsample

    assert list(subsample(5, 10)) == [0, 1, 2, 3, 4]
    chosen = subsample(100, 7, seed=1)
    assert len(chosen) == 7 and list(chosen) == sorted(set(chosen)) and list(subsample(100, 7, seed=1)) == list(chosen)
