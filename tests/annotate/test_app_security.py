"""The web app's promises: tokens everywhere, own items only, escaped texts, body limit, survives bad input."""
from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from rlhf.annotate.app import COOKIE_NAME, MAX_BODY_BYTES, create_app
from rlhf.annotate.store import NewItem

LABEL = {"helpful": "A", "honest": "B", "harmless": "tie", "rationale": "A answers; B is more careful."}
PROTECTED = [("GET", "/"), ("GET", "/items/1"), ("POST", "/items/1"), ("POST", "/items/1/skip"), ("GET", "/guidelines"),
             ("GET", "/admin/stats"), ("GET", "/admin/export")]


@pytest.mark.parametrize("method, path", PROTECTED)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic abc"},
                                     {"Cookie": f"{COOKIE_NAME}=wrong-token"}])
def test_every_route_needs_a_valid_token(client, method, path, headers):
    response = client.request(method, path, headers=headers, data=LABEL if method == "POST" else None)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert 'action="/login"' in response.text  # a browser gets the login form with the 401


def test_login_form_sets_an_httponly_strict_cookie(client, annotation_db):
    assert client.post("/login", data={"token": "nope"}).status_code == 401
    response = client.post("/login", data={"token": annotation_db.tokens["alice"]})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get("/items/" + str(annotation_db.items_of("alice")[0]))  # the client keeps the cookie
    assert page.status_code == 200 and "alice" in page.text
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/").status_code == 401


def test_annotator_sees_only_own_items(client, annotation_db):
    mine, alice = annotation_db.items_of("alice"), annotation_db.auth("alice")
    others = [i for i in annotation_db.store.items() if i not in mine]
    assert others
    for item_id in [*others, 999]:
        assert client.get(f"/items/{item_id}", headers=alice).status_code == 404
        assert client.post(f"/items/{item_id}", headers=alice, data=LABEL).status_code == 404
    assert annotation_db.store.counts()["labels"] == 0
    assert client.get(f"/items/{mine[0]}", headers=alice).status_code == 200


def test_submit_and_resubmit_updates_one_label(client, annotation_db):
    alice, item_id = annotation_db.auth("alice"), annotation_db.items_of("alice")[0]
    first = client.post(f"/items/{item_id}", headers=alice, data=LABEL)
    assert first.status_code == 303 and first.headers["location"] == f"/items/{annotation_db.items_of('alice')[1]}"
    client.post(f"/items/{item_id}", headers=alice, data={**LABEL, "helpful": "B"})
    labels = annotation_db.store.labels()
    assert len(labels) == 1 and labels[0].choices["helpful"] == "B" and labels[0].rationale == LABEL["rationale"]
    page = client.get(f"/items/{item_id}", headers=alice)  # the earlier label is shown for revision
    assert re.search(r'value="B" id="helpful-B" required\s+checked', page.text)


