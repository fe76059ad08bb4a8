"""Inter-annotator agreement as pure functions: Cohen's kappa and Krippendorff's alpha (nominal and ordinal,
through the ``krippendorff`` package).

Both return ``nan`` where the statistic is undefined (no data, or no variation at all: expected
disagreement is 0 and the ratio is 0/0). Callers decide how to show that; averaging skips it.
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Hashable, Iterable, Literal, Mapping, Sequence


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


def krippendorff_alpha(units: Iterable[Iterable[Hashable | None]], level: Literal["nominal", "ordinal"] = "nominal",
                       order: Sequence[Hashable] | None = None) -> float:
    """Krippendorff's alpha through the ``krippendorff`` package; each unit is the values its coders gave
    (``None`` = missing), so units may have different numbers of coders.

    ``ordinal`` needs ``order``, the values from lowest to highest (A better < tie < B better): a one-step
    disagreement (A vs tie) then counts less than A vs B. Units with fewer than two values are not pairable;
    no pairable value, or a single value used throughout, gives ``nan``.
    """
    import krippendorff
    import numpy as np

    units = [[v for v in unit if v is not None] for unit in units]
    units = [unit for unit in units if len(unit) >= 2]
    values = {v for unit in units for v in unit}
    if len(values) < 2:
        return math.nan
    if level == "ordinal":
        if order is None or values - set(order):
            raise ValueError(f"ordinal alpha: values {sorted(map(str, values - set(order or ())))} are not in `order`")
        rank = {v: i for i, v in enumerate(order)}
    else:
        rank = {v: i for i, v in enumerate(sorted(values, key=str))}
    # The package takes coders x units; which coder gave a value does not matter to alpha, only the unit.
    data = np.full((max(len(u) for u in units), len(units)), np.nan)
    for j, unit in enumerate(units):
        data[:len(unit), j] = [rank[v] for v in unit]
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                                    value_domain=sorted(set(rank.values()))))


def krippendorff_alpha_nominal(units: Iterable[Iterable[Hashable | None]]) -> float:
    """Krippendorff's alpha for nominal data (:func:`krippendorff_alpha`)."""
    return krippendorff_alpha(units, "nominal")


def krippendorff_alpha_ordinal(units: Iterable[Iterable[Hashable | None]], order: Sequence[Hashable]) -> float:
    """Krippendorff's alpha for ordered values, ``order`` from lowest to highest (:func:`krippendorff_alpha`)."""
    return krippendorff_alpha(units, "ordinal", order)
