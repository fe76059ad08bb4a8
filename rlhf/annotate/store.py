"""SQLite storage for annotation: items, annotators (hashed tokens), assignments and labels.

Vocabulary used across the package: an *item* is a prompt with two responses (A and B); an
*assignment* gives an item to one annotator; a *label* is that annotator's choice per dimension
(A better, B better or tie) plus an optional rationale. One label per assignment: submitting again
updates it.

The database runs in WAL mode so readers (stats, export) never block the writers (the web app).
Each thread uses its own connection, so a :class:`Store` may be shared by threads (and the file by
processes); writes run in ``BEGIN IMMEDIATE`` transactions that are committed, in full
``synchronous`` mode (on disk, not only in the OS cache), before the method returns. All SQL takes
values as parameters.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from rlhf.annotate.assignment import plan_assignments
from rlhf.data.records import DIMENSIONS

CHOICES = ("A", "B", "tie")
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
BUSY_TIMEOUT_S = 30.0  # writers queue on SQLite's lock; each write takes milliseconds
# A browser session lasts SESSION_IDLE_S after its last renewal and never past SESSION_MAX_S after login:
# a stolen or forgotten cookie dies within a working day of disuse, and within a week in any case.
SESSION_IDLE_S = 12 * 3600
SESSION_MAX_S = 7 * 24 * 3600
# SQLite INTEGER is signed 64-bit: a larger id (e.g. from a URL) cannot name a row, and binding it overflows.
MAX_ROW_ID = 2**63 - 1
REVOKED_PREFIX = "revoked:"  # a token_hash no token hashes to (sha256 gives hex digits only)
SKIP_KINDS = ("skip", "flag")
MAX_REASON_CHARS = 500
# An assignment is handled once it has a label or a skip: what progress counts and next_unlabelled passes over.
_HANDLED_JOIN = (" LEFT JOIN labels l ON l.item_id = s.item_id AND l.annotator_id = s.annotator_id"
                 " LEFT JOIN skips k ON k.item_id = s.item_id AND k.annotator_id = s.annotator_id")

# The label columns are the HHH dimensions of rlhf.data.records, one per dimension, filled in from DIMENSIONS (constants,
# never user input) so the dimension names are written in one place.
_DIMS = ", ".join(DIMENSIONS)
SCHEMA = """
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL UNIQUE,
    content_key TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    response_a TEXT NOT NULL,
    response_b TEXT NOT NULL,
    source TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    item_id INTEGER NOT NULL REFERENCES items(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    served_at REAL,  -- when the item page was last shown: the start of the time spent on it
    PRIMARY KEY (item_id, annotator_id)
);
CREATE INDEX IF NOT EXISTS assignments_by_annotator ON assignments(annotator_id, item_id);
-- Browser sessions: the cookie holds a random session token (hashed here), never the annotator's token.
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    item_id INTEGER NOT NULL,
    annotator_id INTEGER NOT NULL,
{label_columns}
    rationale TEXT NOT NULL DEFAULT '',
    seconds_spent REAL,
    submitted_at REAL NOT NULL,
    PRIMARY KEY (item_id, annotator_id),
    FOREIGN KEY (item_id, annotator_id) REFERENCES assignments(item_id, annotator_id)
);
-- An item the annotator could not judge (skipped) or reports (flagged), with their reason. An assignment has
-- a label or a skip, never both: the last action wins.
CREATE TABLE IF NOT EXISTS skips (
    item_id INTEGER NOT NULL,
    annotator_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('skip', 'flag')),
    reason TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    PRIMARY KEY (item_id, annotator_id),
    FOREIGN KEY (item_id, annotator_id) REFERENCES assignments(item_id, annotator_id)
);
""".replace("{label_columns}",
           "\n".join(f"    {d} TEXT NOT NULL CHECK ({d} IN ('A', 'B', 'tie'))," for d in DIMENSIONS))


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str
    is_admin: bool


@dataclass(frozen=True)
class Session:
    annotator: Annotator
    expires_at: float
    renewed: bool  # expires_at was pushed back by this lookup: the caller re-sends the cookie


@dataclass(frozen=True)
class NewItem:
    """An item before it is stored; ``external_id`` defaults to a hash of its content."""

    prompt: str
    response_a: str
    response_b: str
    external_id: str | None = None
    source: str | None = None

    @property
    def content_key(self) -> str:
        # Order-free in the responses: (A, B) and (B, A) for one prompt are the same comparison.
        payload = json.dumps([self.prompt, sorted([self.response_a, self.response_b])], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Item:
    id: int
    external_id: str
    prompt: str
    response_a: str
    response_b: str
    source: str | None


@dataclass(frozen=True)
class Label:
    item_id: int
    annotator: str
    choices: dict[str, str]  # dimension -> "A" | "B" | "tie"
    rationale: str
    seconds_spent: float | None
    submitted_at: float


@dataclass(frozen=True)
class Skip:
    item_id: int
    annotator: str
    kind: str  # "skip": cannot judge it; "flag": something is wrong with the item (unsafe, broken, ...)
    reason: str
    submitted_at: float


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


class ItemConflict(ValueError):
    """An item clashes with a stored one; ``index`` is its position in the batch being added."""

    def __init__(self, index: int, field_name: str, message: str):
        super().__init__(message)
        self.index, self.field, self.message = index, field_name, message


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings, so a fast unsalted hash is enough: there is nothing to
    # brute-force, and a leaked database holds no usable token.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def storable_id(item_id: int) -> bool:
    """Whether ``item_id`` can be a row id; larger ones cannot exist, so callers answer "not found"."""
    return 0 < item_id <= MAX_ROW_ID


def check_annotator_name(name: str) -> str:
    """Names end up comma-joined in exported records, so they are kept to a plain alphabet."""
    if not 1 <= len(name) <= 64 or not set(name) <= NAME_CHARS:
        raise ValueError(f"annotator name {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'")
    return name


class Store:
    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.clock = clock  # wall-clock seconds; replaceable so tests can time items exactly
        self._local = threading.local()
        conn = self._connection()
        # WAL is a property of the file: set once, every later connection uses it.
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        conn.executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and kept.

        Kept open because in WAL mode closing the last connection checkpoints and deletes the WAL
        file: a connection per call made every write several times slower.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves.
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA foreign_keys=ON")
            # FULL: a commit is fsynced before it returns, so an acknowledged label survives a power cut
            # (WAL's usual NORMAL would only survive a crash of this process). ~4 ms per write here.
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed on exit: the data is on disk before the caller goes on.

        IMMEDIATE takes the write lock up front, so two writers queue instead of one failing
        with SQLITE_BUSY when it upgrades a read lock mid-transaction. ``durable=False`` skips the
        fsync for bookkeeping that may be lost in a power cut (it still survives a process crash,
        and the next durable commit flushes it too).
        """
        conn = self._connection()
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")

    # ------------------------------------------------------------ annotators

    def add_annotator(self, name: str, is_admin: bool = False) -> str:
        """Create an annotator and return their token; only its hash is stored, so print it now."""
        check_annotator_name(name)
        token = secrets.token_urlsafe(32)
        try:
            with self._write() as conn:
                conn.execute("INSERT INTO annotators (name, token_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                             (name, hash_token(token), int(is_admin), self.clock()))
        except sqlite3.IntegrityError:
            raise ValueError(f"annotator {name!r} already exists") from None
        return token

    def authenticate(self, token: str | None) -> Annotator | None:
        if not token:
            return None
        conn = self._connection()
        row = conn.execute("SELECT id, name, is_admin FROM annotators WHERE token_hash = ?",
                           (hash_token(token),)).fetchone()
        return Annotator(row[0], row[1], bool(row[2])) if row else None

    def rotate_token(self, name: str) -> str:
        """Give ``name`` a new token (returned; print it now) and end their sessions: the old token stops working."""
        token = secrets.token_urlsafe(32)
        self._replace_token_hash(name, hash_token(token))
        return token

    def revoke_token(self, name: str) -> None:
        """Lock ``name`` out: no token authenticates them and their sessions end; their labels stay."""
        self._replace_token_hash(name, REVOKED_PREFIX + secrets.token_hex(16))

    def _replace_token_hash(self, name: str, token_hash: str) -> None:
        with self._write() as conn:
            row = conn.execute("SELECT id FROM annotators WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise ValueError(f"no annotator named {name!r}")
            conn.execute("UPDATE annotators SET token_hash = ? WHERE id = ?", (token_hash, row[0]))
            conn.execute("DELETE FROM sessions WHERE annotator_id = ?", (row[0],))

    # ------------------------------------------------------------ browser sessions

    def start_session(self, annotator_id: int) -> str:
        """A new session for a logged-in browser; returns its token (only the hash is stored)."""
        token, now = secrets.token_urlsafe(32), self.clock()
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))  # keep the table small
            conn.execute("INSERT INTO sessions (token_hash, annotator_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                         (hash_token(token), annotator_id, now, now + SESSION_IDLE_S))
        return token

    def session(self, token: str | None) -> Session | None:
        """The live session of ``token``, renewed when over half its idle time has passed (None if expired)."""
        if not token:
            return None
        now, token_hash = self.clock(), hash_token(token)
        row = self._connection().execute(
            "SELECT a.id, a.name, a.is_admin, s.created_at, s.expires_at FROM sessions s"
            " JOIN annotators a ON a.id = s.annotator_id WHERE s.token_hash = ?", (token_hash,)).fetchone()
        if row is None or row[4] <= now:
            return None
        annotator, created_at, expires_at = Annotator(row[0], row[1], bool(row[2])), row[3], row[4]
        renewed_until = min(now + SESSION_IDLE_S, created_at + SESSION_MAX_S)
        # Renewing only past half-life keeps page views from writing on every request.
        if expires_at - now < SESSION_IDLE_S / 2 and renewed_until > expires_at:
            with self._write(durable=False) as conn:
                conn.execute("UPDATE sessions SET expires_at = ? WHERE token_hash = ?", (renewed_until, token_hash))
            return Session(annotator, renewed_until, renewed=True)
        return Session(annotator, expires_at, renewed=False)

    def end_session(self, token: str | None) -> None:
        if token:
            with self._write() as conn:
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (hash_token(token),))

    def annotators(self, include_admins: bool = False) -> list[Annotator]:
        conn = self._connection()
        rows = conn.execute("SELECT id, name, is_admin FROM annotators WHERE is_admin = 0 OR ? ORDER BY id",
                            (int(include_admins),)).fetchall()
        return [Annotator(r[0], r[1], bool(r[2])) for r in rows]

    # ------------------------------------------------------------ items

    def add_items(self, items: Sequence[NewItem]) -> tuple[list[int], int]:
        """Store new items, all or none; returns ``(ids of the added items, items already stored)``.

        Adding the same item again (same id and content) is a no-op, so an import can be rerun.
        An id reused for other content, or content stored under another id, raises ItemConflict.
        """
        added, present = [], 0
        now = self.clock()
        with self._write() as conn:
            for index, item in enumerate(items):
                external_id = item.external_id or f"sha256:{item.content_key[:16]}"
                by_id = conn.execute("SELECT content_key FROM items WHERE external_id = ?", (external_id,)).fetchone()
                by_content = conn.execute("SELECT external_id FROM items WHERE content_key = ?",
                                          (item.content_key,)).fetchone()
                if by_id and by_id[0] == item.content_key:
                    present += 1
                    continue
                if by_id:
                    raise ItemConflict(index, "id", f"id {external_id!r} is already used by an item with other texts")
                if by_content:
                    raise ItemConflict(index, "prompt", f"same prompt and responses as stored item {by_content[0]!r}")
                cursor = conn.execute(
                    "INSERT INTO items (external_id, content_key, prompt, response_a, response_b, source, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (external_id, item.content_key, item.prompt, item.response_a, item.response_b, item.source, now))
                added.append(cursor.lastrowid)
        return added, present

    def items(self) -> dict[int, Item]:
        conn = self._connection()
        rows = conn.execute("SELECT id, external_id, prompt, response_a, response_b, source FROM items"
                            " ORDER BY id").fetchall()
        return {r[0]: Item(*r) for r in rows}

    # ------------------------------------------------------------ assignments

    def assign(self, k: int, seed: int = 0) -> int:
        """Give every item ``k`` distinct (non-admin) annotators; returns how many assignments were added.

        Idempotent: items that already have k annotators are left alone, so raising k later or adding
        items and rerunning only fills the gaps.
        """
        with self._write() as conn:  # one transaction: two concurrent runs cannot both fill one gap
            annotator_ids = [r[0] for r in conn.execute("SELECT id FROM annotators WHERE is_admin = 0 ORDER BY id")]
            item_ids = [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")]
            already: dict[int, set[int]] = {}
            load = {a: 0 for a in annotator_ids}
            for item_id, annotator_id in conn.execute("SELECT item_id, annotator_id FROM assignments"):
                already.setdefault(item_id, set()).add(annotator_id)
                load[annotator_id] = load.get(annotator_id, 0) + 1
            planned = plan_assignments(item_ids, annotator_ids, k, already, load, seed=seed)
            conn.executemany("INSERT INTO assignments (item_id, annotator_id) VALUES (?, ?)", planned)
        return len(planned)

    def assignment_loads(self) -> dict[str, int]:
        conn = self._connection()
        rows = conn.execute("SELECT a.name, COUNT(s.item_id) FROM annotators a"
                            " LEFT JOIN assignments s ON s.annotator_id = a.id"
                            " WHERE a.is_admin = 0 GROUP BY a.id ORDER BY a.name").fetchall()
        return dict(rows)

    def serve_item(self, annotator_id: int, item_id: int, start_timer: bool = True
                   ) -> tuple[Item, dict[str, str] | None, str] | None:
        """The item if it is assigned to this annotator, with their current label (or None) and rationale.

        ``start_timer`` records now as the start of the time spent on it (a fresh page view; not when
        a form comes back with an error). None when not assigned: the caller cannot tell "not yours"
        from "does not exist", which is the point.
        """
        if not storable_id(item_id):
            return None
        if start_timer:
            with self._write(durable=False) as conn:  # a page view: only the time statistic needs it
                conn.execute("UPDATE assignments SET served_at = ? WHERE item_id = ? AND annotator_id = ?",
                             (self.clock(), item_id, annotator_id))
        conn = self._connection()
        row = conn.execute("SELECT i.id, i.external_id, i.prompt, i.response_a, i.response_b, i.source FROM items i"
                           " JOIN assignments s ON s.item_id = i.id WHERE i.id = ? AND s.annotator_id = ?",
                           (item_id, annotator_id)).fetchone()
        if row is None:
            return None
        label = conn.execute(f"SELECT {_DIMS}, rationale FROM labels"
                             " WHERE item_id = ? AND annotator_id = ?", (item_id, annotator_id)).fetchone()
        choices = dict(zip(DIMENSIONS, label[:-1])) if label else None
        return Item(*row), choices, (label[-1] if label else "")

    def next_unlabelled(self, annotator_id: int) -> int | None:
        conn = self._connection()
        row = conn.execute("SELECT s.item_id FROM assignments s" + _HANDLED_JOIN +
                           " WHERE s.annotator_id = ? AND l.item_id IS NULL AND k.item_id IS NULL"
                           " ORDER BY s.item_id LIMIT 1", (annotator_id,)).fetchone()
        return row[0] if row else None

    def assigned_item_ids(self, annotator_id: int) -> list[int]:
        conn = self._connection()
        rows = conn.execute("SELECT item_id FROM assignments WHERE annotator_id = ? ORDER BY item_id",
                            (annotator_id,)).fetchall()
        return [r[0] for r in rows]

    def progress(self, annotator_id: int) -> Progress:
        conn = self._connection()
        total, done = conn.execute(
            "SELECT COUNT(*), COUNT(l.item_id) + COUNT(k.item_id) FROM assignments s" + _HANDLED_JOIN +
            " WHERE s.annotator_id = ?", (annotator_id,)).fetchone()
        return Progress(done=done, total=total)

    # ------------------------------------------------------------ labels

    def save_label(self, annotator_id: int, item_id: int, choices: Mapping[str, str], rationale: str = "") -> bool:
        """Insert or update this annotator's label of an item; False (nothing written) if not assigned.

        Time spent runs from when the page was served to now; serving is then cleared, so a
        resubmission without a fresh page view keeps the earlier time rather than counting idle hours.
        """
        missing = [d for d in DIMENSIONS if choices.get(d) not in CHOICES]
        if missing:
            raise ValueError(f"no valid choice for {', '.join(missing)} (expected one of {', '.join(CHOICES)})")
        if not storable_id(item_id):
            return False
        now = self.clock()
        with self._write() as conn:
            cursor = conn.execute(
                f"INSERT INTO labels (item_id, annotator_id, {_DIMS}, rationale, seconds_spent, submitted_at)"
                f" SELECT item_id, annotator_id, {', '.join('?' for _ in DIMENSIONS)}, ?, ? - served_at, ?"
                " FROM assignments WHERE item_id = ? AND annotator_id = ?"
                " ON CONFLICT (item_id, annotator_id) DO UPDATE SET"
                f" {', '.join(f'{d} = excluded.{d}' for d in DIMENSIONS)}, rationale = excluded.rationale,"
                " seconds_spent = COALESCE(excluded.seconds_spent, labels.seconds_spent),"
                " submitted_at = excluded.submitted_at",
                (*(choices[d] for d in DIMENSIONS), rationale, now, now, item_id, annotator_id))
            if cursor.rowcount == 0:
                return False
            conn.execute("DELETE FROM skips WHERE item_id = ? AND annotator_id = ?", (item_id, annotator_id))
            conn.execute("UPDATE assignments SET served_at = NULL WHERE item_id = ? AND annotator_id = ?",
                         (item_id, annotator_id))
        return True

    def skip_item(self, annotator_id: int, item_id: int, kind: str, reason: str) -> bool:
        """Record that this annotator skips (cannot judge) or flags the item, with a reason; their label of it,
        if any, is withdrawn (an exported preference must not outlive a flag). False if not assigned."""
        reason = reason.strip()
        if kind not in SKIP_KINDS:
            raise ValueError(f"kind must be one of {', '.join(SKIP_KINDS)}, got {kind!r}")
        if not reason or len(reason) > MAX_REASON_CHARS:
            raise ValueError(f"a reason of 1-{MAX_REASON_CHARS} characters is needed")
        if not storable_id(item_id):
            return False
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO skips (item_id, annotator_id, kind, reason, submitted_at)"
                " SELECT item_id, annotator_id, ?, ?, ? FROM assignments WHERE item_id = ? AND annotator_id = ?"
                " ON CONFLICT (item_id, annotator_id) DO UPDATE SET kind = excluded.kind,"
                " reason = excluded.reason, submitted_at = excluded.submitted_at",
                (kind, reason, self.clock(), item_id, annotator_id))
            if cursor.rowcount == 0:
                return False
            conn.execute("DELETE FROM labels WHERE item_id = ? AND annotator_id = ?", (item_id, annotator_id))
            conn.execute("UPDATE assignments SET served_at = NULL WHERE item_id = ? AND annotator_id = ?",
                         (item_id, annotator_id))
        return True

    def skips(self) -> list[Skip]:
        rows = self._connection().execute(
            "SELECT k.item_id, a.name, k.kind, k.reason, k.submitted_at FROM skips k"
            " JOIN annotators a ON a.id = k.annotator_id ORDER BY k.item_id, a.name").fetchall()
        return [Skip(*r) for r in rows]

    def labels(self) -> list[Label]:
        conn = self._connection()
        rows = conn.execute(f"SELECT l.item_id, a.name, {', '.join(f'l.{d}' for d in DIMENSIONS)}, l.rationale,"
                            " l.seconds_spent, l.submitted_at FROM labels l"
                            " JOIN annotators a ON a.id = l.annotator_id ORDER BY l.item_id, a.name").fetchall()
        n = len(DIMENSIONS)
        return [Label(item_id=r[0], annotator=r[1], choices=dict(zip(DIMENSIONS, r[2:2 + n])), rationale=r[2 + n],
                      seconds_spent=r[3 + n], submitted_at=r[4 + n]) for r in rows]

    def counts(self) -> dict[str, int]:
        conn = self._connection()
        items, assignments, labels, skips = conn.execute(
            "SELECT (SELECT COUNT(*) FROM items), (SELECT COUNT(*) FROM assignments),"
            " (SELECT COUNT(*) FROM labels), (SELECT COUNT(*) FROM skips)").fetchone()
        return {"items": items, "assignments": assignments, "labels": labels, "skips": skips}
