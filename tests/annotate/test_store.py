"""SQLite store: WAL, hashed tokens, UPSERT labels, time per item, all-or-nothing item batches."""
from __future__ import annotations

import sqlite3

import pytest

from rlhf.annotate.store import ItemConflict, NewItem, Store, hash_token
from rlhf.data.records import DIMENSIONS

from .conftest import make_items

CHOICES_1 = {"helpful": "A", "honest": "B", "harmless": "tie"}
CHOICES_2 = {"helpful": "B", "honest": "B", "harmless": "A"}


def test_label_columns_are_the_record_dimensions():
    # The schema spells out one column per dimension; a change in rlhf.data.records must be made here too.
    assert DIMENSIONS == ("helpful", "honest", "harmless")


def test_database_is_in_wal_mode(annotation_db):
    conn = sqlite3.connect(annotation_db.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_only_token_hashes_are_stored(annotation_db):
    conn = sqlite3.connect(annotation_db.path)
    stored = {row[0] for row in conn.execute("SELECT token_hash FROM annotators")}
    assert hash_token(annotation_db.tokens["alice"]) in stored
    assert not any(token in stored for token in annotation_db.tokens.values())
    assert annotation_db.store.authenticate(annotation_db.tokens["alice"]).name == "alice"
    assert annotation_db.store.authenticate("not-a-token") is None
    assert annotation_db.store.authenticate("") is None


def test_admin_flag_and_duplicate_or_bad_names(annotation_db):
    assert annotation_db.store.authenticate(annotation_db.tokens["boss"]).is_admin
    assert not annotation_db.store.authenticate(annotation_db.tokens["bob"]).is_admin
    with pytest.raises(ValueError, match="already exists"):
        annotation_db.store.add_annotator("alice")
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        annotation_db.store.add_annotator("eve,mallory")  # names are comma-joined in exports


def test_resubmission_updates_the_label_instead_of_duplicating(annotation_db):
    store = annotation_db.store
    alice = store.authenticate(annotation_db.tokens["alice"])
    item = annotation_db.items_of("alice")[0]
    assert store.save_label(alice.id, item, CHOICES_1, "first")
    assert store.save_label(alice.id, item, CHOICES_2, "second thoughts")
    labels = [label for label in store.labels() if label.annotator == "alice"]
    assert len(labels) == 1
    assert labels[0].choices == CHOICES_2 and labels[0].rationale == "second thoughts"
    assert store.counts()["labels"] == 1


def test_labels_only_for_assigned_items(annotation_db):
    store = annotation_db.store
    alice = store.authenticate(annotation_db.tokens["alice"])
    not_hers = next(i for i in store.items() if i not in annotation_db.items_of("alice"))
    assert not store.save_label(alice.id, not_hers, CHOICES_1)
    assert store.serve_item(alice.id, not_hers) is None
    assert store.serve_item(alice.id, 10_000) is None
    assert store.counts()["labels"] == 0
    with pytest.raises(ValueError, match="no valid choice for honest"):
        store.save_label(alice.id, annotation_db.items_of("alice")[0], {**CHOICES_1, "honest": "maybe"})


def test_time_spent_runs_from_serving_to_submission(annotation_db):
    store = annotation_db.store
    alice = store.authenticate(annotation_db.tokens["alice"])
    first, second = annotation_db.items_of("alice")[:2]
    now = [1000.0]
    store.clock = lambda: now[0]
    store.serve_item(alice.id, first)
    now[0] = 1042.5
    store.save_label(alice.id, first, CHOICES_1)
    now[0] = 2000.0
    store.save_label(alice.id, first, CHOICES_2)  # no new page view: keeps 42.5 s, not 1000 s
    store.save_label(alice.id, second, CHOICES_1)  # never served: unknown time, not a made-up one
    seconds = {label.item_id: label.seconds_spent for label in store.labels()}
    assert seconds == {first: pytest.approx(42.5), second: None}


def test_progress_and_next_item(annotation_db):
    store = annotation_db.store
    bob = store.authenticate(annotation_db.tokens["bob"])
    items = annotation_db.items_of("bob")
    assert store.progress(bob.id).total == len(items) == 4
    assert store.next_unlabelled(bob.id) == items[0]
    store.save_label(bob.id, items[0], CHOICES_1)
    assert store.progress(bob.id).done == 1
    assert store.next_unlabelled(bob.id) == items[1]


def test_adding_the_same_items_again_is_a_no_op(annotation_db):
    added, present = annotation_db.store.add_items(make_items(8))  # 6 stored already
    assert len(added) == 2 and present == 6
    annotation_db.store.assign(k=2)
    assert annotation_db.store.counts() == {"items": 8, "assignments": 16, "labels": 0, "skips": 0}


def test_conflicting_items_raise_and_store_nothing(annotation_db):
    store = annotation_db.store
    reused_id = NewItem("Another question?", "x", "y", external_id="q0")
    swapped_copy = NewItem("Question 1?", "Second answer to 1.", "First answer to 1.", external_id="new")
    for index, bad in ((1, reused_id), (1, swapped_copy)):
        with pytest.raises(ItemConflict) as err:
            store.add_items([NewItem("Fresh?", "yes", "no", external_id="fresh"), bad])
        assert err.value.index == index
        assert store.counts()["items"] == 6  # the good first item was rolled back too


def test_parameterised_sql_stores_hostile_text_verbatim(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    hostile = "x'); DROP TABLE labels; --"
    store.add_annotator("alice")
    store.add_items([NewItem(hostile, hostile + " A", hostile + " B", external_id=hostile)])
    store.assign(k=1)
    [item] = store.items().values()
    assert (item.prompt, item.external_id) == (hostile, hostile)
    annotator = store.annotators()[0]
    assert store.save_label(annotator.id, item.id, CHOICES_1, rationale=hostile)
    assert store.labels()[0].rationale == hostile
