"""Inter-annotator agreement as pure functions: Cohen's kappa and Krippendorff's alpha (nominal).

Both return ``nan`` where the statistic is undefined (no data, or no variation at all: expected
disagreement is 0 and the ratio is 0/0). Callers decide how to show that; averaging skips it.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Hashable, Iterable, Mapping, Sequence


def cohen_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two annotators who labelled the same items (``labels_a[i]`` and ``labels_b[i]``).

    kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement and p_e the agreement expected if
    each annotator drew labels independently from their own label distribution.
    """
    if len(labels_a) != len(labels_b):
        raise ValueError(f"kappa needs paired labels, got {len(labels_a)} and {len(labels_b)}")
    n = len(labels_a)
    if n == 0:
        return math.nan
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / n
    counts_a, counts_b = Counter(labels_a), Counter(labels_b)
    expected = sum(counts_a[c] * counts_b[c] for c in counts_a) / (n * n)
    if expected == 1.0:  # both used one and the same label throughout: agreement cannot beat chance
        return math.nan
    return (observed - expected) / (1.0 - expected)


def mean_pairwise_kappa(labels_by_annotator: Mapping[str, Mapping[Hashable, Hashable]]) -> tuple[float, int]:
    """Cohen's kappa averaged over annotator pairs, each pair on the items both labelled.

    ``labels_by_annotator[name][item] = label``. Returns ``(mean kappa, pairs averaged)``; pairs
    with no co-labelled item or an undefined kappa are left out of the mean.
    """
    kappas = []
    for (_, first), (_, second) in itertools.combinations(sorted(labels_by_annotator.items()), 2):
        shared = list(first.keys() & second.keys())  # order is irrelevant: pairs stay aligned by item
        if not shared:
            continue
        kappa = cohen_kappa([first[i] for i in shared], [second[i] for i in shared])
        if not math.isnan(kappa):
            kappas.append(kappa)
    return (sum(kappas) / len(kappas) if kappas else math.nan), len(kappas)


def krippendorff_alpha_nominal(units: Iterable[Iterable[Hashable | None]]) -> float:
    """Krippendorff's alpha for nominal data; each unit is the values its coders gave (``None`` = missing).

    Built from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"):
    a unit with m values adds ``1/(m-1)`` for every ordered pair of its values. Units with fewer than
    two values are not pairable and are ignored. alpha = 1 - (n - 1) * D_o / D_e with
    D_o = sum of off-diagonal coincidences, D_e = sum over c != k of n_c * n_k.
    """
    coincidences: Counter[tuple[Hashable, Hashable]] = Counter()
    for unit in units:
        values = Counter(v for v in unit if v is not None)
        m = sum(values.values())
        if m < 2:
            continue
        for c, k in itertools.product(values, repeat=2):
            pairs = values[c] * (values[k] - (c == k))
            coincidences[c, k] += pairs / (m - 1)
    value_totals: Counter[Hashable] = Counter()
    for (c, _), count in coincidences.items():
        value_totals[c] += count
    n = sum(value_totals.values())
    observed = sum(count for (c, k), count in coincidences.items() if c != k)
    expected = sum(value_totals[c] * value_totals[k] for c, k in itertools.permutations(value_totals, 2))
    if n == 0 or expected == 0:  # nothing pairable, or a single value used throughout
        return math.nan
    return 1.0 - (n - 1) * observed / expected
