"""The annotation web app (Starlette, server-rendered HTML): login, label items, guidelines, admin routes.

Routes (all but /login need a token: ``Authorization: Bearer TOKEN`` or the session cookie /login sets):

    GET  /login, POST /login, POST /logout
    GET  /                     -> 303 to the annotator's next unlabelled item, or the "all done" page
    GET  /items/{id}           the item side by side (one column on a phone), the guidelines folded in, and the
                               annotator's earlier label if any
    POST /items/{id}           save (or update) the label, then 303 to the next unlabelled item (or /)
    POST /items/{id}/skip      skip (cannot judge) or flag the item with a reason, then 303 to the next one
    GET  /guidelines           data/annotation_guidelines.md as HTML
    GET  /admin/stats          agreement, counts, skips and flags as HTML; ``?format=json`` for JSON (admin only)
    GET  /admin/export         preference records as JSONL (admin only)

Failed logins are limited per client address (LOGIN_FAILURES_PER_MINUTE); past it, /login answers 429
without looking at the token. Tokens are 256-bit, so this is hardening against noise, not a hole closed.

Every text is rendered through Jinja2 autoescaping; the one inline script carries a per-response CSP
nonce, so even a response text that slipped through unescaped could not run script. Items assigned
to someone else answer 404, exactly as items that do not exist.

Cross-site request forgery is refused twice over: every POST whose ``Origin`` or ``Sec-Fetch-Site``
says it comes from another origin (another port or a sibling subdomain included, which SameSite does
not cover) gets 403, login included; and a POST authenticated by the session cookie must carry that
session's CSRF token (the forms hold it in a hidden field). A POST with ``Authorization: Bearer`` needs
no CSRF token: browsers never add that header on their own, so another site cannot forge it.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import jinja2
from markdown_it import MarkdownIt
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhf.annotate.export import collect_preferences
from rlhf.annotate.stats import compute_stats
from rlhf.annotate.store import CHOICES, MAX_REASON_CHARS, SESSION_IDLE_S, SKIP_KINDS, Annotator, Store
from rlhf.data.records import DIMENSIONS

DEFAULT_GUIDELINES = Path(__file__).resolve().parents[2] / "data" / "annotation_guidelines.md"
MAX_BODY_BYTES = 64 * 1024  # a label is a few hundred bytes; a rationale gets MAX_RATIONALE_CHARS
MAX_RATIONALE_CHARS = 4000
COOKIE_NAME = "rlhf_annotate_session"
CSRF_FIELD = "csrf_token"  # hidden form field; API clients may send the X-CSRF-Token header instead
MAX_FORM_FIELDS = len(DIMENSIONS) + 4  # the label form: one per dimension, rationale, CSRF token
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
LOGIN_FAILURES_PER_MINUTE = 10
SKIP_TEXT = {"skip": "I cannot judge this item", "flag": "Flag: something is wrong with this item"}
# Keys per dimension for A better / B better / tie: one row of the keyboard per dimension.
SHORTCUTS = dict(zip(DIMENSIONS, [("1", "2", "3"), ("q", "w", "e"), ("a", "s", "d")], strict=True))
CHOICE_TEXT = {"A": "A better", "B": "B better", "tie": "Tie"}
# Referrer-Policy same-origin, not no-referrer: item URLs still never leak to other sites, but under
# no-referrer browsers send "Origin: null" on the app's own form posts, which SameOriginPosts must refuse.
STATIC_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                  (b"x-frame-options", b"DENY"), (b"cache-control", b"no-store")]

Endpoint = Callable[[Request], Awaitable[Response]]


class SecurityHeaders:
    """Adds headers every response needs (pages hold unpublished texts: never cache, never frame)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    h for h in STATIC_HEADERS if h[0] not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SameOriginPosts:
    """403 for any state-changing request a browser says comes from another origin.

    Browsers send ``Origin`` on every POST and ``Sec-Fetch-Site`` on most; clients that send
    neither (curl, scripts) are not browsers, so no other site can be driving them.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            problem = cross_origin_problem(Request(scope))
            if problem is not None:
                return await PlainTextResponse(f"Forbidden: {problem}", status_code=403)(scope, receive, send)
        await self.app(scope, receive, send)


def cross_origin_problem(request: Request) -> str | None:
    """Why this request is not from the app's own pages (None if it may be)."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):  # none: typed, bookmarked
        return f"cross-origin request (Sec-Fetch-Site: {fetch_site})"
    origin = request.headers.get("origin")
    if origin is not None:
        # Host is what the browser addressed, so it is this server's origin as the browser sees it
        # (behind an HTTPS proxy the scheme differs, the host and port do not).
        if origin == "null" or urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
            return f"cross-origin request (Origin: {origin})"
    return None


