"""Majority vote per item and dimension -> preference records that rlhf.data.records reads unchanged."""
from __future__ import annotations

import pytest

from rlhf.annotate.export import build_preferences, export_preferences, majority_preference
from rlhf.annotate.store import Item, Label
from rlhf.data.records import load_preferences


@pytest.mark.parametrize("votes, expected", [
    (["A", "A"], ("A", 1.0)),
    (["B", "B", "A"], ("B", 2 / 3)),
    (["A", "tie"], ("A", 0.5)),  # a tie vote abstains but counts in the margin's denominator
    (["A", "tie", "tie"], ("A", 1 / 3)),
    (["A", "B"], None),  # level: dropped
    (["A", "B", "tie"], None),
    (["tie", "tie"], None),  # all-tie: dropped
    ([], None),
])
def test_majority_preference(votes, expected):
    assert majority_preference(votes) == expected


def label(item_id, annotator, helpful, honest, harmless):
    return Label(item_id=item_id, annotator=annotator, rationale="", seconds_spent=None, submitted_at=0.0,
                 choices={"helpful": helpful, "honest": honest, "harmless": harmless})


ITEMS = {1: Item(1, "i1", "Prompt one", "one A", "one B", None), 2: Item(2, "i2", "Prompt two", "two A", "two B", None),
         3: Item(3, "i3", "Never labelled", "x", "y", None)}
LABELS = [label(1, "bob", "A", "B", "tie"), label(1, "alice", "A", "tie", "tie"),
          label(2, "carol", "B", "A", "A"), label(2, "alice", "B", "B", "tie")]


def test_build_preferences_one_record_per_item_and_decided_dimension():
    records, summary = build_preferences(ITEMS, LABELS)
    got = [(r.prompt, r.chosen, r.rejected, r.dimension, r.margin, r.source, r.annotator) for r in records]
    assert got == [
        ("Prompt one", "one A", "one B", ["helpful"], 1.0, "annotation", "alice,bob"),
        ("Prompt one", "one B", "one A", ["honest"], 0.5, "annotation", "alice,bob"),
        ("Prompt two", "two B", "two A", ["helpful"], 1.0, "annotation", "alice,carol"),
        ("Prompt two", "two A", "two B", ["harmless"], 0.5, "annotation", "alice,carol"),
    ]
    # item 1 harmless is all-tie, item 2 honest is level (A vs B); item 3 has no labels at all
    assert summary.dropped == {"helpful": 0, "honest": 1, "harmless": 1}
    assert summary.items_labelled == 2 and summary.records == 4


def test_export_reads_back_unchanged_with_load_preferences(annotation_db, tmp_path):
    store = annotation_db.store
    for name in ("alice", "bob", "carol"):
        annotator = store.authenticate(annotation_db.tokens[name])
        for item_id in annotation_db.items_of(name):
            store.save_label(annotator.id, item_id, {"helpful": "A", "honest": "B" if item_id % 2 else "tie",
                                                     "harmless": "tie"})
    out = tmp_path / "prefs.jsonl"
    summary = export_preferences(store, out)
    loaded = load_preferences(out)
    expected, _ = build_preferences(store.items(), store.labels())
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in expected]
    assert summary.records == len(loaded) == 6 + 3  # helpful for all six items, honest for the odd ids
    assert all(r.margin == 1.0 and r.source == "annotation" and len(r.annotator.split(",")) == 2 for r in loaded)
