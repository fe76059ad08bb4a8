"""Skip / flag an item with a reason (stored, counted, exclusive with a label), the admin pages in HTML with JSON
kept at ?format=json, the guidelines folded into the item page, and the per-client limit on failed logins."""
from __future__ import annotations

import pytest

from rlhf.annotate.app import LOGIN_FAILURES_PER_MINUTE, LoginThrottle

LABEL = {"helpful": "A", "honest": "B", "harmless": "tie"}


def test_skip_and_flag_are_stored_with_their_reason_and_counted(client, annotation_db):
    alice = annotation_db.auth("alice")
    first, second, *rest = annotation_db.items_of("alice")
    response = client.post(f"/items/{first}/skip", headers=alice, data={"kind": "skip", "reason": "I do not know"})
    assert response.status_code == 303 and response.headers["location"] == f"/items/{second}"  # the next one
    assert client.post(f"/items/{second}/skip", headers=alice,
                       data={"kind": "flag", "reason": "unsafe content"}).status_code == 303
    skips = annotation_db.store.skips()
    assert [(s.item_id, s.annotator, s.kind, s.reason) for s in skips] == [
        (first, "alice", "skip", "I do not know"), (second, "alice", "flag", "unsafe content")]
    progress = annotation_db.store.progress(annotation_db.store.authenticate(annotation_db.tokens["alice"]).id)
    assert (progress.done, progress.total) == (2, 4)  # handled, so not served again as next
    assert client.get("/", headers=alice).headers["location"] == f"/items/{rest[0]}"

    stats = client.get("/admin/stats?format=json", headers=annotation_db.auth("boss")).json()
    assert stats["skips"] == {"skip": 1, "flag": 1} and stats["labels"] == 0
    assert stats["skip_reasons"] == {"I do not know": 1, "unsafe content": 1}


def test_a_label_and_a_skip_replace_each_other(client, annotation_db):
    alice, item = annotation_db.auth("alice"), annotation_db.items_of("alice")[0]
    client.post(f"/items/{item}", headers=alice, data=LABEL)
    assert annotation_db.store.counts()["labels"] == 1
    client.post(f"/items/{item}/skip", headers=alice, data={"kind": "flag", "reason": "responses are cut off"})
    assert annotation_db.store.counts()["labels"] == 0 and annotation_db.store.counts()["skips"] == 1  # withdrawn
    client.post(f"/items/{item}", headers=alice, data=LABEL)  # revised after all
    assert annotation_db.store.counts()["labels"] == 1 and annotation_db.store.counts()["skips"] == 0


@pytest.mark.parametrize("form, problem", [({"kind": "skip", "reason": "  "}, "give a reason"),
                                           ({"kind": "delete", "reason": "x"}, "choose one of skip, flag"),
                                           ({"kind": "skip", "reason": "x" * 501}, "give a reason")])
def test_a_bad_skip_form_is_shown_again_with_the_problem_and_nothing_stored(client, annotation_db, form, problem):
    item = annotation_db.items_of("alice")[0]
    response = client.post(f"/items/{item}/skip", headers=annotation_db.auth("alice"), data=form)
    assert response.status_code == 400 and problem in response.text
    assert annotation_db.store.counts()["skips"] == 0


def test_skipping_someone_elses_item_is_not_found(client, annotation_db):
    theirs = sorted(set(annotation_db.items_of("bob")) - set(annotation_db.items_of("alice")))[0]
    response = client.post(f"/items/{theirs}/skip", headers=annotation_db.auth("alice"),
                           data={"kind": "skip", "reason": "x"})
    assert response.status_code == 404 and annotation_db.store.counts()["skips"] == 0


def test_admin_stats_is_a_page_with_json_on_request(client, annotation_db):
    alice, item = annotation_db.auth("alice"), annotation_db.items_of("alice")[0]
    client.post(f"/items/{item}", headers=alice, data=LABEL)
    client.post(f"/items/{annotation_db.items_of('alice')[1]}/skip", headers=alice,
                data={"kind": "flag", "reason": "<b>broken</b> item"})
    page = client.get("/admin/stats", headers=annotation_db.auth("boss"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<td id="flagged">1</td>' in page.text and '<td id="skipped">0</td>' in page.text
    assert "&lt;b&gt;broken&lt;/b&gt; item" in page.text  # reasons are annotators' text: escaped
    assert "<tr><td>alice</td><td>1</td></tr>" in page.text
    data = client.get("/admin/stats?format=json", headers=annotation_db.auth("boss"))
    assert data.headers["content-type"] == "application/json" and data.json()["labels"] == 1


def test_the_item_page_folds_in_the_guidelines(client, annotation_db, tmp_path):
    from starlette.testclient import TestClient

    from rlhf.annotate.app import create_app

    guide = tmp_path / "guide.md"
    guide.write_text("# How to judge\n\nPrefer the *honest* answer. <script>x()</script>\n", encoding="utf-8")
    with TestClient(create_app(annotation_db.path, guide), follow_redirects=False) as own:
        page = own.get(f"/items/{annotation_db.items_of('alice')[0]}", headers=annotation_db.auth("alice"))
    inline = page.text.split('<details id="guidelines-inline">')[1].split("</details>")[0]
    assert "<h1>How to judge</h1>" in inline and "<em>honest</em>" in inline
    assert "<script>x()" not in inline  # raw HTML in the file is text, not markup


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_logins_are_limited_per_client_then_allowed_again(client, annotation_db):
    clock = FakeClock()
    client.app.state.login_throttle = LoginThrottle(clock=clock)
    for _ in range(LOGIN_FAILURES_PER_MINUTE):
        assert client.post("/login", data={"token": "guess"}).status_code == 401
    blocked = client.post("/login", data={"token": annotation_db.tokens["alice"]})  # even the right token
    assert blocked.status_code == 429 and blocked.headers["retry-after"] == "60"
    assert "Too many failed logins" in blocked.text
    clock.now += 30
    assert client.post("/login", data={"token": "guess"}).status_code == 429
    assert client.post("/login", data={"token": "guess"}).headers["retry-after"] == "30"
    clock.now += 30.5  # the first failures have left the one-minute window
    assert client.post("/login", data={"token": annotation_db.tokens["alice"]}).status_code == 303


def test_the_throttle_counts_each_client_apart_and_forgets_idle_ones():
    clock = FakeClock()
    throttle = LoginThrottle(limit=2, window_s=60, clock=clock)
    throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 60 and throttle.retry_after("10.0.0.2") == 0
    clock.now += 61
    throttle.failed("10.0.0.2")
    assert throttle.retry_after("10.0.0.1") == 0
    assert set(throttle._failures) == {"10.0.0.2"}  # the idle client's entry is gone