class LoginThrottle:
    """At most ``limit`` failed logins per client in any ``window_s`` seconds (a sliding window, in memory)."""

    def __init__(self, limit: int = LOGIN_FAILURES_PER_MINUTE, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._failures: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, failures: collections.deque[float], now: float) -> collections.deque[float]:
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def retry_after(self, client: str) -> int:
        """Seconds until this client may try again (0: it may now)."""
        with self._lock:
            now = self.clock()
            failures = self._recent(self._failures.get(client, collections.deque()), now)
            if len(failures) < self.limit:
                return 0
            return max(1, int(failures[0] + self.window_s - now + 0.999))

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            self._recent(self._failures.setdefault(client, collections.deque()), now).append(now)
            # Forget clients whose window is empty, so the table holds only the last minute's clients.
            for other in [c for c, f in self._failures.items() if not f or f[-1] <= now - self.window_s]:
                del self._failures[other]


class AnnotateApp(Starlette):
    """Starlette with SecurityHeaders outermost, so that the responses Starlette makes itself
    (413 from the body limit, 500 from the error middleware) carry the headers too."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


# ---------------------------------------------------------------- rendering and auth helpers


def render(request: Request, template: str, context: dict | None = None, status_code: int = 200,
           headers: dict | None = None) -> Response:
    nonce = secrets.token_urlsafe(16)
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
           "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    annotator = getattr(request.state, "annotator", None)
    full_context = {"nonce": nonce, "annotator": annotator, "csrf_token": getattr(request.state, "csrf_token", None),
                    **(context or {})}
    if annotator is not None and "progress" not in full_context:
        full_context["progress"] = request.app.state.store.progress(annotator.id)
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, full_context, status_code=status_code,
                                      headers={"content-security-policy": csp, **(headers or {})})


def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def csrf_token_of(session_token: str) -> str:
    # Derived from the session's secret, which only the browser's HttpOnly cookie holds: another
    # site can neither read nor compute it, and it changes with every login.
    return hashlib.sha256(f"csrf:{session_token}".encode("utf-8")).hexdigest()


def set_session_cookie(response: Response, request: Request, session_token: str) -> None:
    # httponly: scripts cannot read it; SameSite=Strict: other sites' links and forms do not send it.
    response.set_cookie(COOKIE_NAME, session_token, max_age=SESSION_IDLE_S, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def login_required(admin: bool = False) -> Callable[[Endpoint], Endpoint]:
    """401 (with the login form, for browsers) without a valid token or session; 403 for a cookie-
    authenticated POST without its session's CSRF token, and for non-admins on admin routes."""

    def decorate(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            store: Store = request.app.state.store
            token, session = bearer_token(request), None
            if token is not None:
                annotator = store.authenticate(token)
            else:
                session = store.session(request.cookies.get(COOKIE_NAME))
                annotator = session.annotator if session else None
            if annotator is None:
                return render(request, "login.html", {"error": None}, status_code=401,
                              headers={"www-authenticate": "Bearer"})
            request.state.annotator = annotator
            if session is not None:
                request.state.csrf_token = csrf_token_of(request.cookies[COOKIE_NAME])
                if request.method not in SAFE_METHODS:
                    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)  # cached for the endpoint
                    sent = str(form.get(CSRF_FIELD) or request.headers.get("x-csrf-token", ""))
                    if not secrets.compare_digest(sent, request.state.csrf_token):
                        return PlainTextResponse("Forbidden: missing or wrong CSRF token (reload the page)",
                                                 status_code=403)
            if admin and not annotator.is_admin:
                return PlainTextResponse("Forbidden: admin only", status_code=403)
            response = await endpoint(request)
            if session is not None and session.renewed:  # the cookie's max-age follows the session's
                set_session_cookie(response, request, request.cookies[COOKIE_NAME])
            return response

        return guarded

    return decorate


