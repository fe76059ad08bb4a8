"""20 concurrent annotators x 50 submissions against a real uvicorn server: exactly 1,000 labels, as sent."""
from __future__ import annotations

from collections import Counter

import pytest

from rlhf.annotate.app import create_app
from rlhf.annotate.serving import serve_in_thread
from rlhf.annotate.simulate import prepare_load_db, simulate_annotators
from rlhf.annotate.store import Store

ANNOTATORS, SUBMISSIONS = 20, 50


@pytest.mark.load
def test_concurrent_annotators_lose_and_duplicate_nothing(tmp_path):
    db = tmp_path / "load.sqlite"
    tokens = prepare_load_db(db, ANNOTATORS, SUBMISSIONS, k=2)
    with serve_in_thread(create_app(db)) as base_url:
        run = simulate_annotators(base_url, tokens, SUBMISSIONS, timeout_s=30, max_seconds=120)
    assert run.errors == []
    assert run.submissions == ANNOTATORS * SUBMISSIONS
    labels = Store(db).labels()
    assert len(labels) == 1000  # none lost, none duplicated (one row per annotator and item)
    stored = {(label.annotator, label.item_id): label.choices for label in labels}
    assert stored == run.sent  # and each is what its annotator sent, not someone else's
    assert set(Counter(label.annotator for label in labels).values()) == {SUBMISSIONS}
    print(f"\n{run.submissions} submissions in {run.seconds:.1f} s: {run.submissions_per_s:.0f} submissions/s")
