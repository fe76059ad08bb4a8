"""Fixtures for the annotation app: a database with items, annotators and tokens; a live server."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from rlhf.annotate.store import NewItem, Store


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives headless Chromium through Playwright (needs /usr/bin/chromium)")
    config.addinivalue_line("markers", "load: many concurrent clients against a live server on loopback")


@dataclass
class AnnotationDB:
    path: str
    store: Store
    tokens: dict[str, str]  # name -> token; "boss" is the admin

    def items_of(self, name: str) -> list[int]:
        annotator = self.store.authenticate(self.tokens[name])
        return self.store.assigned_item_ids(annotator.id)

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


def make_items(n: int) -> list[NewItem]:
    return [NewItem(prompt=f"Question {i}?", response_a=f"First answer to {i}.", response_b=f"Second answer to {i}.",
                    external_id=f"q{i}") for i in range(n)]


@pytest.fixture
def annotation_db(tmp_path) -> AnnotationDB:
    """Six items, each assigned to two of alice, bob and carol (four each); boss is the admin."""
    store = Store(tmp_path / "annotate.sqlite")
    tokens = {name: store.add_annotator(name) for name in ("alice", "bob", "carol")}
    tokens["boss"] = store.add_annotator("boss", is_admin=True)
    store.add_items(make_items(6))
    store.assign(k=2)
    return AnnotationDB(path=str(store.path), store=store, tokens=tokens)


@pytest.fixture
def client(annotation_db):
    from starlette.testclient import TestClient

    from rlhf.annotate.app import create_app

    with TestClient(create_app(annotation_db.path), follow_redirects=False) as test_client:
        yield test_client