def current(request: Request) -> Annotator:
    return request.state.annotator


# ---------------------------------------------------------------- login


async def login_page(request: Request) -> Response:
    return render(request, "login.html", {"error": None})


async def login(request: Request) -> Response:
    # Cross-origin logins (login CSRF) were already refused by SameOriginPosts.
    throttle: LoginThrottle = request.app.state.login_throttle
    client = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(client)
    if wait:
        return render(request, "login.html", {"error": f"Too many failed logins: try again in {wait} s."},
                      status_code=429, headers={"retry-after": str(wait)})
    form = await request.form(max_files=0, max_fields=2)
    store: Store = request.app.state.store
    annotator = store.authenticate(str(form.get("token", "")).strip())
    if annotator is None:
        throttle.failed(client)
        return render(request, "login.html", {"error": "Unknown token."}, status_code=401)
    response = RedirectResponse("/", status_code=303)
    # The cookie holds a fresh session token, not the annotator's: it expires, and logout ends it.
    set_session_cookie(response, request, store.start_session(annotator.id))
    return response


@login_required()
async def logout(request: Request) -> Response:
    request.app.state.store.end_session(request.cookies.get(COOKIE_NAME))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, httponly=True, samesite="strict")
    return response


# ---------------------------------------------------------------- annotating


@login_required()
async def home(request: Request) -> Response:
    store: Store = request.app.state.store
    next_item = store.next_unlabelled(current(request).id)
    if next_item is not None:
        return RedirectResponse(f"/items/{next_item}", status_code=303)
    return render(request, "done.html", {"item_ids": store.assigned_item_ids(current(request).id)})


def guidelines_html(request: Request) -> str | None:
    """The guidelines file as HTML, read per request so edits show without a restart (None if missing)."""
    path: Path = request.app.state.guidelines_path
    if not path.is_file():
        return None
    # html=False: raw HTML in the Markdown is shown as text, never passed through.
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(path.read_text(encoding="utf-8"))


def _item_page(request: Request, item, choices: dict | None, rationale: str, error: str | None = None,
               status_code: int = 200) -> Response:
    return render(request, "item.html", {
        "item": item, "choices": choices or {}, "rationale": rationale, "error": error,
        "dimensions": DIMENSIONS, "choice_values": CHOICES, "choice_text": CHOICE_TEXT, "shortcuts": SHORTCUTS,
        "max_rationale": MAX_RATIONALE_CHARS, "guidelines": guidelines_html(request),
        "skip_kinds": SKIP_KINDS, "skip_text": SKIP_TEXT, "max_reason": MAX_REASON_CHARS,
        "key_map": {key: f"{dim}-{choice}" for dim, keys in SHORTCUTS.items() for key, choice in zip(keys, CHOICES)},
    }, status_code=status_code)


@login_required()
async def item_page(request: Request) -> Response:
    served = request.app.state.store.serve_item(current(request).id, request.path_params["item_id"])
    if served is None:
        return PlainTextResponse("Not Found", status_code=404)
    item, choices, rationale = served
    return _item_page(request, item, choices, rationale)


