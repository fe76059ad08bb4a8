"""Which annotators label which item: each item to k distinct annotators, loads kept balanced."""
from __future__ import annotations

import random
from typing import Mapping, Sequence


def plan_assignments(item_ids: Sequence[int], annotator_ids: Sequence[int], k: int,
                     already: Mapping[int, set[int]], load: Mapping[int, int],
                     seed: int = 0) -> list[tuple[int, int]]:
    """New ``(item_id, annotator_id)`` pairs so every item has ``k`` distinct annotators.

    ``already[item]`` are the annotators an item has, ``load[annotator]`` how many items each holds.
    Each item goes to the least-loaded annotators it does not have yet, so when loads start within
    one of each other they end within one. Ties are broken at random (seeded) rather than by id:
    fixed tie-breaking would pair the same two annotators on every item, and pairwise kappa
    needs many different pairs.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > len(annotator_ids):
        raise ValueError(f"each item needs {k} different annotators but only {len(annotator_ids)} exist "
                         "(add more with `rlhf annotate add-annotator NAME`)")
    rng = random.Random(seed)
    loads = {a: load.get(a, 0) for a in annotator_ids}
    planned: list[tuple[int, int]] = []
    for item in item_ids:
        have = already.get(item, set())
        missing = k - len(have)
        if missing <= 0:
            continue
        candidates = [a for a in annotator_ids if a not in have]
        rng.shuffle(candidates)  # random tie order; the stable sort below keeps it among equal loads
        candidates.sort(key=loads.__getitem__)
        for annotator in candidates[:missing]:
            planned.append((item, annotator))
            loads[annotator] += 1
    return planned