def test_texts_are_escaped_and_scripts_need_the_nonce(tmp_path):
    from rlhf.annotate.store import Store

    store = Store(tmp_path / "db.sqlite")
    token = store.add_annotator("alice")
    store.add_items([NewItem(prompt="<b>bold?</b> & \"quotes\"", response_a="<script>alert('pwned')</script>",
                             response_b="<img src=x onerror=alert(1)>", external_id="<i>id</i>")])
    store.assign(k=1)
    with TestClient(create_app(store.path), follow_redirects=False) as client:
        page = client.get("/items/1", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "&lt;b&gt;bold?&lt;/b&gt; &amp; &#34;quotes&#34;" in page.text
    assert "<script>alert" not in page.text and "<img" not in page.text and "<i>id</i>" not in page.text
    nonce = re.search(r"script-src 'nonce-([^']+)'", page.headers["content-security-policy"]).group(1)
    assert re.findall(r"<script[^>]*>", page.text) == [f'<script nonce="{nonce}">']
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"


def test_admin_routes_are_for_the_admin_only(client, annotation_db):
    for path in ("/admin/stats", "/admin/export"):
        assert client.get(path, headers=annotation_db.auth("alice")).status_code == 403
    item_id = annotation_db.items_of("alice")[0]
    client.post(f"/items/{item_id}", headers=annotation_db.auth("alice"), data=LABEL)
    stats = client.get("/admin/stats?format=json", headers=annotation_db.auth("boss"))
    assert stats.status_code == 200 and stats.json()["labels"] == 1
    export = client.get("/admin/export", headers=annotation_db.auth("boss"))
    assert export.status_code == 200
    lines = export.text.splitlines()
    assert len(lines) == 2  # helpful A and honest B; the harmless tie says nothing
    assert '"dimension": ["helpful"]' in lines[0] and '"source": "annotation"' in lines[0]


def test_oversized_bodies_get_413_and_nothing_is_stored(client, annotation_db):
    alice, item_id = annotation_db.auth("alice"), annotation_db.items_of("alice")[0]
    big = {**LABEL, "rationale": "x" * (MAX_BODY_BYTES + 1)}
    assert client.post(f"/items/{item_id}", headers=alice, data=big).status_code == 413
    body = b"helpful=A&honest=B&harmless=tie&rationale=" + b"y" * (MAX_BODY_BYTES + 1)

    def chunks():  # no Content-Length: the limit must also hold for a streamed body
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    streamed = client.post(f"/items/{item_id}", content=chunks(),
                           headers={**alice, "Content-Type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 413
    assert annotation_db.store.counts()["labels"] == 0
    assert client.post(f"/items/{item_id}", headers=alice, data=LABEL).status_code == 303


def test_bad_requests_are_refused_and_the_server_keeps_serving(client, annotation_db):
    alice, item_id = annotation_db.auth("alice"), annotation_db.items_of("alice")[0]
    missing = client.post(f"/items/{item_id}", headers=alice, data={"helpful": "A", "honest": "maybe"})
    assert missing.status_code == 400
    assert "choose A better, B better or tie for honest" in missing.text and "for harmless" in missing.text
    too_long = client.post(f"/items/{item_id}", headers=alice, data={**LABEL, "rationale": "z" * 5000})
    assert too_long.status_code == 400 and "longer than 4000" in too_long.text
    broken = client.post(f"/items/{item_id}", headers={**alice, "Content-Type": "multipart/form-data; boundary=zz"},
                         content=b"--zz\r\nthis is not a part\r\n")
    assert broken.status_code == 400
    assert client.get("/items/not-a-number", headers=alice).status_code == 404
    assert annotation_db.store.counts()["labels"] == 0
    assert client.post(f"/items/{item_id}", headers=alice, data=LABEL).status_code == 303
    assert annotation_db.store.counts()["labels"] == 1


def test_home_leads_through_the_items_and_reports_progress(client, annotation_db):
    alice = annotation_db.auth("alice")
    items = annotation_db.items_of("alice")
    location = client.get("/", headers=alice).headers["location"]
    for n, item_id in enumerate(items):
        assert location == f"/items/{item_id}"
        page = client.get(location, headers=alice)
        assert f"{n} of {len(items)} done" in page.text
        location = client.post(location, headers=alice, data=LABEL).headers["location"]
    assert location == "/"
    done = client.get("/", headers=alice)
    assert done.status_code == 200 and "All done" in done.text and f"{len(items)} of {len(items)} done" in done.text


def test_guidelines_page_renders_markdown_without_raw_html(annotation_db, tmp_path):
    guidelines = tmp_path / "guide.md"
    guidelines.write_text("# Helpful\n\nPrefer **useful** answers.\n\n<script>alert(1)</script>\n", encoding="utf-8")
    with TestClient(create_app(annotation_db.path, guidelines_path=guidelines)) as client:
        page = client.get("/guidelines", headers=annotation_db.auth("bob"))
    assert "<h1>Helpful</h1>" in page.text and "<strong>useful</strong>" in page.text
    assert "<script>alert(1)" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_shipped_guidelines_cover_every_dimension(client, annotation_db):
    page = client.get("/guidelines", headers=annotation_db.auth("bob"))
    assert page.status_code == 200
    for heading in ("Helpful", "Honest", "Harmless"):
        assert f"<h2>{heading}</h2>" in page.text
    assert page.text.count("<strong>Example.</strong>") >= 3
    assert "&lt;" not in page.text  # the shipped file uses no raw HTML (it would show as text)


def test_ids_beyond_sqlite_integers_are_not_found(client, annotation_db):
    alice = annotation_db.auth("alice")
    for item_id in (2**63 - 1, 2**63, 10**30):
        assert client.get(f"/items/{item_id}", headers=alice).status_code == 404
        assert client.post(f"/items/{item_id}", headers=alice, data=LABEL).status_code == 404


def test_error_responses_carry_the_security_headers(annotation_db, monkeypatch):
    app = create_app(annotation_db.path, max_body_bytes=100)
    alice, item_id = annotation_db.auth("alice"), annotation_db.items_of("alice")[0]
    with TestClient(app, follow_redirects=False, raise_server_exceptions=False) as client:
        too_big = client.post(f"/items/{item_id}", headers=alice, data={**LABEL, "rationale": "x" * 200})
        missing = client.get("/no-such-page", headers=alice)
        monkeypatch.setattr(app.state.store, "next_unlabelled", lambda _: 1 / 0)
        broken = client.get("/", headers=alice)
    assert [r.status_code for r in (too_big, missing, broken)] == [413, 404, 500]
    for response in (too_big, missing, broken):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store" and response.headers["x-frame-options"] == "DENY"