@login_required()
async def submit_label(request: Request) -> Response:
    store: Store = request.app.state.store
    annotator, item_id = current(request), request.path_params["item_id"]
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    choices = {d: str(form.get(d, "")) for d in DIMENSIONS}
    rationale = str(form.get("rationale", "")).strip()
    problems = [f"choose A better, B better or tie for {d}" for d in DIMENSIONS if choices[d] not in CHOICES]
    if len(rationale) > MAX_RATIONALE_CHARS:
        problems.append(f"the rationale is longer than {MAX_RATIONALE_CHARS} characters")
    if problems:
        served = store.serve_item(annotator.id, item_id, start_timer=False)  # same visit: keep its start time
        if served is None:
            return PlainTextResponse("Not Found", status_code=404)
        return _item_page(request, served[0], choices, rationale, error="; ".join(problems), status_code=400)
    if not store.save_label(annotator.id, item_id, choices, rationale):
        return PlainTextResponse("Not Found", status_code=404)
    next_item = store.next_unlabelled(annotator.id)  # straight there: one round trip fewer than via /
    return RedirectResponse(f"/items/{next_item}" if next_item is not None else "/", status_code=303)


@login_required()
async def skip_item(request: Request) -> Response:
    store: Store = request.app.state.store
    annotator, item_id = current(request), request.path_params["item_id"]
    form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
    kind, reason = str(form.get("kind", "")), str(form.get("reason", "")).strip()
    problem = (f"choose one of {', '.join(SKIP_KINDS)}" if kind not in SKIP_KINDS else
               f"give a reason of 1-{MAX_REASON_CHARS} characters" if not 0 < len(reason) <= MAX_REASON_CHARS else None)
    if problem is None:
        if not store.skip_item(annotator.id, item_id, kind, reason):
            return PlainTextResponse("Not Found", status_code=404)
        next_item = store.next_unlabelled(annotator.id)
        return RedirectResponse(f"/items/{next_item}" if next_item is not None else "/", status_code=303)
    served = store.serve_item(annotator.id, item_id, start_timer=False)
    if served is None:
        return PlainTextResponse("Not Found", status_code=404)
    return _item_page(request, served[0], served[1], served[2], error=f"Skip or flag: {problem}", status_code=400)


@login_required()
async def guidelines(request: Request) -> Response:
    return render(request, "guidelines.html", {"body": guidelines_html(request),
                                               "path": str(request.app.state.guidelines_path)})


# ---------------------------------------------------------------- admin


@login_required(admin=True)
async def admin_stats(request: Request) -> Response:
    store: Store = request.app.state.store
    stats = compute_stats(store.labels(), store.counts(), store.skips())
    if request.query_params.get("format") == "json":  # for scripts; people get the page
        return JSONResponse(stats.to_dict())
    return render(request, "admin_stats.html", {"stats": stats.to_dict()})


@login_required(admin=True)
async def admin_export(request: Request) -> Response:
    records, _ = collect_preferences(request.app.state.store)
    body = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)
    return Response(body, media_type="application/x-ndjson",
                    headers={"content-disposition": 'attachment; filename="preferences.jsonl"'})


# ---------------------------------------------------------------- the app


def create_app(db_path: str | Path, guidelines_path: str | Path | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home, methods=["GET"]),
        Route("/items/{item_id:int}", item_page, methods=["GET"]),
        Route("/items/{item_id:int}", submit_label, methods=["POST"]),
        Route("/items/{item_id:int}/skip", skip_item, methods=["POST"]),
        Route("/guidelines", guidelines, methods=["GET"]),
        Route("/admin/stats", admin_stats, methods=["GET"]),
        Route("/admin/export", admin_export, methods=["GET"]),
    ]
    # Starlette answers 413 itself once a body passes max_body_size (by Content-Length or as it streams).
    app = AnnotateApp(routes=routes, middleware=[Middleware(SameOriginPosts)], max_body_size=max_body_bytes)
    app.state.store = Store(db_path)
    app.state.guidelines_path = Path(guidelines_path or DEFAULT_GUIDELINES)
    app.state.login_throttle = LoginThrottle()
    env = jinja2.Environment(loader=jinja2.PackageLoader("rlhf.annotate", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    app.state.templates = Jinja2Templates(env=env)
    return app
