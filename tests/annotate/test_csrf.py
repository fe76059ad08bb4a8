"""CSRF and sessions through a real uvicorn server on loopback: other origins are refused, cookie POSTs need
the session's CSRF token, logout ends the session, sessions expire and renew, tokens can be rotated and revoked."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from rlhf.annotate.app import COOKIE_NAME, create_app
from rlhf.annotate.cli import main
from rlhf.annotate.serving import serve_in_thread
from rlhf.annotate.store import SESSION_IDLE_S, SESSION_MAX_S, Store

LABEL = {"helpful": "A", "honest": "B", "harmless": "tie"}


def csrf_of(page: httpx.Response) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)


@pytest.fixture
def server(annotation_db):
    with serve_in_thread(create_app(annotation_db.path)) as base_url:
        yield base_url


@contextmanager
def logged_in(base_url: str, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=10) as client:
        assert client.post("/login", data={"token": token}).status_code == 303
        yield client


def test_cookie_posts_need_the_session_csrf_token_and_the_same_origin(server, annotation_db):
    item = annotation_db.items_of("alice")[0]
    with logged_in(server, annotation_db.tokens["alice"]) as alice:
        token = csrf_of(alice.get(f"/items/{item}"))
        host = server.removeprefix("http://")
        # The probe of the issue: another port of the same host counts as same-site, not same-origin.
        forged = alice.post(f"/items/{item}", data={**LABEL, "csrf_token": token},
                            headers={"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"})
        assert forged.status_code == 403 and "cross-origin" in forged.text
        assert alice.post(f"/items/{item}", data={**LABEL, "csrf_token": token},
                          headers={"Origin": "http://evil.example"}).status_code == 403
        assert alice.post(f"/items/{item}", data={**LABEL, "csrf_token": token},
                          headers={"Origin": "null"}).status_code == 403
        assert alice.post(f"/items/{item}", data=LABEL).status_code == 403  # no CSRF token
        assert alice.post(f"/items/{item}", data={**LABEL, "csrf_token": "0" * 64}).status_code == 403
        assert annotation_db.store.counts()["labels"] == 0
        own = alice.post(f"/items/{item}", data={**LABEL, "csrf_token": token},
                         headers={"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 303 and annotation_db.store.counts()["labels"] == 1
    # A Bearer request cannot be forged by another site (browsers never add the header): no CSRF token needed.
    bearer = httpx.post(f"{server}/items/{item}", data={**LABEL, "helpful": "B"}, headers=annotation_db.auth("alice"))
    assert bearer.status_code == 303


def test_login_and_logout_refuse_forgeries_and_logout_ends_the_session(server, annotation_db):
    cross = httpx.post(f"{server}/login", data={"token": annotation_db.tokens["bob"]},
                       headers={"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"})
    assert cross.status_code == 403 and "set-cookie" not in cross.headers  # login CSRF
    assert httpx.post(f"{server}/logout").status_code == 401  # logout needs auth
    with logged_in(server, annotation_db.tokens["bob"]) as bob:
        page = bob.get(f"/items/{annotation_db.items_of('bob')[0]}")
        assert bob.post("/logout").status_code == 403  # and the CSRF token
        assert bob.get("/").status_code == 303  # still logged in
        cookie = bob.cookies[COOKIE_NAME]
        assert bob.post("/logout", data={"csrf_token": csrf_of(page)}).status_code == 303
        assert httpx.get(f"{server}/", cookies={COOKIE_NAME: cookie}).status_code == 401  # ended server-side too


def test_sessions_expire_renew_and_end_with_a_rotated_or_revoked_token(annotation_db, capsys):
    now = [1_000_000.0]
    store = Store(annotation_db.path, clock=lambda: now[0])
    alice = store.authenticate(annotation_db.tokens["alice"])
    session = store.start_session(alice.id)
    assert store.session(session).renewed is False
    now[0] += 0.6 * SESSION_IDLE_S  # past half-life: the lookup renews it
    renewed = store.session(session)
    assert renewed.renewed and renewed.expires_at == now[0] + SESSION_IDLE_S
    while now[0] + SESSION_IDLE_S / 2 < 1_000_000.0 + SESSION_MAX_S:  # used twice a day: renewed up to the cap
        now[0] += 0.6 * SESSION_IDLE_S
        assert store.session(session) is not None
    now[0] = 1_000_000.0 + SESSION_MAX_S
    assert store.session(session) is None  # never past SESSION_MAX_S after login
    idle = store.start_session(alice.id)
    now[0] += SESSION_IDLE_S
    assert store.session(idle) is None  # a day's idle ends it

    live = store.start_session(alice.id)
    assert main(["rotate-token", "alice", "--db", annotation_db.path]) == 0
    new_token = capsys.readouterr().out.strip()
    assert store.authenticate(annotation_db.tokens["alice"]) is None and store.session(live) is None
    assert store.authenticate(new_token).name == "alice"
    live = store.start_session(alice.id)
    assert main(["revoke-token", "alice", "--db", annotation_db.path]) == 0
    assert store.authenticate(new_token) is None and store.session(live) is None
    assert main(["revoke-token", "nobody", "--db", annotation_db.path]) == 1
    assert "no annotator named 'nobody'" in capsys.readouterr().err


def test_the_session_cookie_is_short_lived_and_renewed_on_use(annotation_db):
    now = [1_000_000.0]
    app = create_app(annotation_db.path)
    app.state.store.clock = lambda: now[0]
    with TestClient(app, follow_redirects=False) as client:
        login = client.post("/login", data={"token": annotation_db.tokens["carol"]})
        assert f"Max-Age={SESSION_IDLE_S}" in login.headers["set-cookie"] and SESSION_IDLE_S < 30 * 24 * 3600
        assert "set-cookie" not in client.get("/").headers  # fresh: nothing to renew
        now[0] += 0.6 * SESSION_IDLE_S
        assert f"Max-Age={SESSION_IDLE_S}" in client.get("/").headers["set-cookie"]
        now[0] += SESSION_IDLE_S
        assert client.get("/").status_code == 401
