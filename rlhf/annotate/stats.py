"""``rlhf annotate stats``: counts, ties, agreement (kappa, alpha) per dimension, and time per item."""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Sequence

from rlhf.annotate.agreement import krippendorff_alpha_nominal, krippendorff_alpha_ordinal, mean_pairwise_kappa
from rlhf.annotate.store import CHOICES, SKIP_KINDS, Label, Skip
from rlhf.data.records import DIMENSIONS

ORDER = ("A", "tie", "B")  # the choices as a scale: A better < tie < B better


@dataclass
class DimensionStats:
    dimension: str
    counts: dict[str, int]  # choice -> labels
    tie_fraction: float
    kappa: float  # Cohen's kappa averaged over annotator pairs, on the items each pair shares
    kappa_pairs: int
    alpha: float  # Krippendorff's alpha (nominal) over all items with two or more labels
    alpha_ordinal: float  # the same, ordinal: A better < tie < B better, so A vs tie is half a disagreement


@dataclass
class AnnotationStats:
    items: int
    assignments: int
    labels: int
    items_labelled: int
    items_multiply_labelled: int  # the items agreement is measured on
    labels_per_annotator: dict[str, int]
    skips: dict[str, int]  # "skip" (cannot judge) / "flag" (something wrong with the item) -> assignments
    skip_reasons: dict[str, int]  # reason -> how often it was given, most frequent first
    seconds_per_item_mean: float
    seconds_per_item_median: float
    dimensions: list[DimensionStats]

    def to_dict(self) -> dict:
        # JSON has no NaN: undefined statistics become null.
        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value
        return clean(asdict(self))


def compute_stats(labels: Sequence[Label], counts: dict[str, int], skips: Sequence[Skip] = ()) -> AnnotationStats:
    by_item: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label)
    dimensions = []
    for dimension in DIMENSIONS:
        choice_counts = Counter(label.choices[dimension] for label in labels)
        by_annotator: dict[str, dict[int, str]] = defaultdict(dict)
        for label in labels:
            by_annotator[label.annotator][label.item_id] = label.choices[dimension]
        kappa, pairs = mean_pairwise_kappa(by_annotator)
        units = [[lb.choices[dimension] for lb in group] for group in by_item.values()]
        alpha = krippendorff_alpha_nominal(units)
        dimensions.append(DimensionStats(
            dimension=dimension, counts={c: choice_counts.get(c, 0) for c in CHOICES},
            tie_fraction=choice_counts.get("tie", 0) / len(labels) if labels else math.nan,
            kappa=kappa, kappa_pairs=pairs, alpha=alpha, alpha_ordinal=krippendorff_alpha_ordinal(units, ORDER)))
    seconds = [label.seconds_spent for label in labels if label.seconds_spent is not None]
    return AnnotationStats(
        items=counts["items"], assignments=counts["assignments"], labels=len(labels),
        items_labelled=len(by_item), items_multiply_labelled=sum(len(g) >= 2 for g in by_item.values()),
        labels_per_annotator=dict(sorted(Counter(label.annotator for label in labels).items())),
        skips={kind: sum(s.kind == kind for s in skips) for kind in SKIP_KINDS},
        skip_reasons=dict(Counter(s.reason for s in skips).most_common()),
        seconds_per_item_mean=statistics.fmean(seconds) if seconds else math.nan,
        seconds_per_item_median=statistics.median(seconds) if seconds else math.nan,
        dimensions=dimensions)


def format_stats(stats: AnnotationStats) -> str:
    def num(value: float, fmt: str = ".3f") -> str:
        return "-" if math.isnan(value) else format(value, fmt)

    lines = [
        f"items {stats.items}, assignments {stats.assignments}, labels {stats.labels} "
        f"({stats.items_labelled} items labelled, {stats.items_multiply_labelled} by two or more annotators)",
        "labels per annotator: " + (", ".join(f"{n} {c}" for n, c in stats.labels_per_annotator.items()) or "-"),
        f"skipped {stats.skips['skip']}, flagged {stats.skips['flag']}"
        + ("; reasons: " + ", ".join(f"{r!r} {c}" for r, c in stats.skip_reasons.items()) if stats.skip_reasons else ""),
        f"time per item: mean {num(stats.seconds_per_item_mean, '.1f')} s, "
        f"median {num(stats.seconds_per_item_median, '.1f')} s",
        f"{'dimension':10s} {'A':>6s} {'B':>6s} {'tie':>6s} {'ties':>6s} {'kappa':>7s} {'pairs':>6s} {'alpha':>7s} {'ordinal':>7s}",
    ]
    for d in stats.dimensions:
        lines.append(f"{d.dimension:10s} {d.counts['A']:6d} {d.counts['B']:6d} {d.counts['tie']:6d} "
                     f"{num(d.tie_fraction, '.0%'):>6s} {num(d.kappa):>7s} {d.kappa_pairs:6d} {num(d.alpha):>7s} "
                     f"{num(d.alpha_ordinal):>7s}")
    return "\n".join(lines)
