"""The exported annotation file is training data for the reward model, read through rlhf.records unchanged."""
from __future__ import annotations

import pytest

from rlhf.annotate.export import export_preferences
from rlhf.records import DIMENSIONS, load_preferences

CHOICES_BY_ANNOTATOR = {
    "alice": {"helpful": "A", "honest": "A", "harmless": "tie"},
    "bob": {"helpful": "A", "honest": "B", "harmless": "B"},
    "carol": {"helpful": "B", "honest": "B", "harmless": "B"},
}


def export_labelled(annotation_db, tmp_path):
    store = annotation_db.store
    for name, choices in CHOICES_BY_ANNOTATOR.items():
        annotator = store.authenticate(annotation_db.tokens[name])
        for item_id in annotation_db.items_of(name):
            assert store.save_label(annotator.id, item_id, choices)
    out = tmp_path / "annotated_preferences.jsonl"
    export_preferences(store, out)
    return out


def test_export_loads_as_preference_records(annotation_db, tmp_path):
    records = load_preferences(export_labelled(annotation_db, tmp_path))  # strict: any bad row raises
    assert records and {r.source for r in records} == {"annotation"}
    assert all(len(r.dimension) == 1 and r.dimension[0] in DIMENSIONS for r in records)
    assert all(0 < r.margin <= 1 and r.chosen != r.rejected for r in records)
    items = {(i.prompt, i.response_a, i.response_b) for i in annotation_db.store.items().values()}
    assert all((r.prompt, r.chosen, r.rejected) in items or (r.prompt, r.rejected, r.chosen) in items for r in records)


def test_export_trains_reward_model(annotation_db, tmp_path):
    """Wired by the lead once the reward-model stage lands: train a tiny reward model on the export.

    Needs from ``reward_models.train``: a function taking a list of PreferenceRecord (or a JSONL
    path), a backbone (tiny-bert) and a step budget, and returning the training losses, so this test
    can assert the pairwise loss fell and each trained head ranks chosen above rejected more often.
    """
    train = pytest.importorskip("reward_models.train", reason="the reward-model stage is not merged yet")
    records = load_preferences(export_labelled(annotation_db, tmp_path))
    assert {d for r in records for d in r.dimension} == set(DIMENSIONS)  # every head gets pairs
    assert train is not None  # placeholder for the lead: call the training entry point on `records` here
