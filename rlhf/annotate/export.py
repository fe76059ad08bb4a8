"""Labels -> preference records: one per item and dimension, by majority vote over annotators.

A "tie" vote abstains: the winner is whichever of A and B has strictly more votes. An item whose
A and B votes are equal (including all-tie items) says nothing about that dimension and is dropped.
``margin`` is the fraction of the item's annotators who voted for the winner (tie voters count in
the denominator), so a reward model can weight or filter pairs by how sure the annotators were.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from rlhf.annotate.store import Item, Label, Store
from rlhf.data.records import DIMENSIONS, PreferenceRecord, write_jsonl

SOURCE = "annotation"


def majority_preference(votes: Sequence[str]) -> tuple[str, float] | None:
    """``["A", "A", "tie"]`` -> ``("A", 2/3)``; None when A and B are level (ties, all-tie, no votes)."""
    a_votes, b_votes = votes.count("A"), votes.count("B")
    if a_votes == b_votes:
        return None
    winner, winner_votes = ("A", a_votes) if a_votes > b_votes else ("B", b_votes)
    return winner, winner_votes / len(votes)


@dataclass
class ExportSummary:
    records: int
    items_labelled: int
    dropped: dict[str, int]  # dimension -> item-dimensions dropped as level


def build_preferences(items: Mapping[int, Item], labels: Sequence[Label]
                      ) -> tuple[list[PreferenceRecord], ExportSummary]:
    by_item: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label)
    records: list[PreferenceRecord] = []
    dropped = {d: 0 for d in DIMENSIONS}
    for item_id in sorted(by_item):
        item, item_labels = items[item_id], by_item[item_id]
        names = ",".join(sorted(label.annotator for label in item_labels))
        for dimension in DIMENSIONS:
            outcome = majority_preference([label.choices[dimension] for label in item_labels])
            if outcome is None:
                dropped[dimension] += 1
                continue
            winner, agreement = outcome
            chosen, rejected = ((item.response_a, item.response_b) if winner == "A"
                                else (item.response_b, item.response_a))
            records.append(PreferenceRecord(prompt=item.prompt, chosen=chosen, rejected=rejected,
                                            dimension=[dimension], margin=round(agreement, 4),
                                            source=SOURCE, annotator=names))
    return records, ExportSummary(records=len(records), items_labelled=len(by_item), dropped=dropped)


def collect_preferences(store: Store) -> tuple[list[PreferenceRecord], ExportSummary]:
    labels = store.labels()  # before the items: items only grow, so every label's item is then there
    return build_preferences(store.items(), labels)


def export_preferences(store: Store, out: str | Path) -> ExportSummary:
    """Write the records with :func:`rlhf.data.records.write_jsonl` (atomic), readable by ``load_preferences``."""
    records, summary = collect_preferences(store)
    write_jsonl(records, out)
    return summary
