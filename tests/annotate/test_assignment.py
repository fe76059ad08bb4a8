"""Balanced assignment: k distinct annotators per item, loads within one, gaps filled idempotently."""
from __future__ import annotations

from collections import Counter

import pytest

from rlhf.annotate.assignment import plan_assignments


def loads_of(pairs):
    return Counter(annotator for _, annotator in pairs)


@pytest.mark.parametrize("items, annotators, k", [(10, 4, 2), (7, 3, 2), (11, 5, 3), (5, 5, 5)])
def test_every_item_gets_k_distinct_annotators_and_loads_stay_within_one(items, annotators, k):
    pairs = plan_assignments(list(range(items)), list(range(annotators)), k, already={}, load={})
    per_item = Counter(item for item, _ in pairs)
    assert all(per_item[i] == k for i in range(items))
    assert len(set(pairs)) == len(pairs)  # never the same annotator twice on one item
    loads = loads_of(pairs)
    assert max(loads.values()) - min(loads.get(a, 0) for a in range(annotators)) <= 1


def test_ties_are_broken_at_random_so_pairs_vary():
    pairs = plan_assignments(list(range(40)), list(range(4)), 2, already={}, load={})
    by_item: dict[int, set[int]] = {}
    for item, annotator in pairs:
        by_item.setdefault(item, set()).add(annotator)
    distinct_pairs = {frozenset(s) for s in by_item.values()}
    assert len(distinct_pairs) >= 4  # of 6 possible; fixed tie-breaking would give only 2


def test_existing_assignments_are_kept_and_only_gaps_filled():
    already = {0: {0, 1}, 1: {2}}
    pairs = plan_assignments([0, 1, 2], [0, 1, 2, 3], 2, already=already, load={0: 1, 1: 1, 2: 1})
    assert not [p for p in pairs if p[0] == 0]  # item 0 already has two
    assert len([p for p in pairs if p[0] == 1]) == 1 and (1, 2) not in pairs
    assert len([p for p in pairs if p[0] == 2]) == 2
    assert 3 in {a for _, a in pairs}  # the idle annotator is used first


def test_seeded_plans_are_reproducible():
    args = (list(range(20)), list(range(5)), 2)
    assert plan_assignments(*args, already={}, load={}, seed=3) == plan_assignments(*args, already={}, load={}, seed=3)


def test_too_few_annotators_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 3 different annotators but only 2 exist"):
        plan_assignments([1], [1, 2], 3, already={}, load={})
    with pytest.raises(ValueError, match="at least 1"):
        plan_assignments([1], [1, 2], 0, already={}, load={})
