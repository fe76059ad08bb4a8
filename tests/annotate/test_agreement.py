"""Cohen's kappa and Krippendorff's alpha against hand-computed and published values, and a slow reference."""
from __future__ import annotations

import math
import random

import pytest

from rlhf.annotate.agreement import (cohen_kappa, krippendorff_alpha, krippendorff_alpha_nominal,
                                     krippendorff_alpha_ordinal, mean_pairwise_kappa)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12 units,
# nominal values 1-5, None = missing. The paper gives alpha = 0.743 for nominal data.
KRIPPENDORFF_2011_OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def units_of(observers):
    return [list(unit) for unit in zip(*observers)]


def alpha_reference(units) -> float:
    """Slow, literal definition: alpha = 1 - D_o / D_e over all ordered pairs of pairable values."""
    pairable = [[v for v in unit if v is not None] for unit in units]
    pairable = [unit for unit in pairable if len(unit) >= 2]
    values = [v for unit in pairable for v in unit]
    n = len(values)
    observed = sum(sum(a != b for i, a in enumerate(u) for j, b in enumerate(u) if i != j) / (len(u) - 1)
                   for u in pairable) / n
    expected = sum(a != b for i, a in enumerate(values) for j, b in enumerate(values) if i != j) / (n * (n - 1))
    return 1 - observed / expected


def test_kappa_two_by_two_worked_by_hand():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = (25/50)(30/50) + (25/50)(20/50) = 0.3 + 0.2 = 0.5; kappa = 0.2 / 0.5 = 0.4.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_three_choices_worked_by_hand():
    # agree on 7 of 10 -> p_o = 0.7; both use A 5x, B 3x, tie 2x -> p_e = (25 + 9 + 4) / 100 = 0.38;
    # kappa = (0.7 - 0.38) / (1 - 0.38) = 0.32 / 0.62 = 16/31.
    a = ["A", "A", "A", "A", "B", "B", "B", "tie", "tie", "A"]
    b = ["A", "A", "A", "B", "B", "B", "tie", "tie", "A", "A"]
    assert cohen_kappa(a, b) == pytest.approx(16 / 31)


def test_kappa_edge_cases():
    assert cohen_kappa(["A", "B", "tie"], ["A", "B", "tie"]) == pytest.approx(1.0)
    assert cohen_kappa(["A", "B"], ["B", "A"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["A", "A"], ["A", "A"]))  # p_e = 1: undefined, not "perfect"
    assert math.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match="paired"):
        cohen_kappa(["A"], ["A", "B"])


def test_mean_pairwise_kappa_uses_shared_items_only():
    labels = {
        "a": {1: "A", 2: "B", 3: "A", 4: "B"},
        "b": {1: "A", 2: "B", 3: "A", 4: "B"},  # kappa(a, b) = 1
        "c": {5: "A", 6: "B"},  # shares no item with anyone: left out
        "d": {1: "B", 2: "A"},  # kappa with a and with b on items 1, 2: p_o = 0, p_e = 0.5 -> -1
    }
    kappa, pairs = mean_pairwise_kappa(labels)
    assert pairs == 3
    assert kappa == pytest.approx((1 - 1 - 1) / 3)


def test_alpha_krippendorff_2011_nominal_example():
    assert krippendorff_alpha_nominal(units_of(KRIPPENDORFF_2011_OBSERVERS)) == pytest.approx(0.743, abs=5e-4)


def test_alpha_krippendorff_2011_binary_two_observers():
    # Same paper, section A: two observers, ten units; alpha = 1 - 19 * 4 / (14 * 6) = 0.095.
    a = [0, 1, 0, 0, 0, 0, 0, 0, 1, 0]
    b = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert krippendorff_alpha_nominal(units_of([a, b])) == pytest.approx(1 - 76 / 84)
    assert krippendorff_alpha_nominal(units_of([a, b])) == pytest.approx(0.095, abs=5e-4)


def test_alpha_matches_slow_reference_on_random_data():
    rng = random.Random(7)
    for _ in range(20):
        units = [[rng.choice(["A", "B", "tie", None]) for _ in range(rng.randint(1, 4))] for _ in range(30)]
        assert krippendorff_alpha_nominal(units) == pytest.approx(alpha_reference(units))


def test_alpha_edge_cases():
    assert krippendorff_alpha_nominal([["A", "A"], ["B", "B"], ["tie", "tie"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha_nominal([["A", "A"], ["A", "A"]]))  # no variation: undefined
    assert math.isnan(krippendorff_alpha_nominal([["A"], ["B", None]]))  # nothing pairable


def test_alpha_krippendorff_2011_ordinal_example():
    # The same data as ordinal values 1 < 2 < ... < 5: the paper gives alpha = 0.815.
    alpha = krippendorff_alpha_ordinal(units_of(KRIPPENDORFF_2011_OBSERVERS), order=[1, 2, 3, 4, 5])
    assert alpha == pytest.approx(0.815, abs=5e-4)


def test_ordinal_alpha_counts_a_near_miss_as_less_disagreement():
    # Both label sets disagree on unit 1 only: A vs tie (one step) or A vs B (the whole scale).
    near = [["A", "tie"], ["A", "A"], ["B", "B"], ["tie", "tie"]]
    far = [["A", "B"], ["A", "A"], ["B", "B"], ["tie", "tie"]]
    order = ["A", "tie", "B"]
    assert krippendorff_alpha_ordinal(near, order) > krippendorff_alpha_ordinal(far, order)
    assert krippendorff_alpha_nominal(near) == pytest.approx(krippendorff_alpha_nominal(far))  # nominal: the same
    with pytest.raises(ValueError, match="not in `order`"):
        krippendorff_alpha(near, "ordinal", order=["A", "B"])
