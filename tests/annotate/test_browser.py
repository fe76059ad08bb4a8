"""Headless Chromium (Playwright) logs in, labels three items by keyboard; the export holds exactly those labels."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlhf.annotate.app import create_app
from rlhf.annotate.export import export_preferences
from rlhf.annotate.serving import serve_in_thread
from rlhf.annotate.store import NewItem, Store
from rlhf.data.records import load_preferences

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ITEMS = [
    NewItem("Greet me.", "<script>window.pwned = 1</script>Hello!", "Go away.", external_id="greet"),
    NewItem("Is the earth flat?", "Yes, it is flat.", "No, it is an oblate spheroid.", external_id="earth"),
    NewItem("How do I pick a lock?", "Call a locksmith.", "Insert a tension wrench, then rake the pins.",
            external_id="lock"),
]
# Keys pressed per item (in order; a later key for the same dimension replaces an earlier one), the
# rationale typed (its characters include shortcut keys, which must not change the choices), and
# the label that should be stored.
KEYS = [["2", "1", "w", "d"], ["2", "q", "s"], ["3", "e", "a"]]
RATIONALES = ["", "typing 1 2 3 q w e must not relabel", ""]
EXPECTED = [{"helpful": "A", "honest": "B", "harmless": "tie"},
            {"helpful": "B", "honest": "A", "harmless": "B"},
            {"helpful": "tie", "honest": "tie", "harmless": "A"}]


@pytest.mark.browser
def test_annotator_labels_three_items_by_keyboard_and_export_holds_them(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():  # fails, never skips: `make test` installs it, so CI cannot pass without this test
        pytest.fail(f"{CHROMIUM} is missing: run .ci/install-browser.sh (Debian chromium)", pytrace=False)

    store = Store(tmp_path / "annotate.sqlite")
    token = store.add_annotator("alice")
    store.add_annotator("boss", is_admin=True)
    store.add_items(ITEMS)
    store.assign(k=1)

    with serve_in_thread(create_app(store.path)) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            login = page.goto(base_url + "/")
            assert login.status == 401
            page.fill("#token", token)
            with page.expect_navigation():
                page.click("button[type=submit]")

            for n, (keys, rationale) in enumerate(zip(KEYS, RATIONALES)):
                expect(page.locator("#progress")).to_have_text(f"{n} of 3 done")
                for key in keys:
                    page.keyboard.press(key)
                if rationale:
                    page.fill("#rationale", "")
                    page.type("#rationale", rationale)  # real key events, shortcuts included
                    submit_key = "Control+Enter"  # plain Enter in the rationale is a newline
                else:
                    submit_key = "Enter"
                if n == 0:  # the response with a <script> is shown as text and never runs
                    expect(page.locator("#response-a")).to_contain_text("<script>window.pwned = 1</script>Hello!")
                    assert page.evaluate("() => window.pwned") is None
                with page.expect_navigation():
                    page.keyboard.press(submit_key)

            expect(page.locator("h1")).to_have_text("All done")
            expect(page.locator("#progress")).to_have_text("3 of 3 done")
        finally:
            browser.close()

    labels = {label.item_id: label for label in store.labels()}
    items = {item.external_id: item for item in store.items().values()}
    for new_item, expected, rationale in zip(ITEMS, EXPECTED, RATIONALES):
        stored = labels[items[new_item.external_id].id]
        assert (stored.choices, stored.rationale) == (expected, rationale)
        assert stored.seconds_spent is not None and stored.seconds_spent >= 0

    out = tmp_path / "prefs.jsonl"
    export_preferences(store, out)
    exported = {(r.prompt, r.chosen, r.rejected, r.dimension[0], r.margin, r.annotator) for r in load_preferences(out)}
    wanted = set()
    for new_item, expected in zip(ITEMS, EXPECTED):
        for dimension, choice in expected.items():
            if choice == "A":
                wanted.add((new_item.prompt, new_item.response_a, new_item.response_b, dimension, 1.0, "alice"))
            elif choice == "B":
                wanted.add((new_item.prompt, new_item.response_b, new_item.response_a, dimension, 1.0, "alice"))
    assert exported == wanted and len(wanted) == 6


def _box_inside(page, selector: str, width: int) -> dict:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not rendered"
    assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, f"{selector} runs off a {width}px screen: {box}"
    return box


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(),
                    reason=f"{CHROMIUM} is missing: run .ci/install-browser.sh (Debian chromium)")
@pytest.mark.parametrize("width, height", [(390, 844), (1280, 800)])
def test_item_page_fits_a_phone_and_a_desktop(tmp_path, width, height):
    """At phone width the header wraps (no link off screen) and the responses stack; on a desktop they sit side by
    side. Screenshots go to tmp_path (or $RLHF_SCREENSHOT_DIR, to look at them)."""
    import os

    from playwright.sync_api import expect, sync_playwright

    store = Store(tmp_path / "annotate.sqlite")
    token = store.add_annotator("alice_with_a_rather_long_name")
    store.add_items([NewItem("Summarise the dialogue about the broken printer.",
                             "The printer on floor two is broken; IT will replace the drum tomorrow. " * 3,
                             "Someone complains about a printer.", external_id="printer")])
    store.assign(k=1)
    shots = Path(os.environ.get("RLHF_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with serve_in_thread(create_app(store.path)) as base_url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(15_000)
            page.goto(base_url + "/login")
            page.fill("#token", token)
            with page.expect_navigation():
                page.click("button[type=submit]")
            for selector in ("#guidelines-link", "#logout", "#progress", "#response-a", "#response-b"):
                expect(page.locator(selector)).to_be_visible()
                _box_inside(page, selector, width)
            a, b = _box_inside(page, "#response-a", width), _box_inside(page, "#response-b", width)
            if width < 700:
                assert b["y"] >= a["y"] + a["height"], "on a phone the responses stack"
            else:
                assert abs(a["y"] - b["y"]) < 1 and b["x"] >= a["x"] + a["width"], "on a desktop side by side"
            assert page.evaluate("() => document.documentElement.scrollWidth") <= width  # no sideways scrolling
            page.click("#guidelines-inline summary")  # the guidelines open in place
            expect(page.locator("#guidelines-inline")).to_have_attribute("open", "")
            page.screenshot(path=str(shots / f"item-{width}px.png"), full_page=True)
            page.click("#skip summary")
            page.fill("#reason", "I cannot tell which summary is right")
            with page.expect_navigation():
                page.click("#skip-form button[type=submit]")
            expect(page.locator("#progress")).to_have_text("1 of 1 done")
        finally:
            browser.close()
    assert [(s.kind, s.reason) for s in store.skips()] == [("skip", "I cannot tell which summary is right")]
