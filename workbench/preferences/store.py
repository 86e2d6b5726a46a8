"""The preference store: pairs and their labels in one SQLite file per run (`runs/<name>/prefs.sqlite`).

Labels are append-only. A changed vote is a new revision of (pair, annotator), an undo is a revision with
choice "undo", and a label is only acknowledged (returned) after its transaction has committed. Every write names
a client-chosen `submission_id`, unique in the table, so a re-sent request returns the label it already made.

Safe from many threads (one connection per thread) and several processes (WAL journal, `BEGIN IMMEDIATE` for every
write, a 30 s busy timeout). `synchronous=FULL` makes each commit durable before it returns.

Faults (disk full, store turned read-only, write lock held past the busy timeout, damaged file) raise `StoreError`
with what to do; the write is rolled back (never acknowledged), reads go on where SQLite can serve them, and the
next write opens a fresh connection, so the store recovers by itself once the fault is gone.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
import contextlib
from contextlib import contextmanager
from pathlib import Path

from workbench.preferences.schema import CHOICES, UNDO, Label, Pair

SCHEMA_VERSION = 1  # stored in `PRAGMA user_version`
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another writer's lock before giving up
MAX_ANNOTATOR_CHARS = 100
MAX_SUBMISSION_CHARS = 200
MAX_COMMENT_CHARS = 2000

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS pairs (
        pair_id TEXT PRIMARY KEY,
        prompt TEXT NOT NULL,          -- JSON: a string or a list of chat messages
        completion_a TEXT NOT NULL,
        completion_b TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        swapped INTEGER NOT NULL CHECK (swapped IN (0, 1)),
        generation TEXT NOT NULL,      -- JSON object of sampling settings
        prompt_id TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS labels (
        label_id INTEGER PRIMARY KEY AUTOINCREMENT,
        submission_id TEXT NOT NULL UNIQUE,
        pair_id TEXT NOT NULL REFERENCES pairs (pair_id),
        annotator TEXT NOT NULL,
        choice TEXT NOT NULL CHECK (choice IN ({", ".join(repr(c) for c in (*CHOICES, UNDO))})),
        revision INTEGER NOT NULL CHECK (revision >= 1),
        comment TEXT,
        score_a REAL,
        score_b REAL,
        created_at REAL NOT NULL,
        UNIQUE (pair_id, annotator, revision))""",
    "CREATE INDEX IF NOT EXISTS labels_by_annotator ON labels (annotator, label_id)",
]
# Rankings of K completions (preferences/rankings.py): added tables, so schema version 1 stays readable by older
# workbenches; a store made before them gains them when next opened for writing.
RANKING_TABLES = ("ranking_sets", "rankings")
_RANKING_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS ranking_sets (
        set_id TEXT PRIMARY KEY,
        prompt TEXT NOT NULL,          -- JSON: a string or a list of chat messages
        completions TEXT NOT NULL,     -- JSON list of K texts, as displayed (top to bottom)
        models TEXT NOT NULL,          -- JSON list of the K models, same order
        display_order TEXT NOT NULL,   -- JSON list: which sample is shown at each position (random, recorded)
        generation TEXT NOT NULL,      -- JSON object of sampling settings
        prompt_id TEXT NOT NULL,
        created_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rankings (
        ranking_id INTEGER PRIMARY KEY AUTOINCREMENT,
        submission_id TEXT NOT NULL UNIQUE,
        set_id TEXT NOT NULL REFERENCES ranking_sets (set_id),
        annotator TEXT NOT NULL,
        choice TEXT NOT NULL CHECK (choice IN ('rank', 'all_bad', 'skip', 'undo')),
        ranks TEXT,                    -- JSON list: rank of each displayed completion (1 = best, ties share one)
        revision INTEGER NOT NULL CHECK (revision >= 1),
        comment TEXT,
        created_at REAL NOT NULL,
        UNIQUE (set_id, annotator, revision))""",
    "CREATE INDEX IF NOT EXISTS rankings_by_annotator ON rankings (annotator, ranking_id)",
]
_PAIR_COLUMNS = ("pair_id", "prompt", "completion_a", "completion_b", "model_a", "model_b", "swapped", "generation",
                 "prompt_id", "created_at")
# The latest revision of every (pair, annotator); the UNIQUE index above makes the MAX a single lookup.
_CURRENT = ("SELECT * FROM labels l WHERE l.revision = "
            "(SELECT MAX(m.revision) FROM labels m WHERE m.pair_id = l.pair_id AND m.annotator = l.annotator)")


class StoreError(RuntimeError):
    """The store cannot be used as asked (damaged, read-only, disk full, locked); the message names it and the fix."""


class PreferenceStore:
    """Pairs and labels of one run. Open one per process; it opens a SQLite connection per thread on demand.

    read_only: open an existing store for reading only (never created, never written; commands that only read).
    """

    def __init__(self, path: str | Path, read_only: bool = False, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path)
        self.read_only, self.busy_timeout_s = read_only, busy_timeout_s
        if read_only and not self.path.is_file():
            raise StoreError(f"{self.path}: no such preference store; check the path.")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # .connection, .pid, .depth (transaction nesting) of the calling thread
        self._opened: list[tuple[int, sqlite3.Connection]] = []  # (pid, connection) of every connection, for close()
        self._opened_lock = threading.Lock()
        self._write_lock = threading.Lock()  # threads of this process queue here, not in SQLite's sleep-and-retry
        self._pid = os.getpid()  # a forked child gets a fresh write lock (the parent's may be held forever)
        self._in_fault = False  # a write failed and none has committed since
        try:
            version = self._check_file()
        except sqlite3.DatabaseError as error:
            self.close()
            raise StoreError(_fault_message(self.path, error, self.busy_timeout_s, opening=True)) from None
        if version > SCHEMA_VERSION:
            self.close()
            raise StoreError(f"{self.path}: preference store schema {version} is newer than this workbench "
                             f"understands ({SCHEMA_VERSION}); upgrade workbench to open it.")
        if version < SCHEMA_VERSION and read_only:
            self.close()
            raise StoreError(f"{self.path}: not a preference store (a SQLite file without the workbench's tables).")
        if version < SCHEMA_VERSION:  # a new store: only then is the write lock needed to open it
            with self.transaction() as connection:
                for statement in _SCHEMA + _RANKING_SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif not read_only and not self.has_rankings():  # a store from before rankings: add their tables
            with self.transaction() as connection:
                for statement in _RANKING_SCHEMA:
                    connection.execute(statement)

    def has_rankings(self) -> bool:
        """Whether the ranking tables exist (a store made before them, opened read-only, has none)."""
        names = {row[0] for row in self.connection().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return set(RANKING_TABLES) <= names

    def _check_file(self) -> int:
        """The schema version, after SQLite's quick check of every page (a truncated or damaged file fails here)."""
        connection = self.connection()
        problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"database disk image is malformed ({'; '.join(problems)[:300]})")
        return connection.execute("PRAGMA user_version").fetchone()[0]

    def __repr__(self) -> str:
        return f"PreferenceStore({str(self.path)!r})"

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections this process opened; the store reopens them if used again."""
        with self._opened_lock:
            mine = [c for pid, c in self._opened if pid == os.getpid()]  # never touch a parent's handle after fork
            self._opened = [(pid, c) for pid, c in self._opened if pid != os.getpid()]
        for connection in mine:
            connection.close()
        self._local = threading.local()

    # -- connections and transactions -------------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """The calling thread's connection (opened on first use, and again after a fork)."""
        local = self._local
        if getattr(local, "pid", None) == os.getpid():
            return local.connection
        if self._pid != os.getpid():
            self._write_lock, self._pid = threading.Lock(), os.getpid()
        # isolation_level=None: no implicit transactions, we issue BEGIN IMMEDIATE / COMMIT ourselves.
        target = f"{self.path.absolute().as_uri()}?mode=ro" if self.read_only else self.path
        try:
            connection = sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None,
                                         check_same_thread=False, uri=self.read_only)
        except sqlite3.Error as error:
            raise StoreError(_fault_message(self.path, error, self.busy_timeout_s, opening=True)) from None
        connection.row_factory = sqlite3.Row
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")  # before the WAL switch
            if not self.read_only:  # a reader reads any journal mode; a writer needs WAL
                mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise StoreError(f"{self.path}: SQLite could not use its WAL journal (got {mode!r}); keep the "
                                     "store on a local, writable filesystem (not a network share).")
            connection.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit: acknowledged = on disk
            connection.execute("PRAGMA foreign_keys = ON")  # a label must point at a stored pair
        except (sqlite3.Error, StoreError) as error:
            connection.close()
            if isinstance(error, StoreError):
                raise
            raise StoreError(_fault_message(self.path, error, self.busy_timeout_s, opening=True)) from None
        local.connection, local.pid, local.depth = connection, os.getpid(), 0
        local.suspect = self._in_fault  # see transaction(): replaced before its next write
        with self._opened_lock:
            self._opened.append((os.getpid(), connection))
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: `BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any error.

        Nested use (also by `add_pairs`/`add_label` inside a `with store.transaction():` block) joins the outer
        transaction through a SAVEPOINT, so a failed inner call undoes only itself and all commit together.
        """
        connection = self.connection()
        if self._local.depth:
            connection.execute("SAVEPOINT nested")
            self._local.depth += 1
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK TO nested")
                raise
            finally:
                self._local.depth -= 1
                connection.execute("RELEASE nested")
            return
        if self.read_only:
            raise StoreError(f"{self.path}: opened read-only; nothing can be written through this store.")
        if self._local.suspect:  # opened during a fault (SQLite may have opened it read-only): write on a fresh one
            self._drop(connection)
            connection = self.connection()
        with self._write_lock:
            self._local.depth = 1
            try:
                connection.execute("BEGIN IMMEDIATE")  # take the write lock now: writers never deadlock on upgrade
                yield connection
                connection.execute("COMMIT")
                self._in_fault = False
            except sqlite3.Error as error:
                self._abandon(connection)
                if isinstance(error, sqlite3.IntegrityError):
                    raise
                raise StoreError(_fault_message(self.path, error, self.busy_timeout_s)) from error
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            finally:
                self._local.depth = 0

    def _abandon(self, connection: sqlite3.Connection) -> None:
        """After a failed write: roll back, and drop this thread's connection so the next use opens a fresh one
        (a connection SQLite opened read-only stays read-only after the file is writable again)."""
        with contextlib.suppress(sqlite3.Error):
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        self._in_fault = True
        self._drop(connection)

    def _drop(self, connection: sqlite3.Connection) -> None:
        """Close this thread's connection; the next use opens a new one."""
        with self._opened_lock:
            self._opened = [(pid, c) for pid, c in self._opened if c is not connection]
        with contextlib.suppress(sqlite3.Error):
            connection.close()
        self._local.pid = None

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one consistent state of the file."""
        connection = self.connection()
        if self._local.depth:  # inside a write transaction: already consistent
            yield connection
            return
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    # -- pairs ------------------------------------------------------------------------------------------------

    def add_pairs(self, pairs: Iterable[Pair]) -> int:
        """Store pairs; returns how many were new. Re-adding a stored pair is a no-op (its created_at is ignored)."""
        rows = [_pair_row(pair) for pair in pairs]  # validate everything before writing anything
        added = 0
        with self.transaction() as connection:
            for row in rows:
                stored = connection.execute("SELECT * FROM pairs WHERE pair_id = ?", (row[0],)).fetchone()
                if stored is None:
                    connection.execute(f"INSERT INTO pairs VALUES ({', '.join('?' * len(row))})", row)
                    added += 1
                    continue
                differing = [name for name, value in zip(_PAIR_COLUMNS[:-1], row[:-1]) if stored[name] != value]
                if differing:
                    raise ValueError(f"{self.path}: pair_id {row[0]!r} is already stored with different {differing}; "
                                     "an id must name one pair: build it with Pair.make_id(...). Nothing was added.")
        return added

    def get_pair(self, pair_id: str) -> Pair:
        row = self.connection().execute("SELECT * FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone()
        if row is None:
            raise KeyError(f"pair_id {pair_id!r} is not in {self.path}; list stored pairs with store.pairs().")
        return _pair_from_row(row)

    def pairs(self, limit: int | None = None) -> list[Pair]:
        """Stored pairs in the order they were added."""
        rows = self.connection().execute("SELECT * FROM pairs ORDER BY rowid LIMIT ?", (_limit(limit),))
        return [_pair_from_row(row) for row in rows]

    def count_pairs(self) -> int:
        return self.connection().execute("SELECT COUNT(*) FROM pairs").fetchone()[0]

    # -- labels -----------------------------------------------------------------------------------------------

    def add_label(self, pair_id: str, choice: str, annotator: str, submission_id: str, comment: str | None = None,
                  score_a: float | None = None, score_b: float | None = None) -> Label:
        """Append a label and return it once committed. Re-sending a submission_id returns the label it made."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}.")
        if not isinstance(pair_id, str):
            raise ValueError(f"pair_id must be a string, got {type(pair_id).__name__}.")
        _check_text("annotator", annotator, MAX_ANNOTATOR_CHARS)
        _check_text("submission_id", submission_id, MAX_SUBMISSION_CHARS)
        if comment is not None:
            if not isinstance(comment, str):
                raise ValueError(f"comment must be text or None, got {type(comment).__name__}.")
            if len(comment) > MAX_COMMENT_CHARS:
                raise ValueError(f"comment is {len(comment)} characters; at most {MAX_COMMENT_CHARS} are allowed.")
        score_a, score_b = _check_score("score_a", score_a), _check_score("score_b", score_b)
        with self.transaction() as connection:
            label = self._existing(connection, submission_id)
            if label is not None:
                sent = dict(pair_id=pair_id, choice=choice, annotator=annotator, comment=comment, score_a=score_a,
                            score_b=score_b)
                _check_resend(label, sent)
                return label
            if connection.execute("SELECT 1 FROM pairs WHERE pair_id = ?", (pair_id,)).fetchone() is None:
                raise ValueError(f"pair_id {pair_id!r} is not in {self.path}; add the pair with add_pairs() first.")
            return self._append(connection, pair_id, choice, annotator, submission_id, comment, score_a, score_b)

    def undo_last(self, annotator: str, submission_id: str) -> Label | None:
        """Withdraw this annotator's most recent label that still counts; None when there is nothing to undo."""
        _check_text("annotator", annotator, MAX_ANNOTATOR_CHARS)
        _check_text("submission_id", submission_id, MAX_SUBMISSION_CHARS)
        with self.transaction() as connection:
            label = self._existing(connection, submission_id)
            if label is not None:
                _check_resend(label, dict(choice=UNDO, annotator=annotator))
                return label
            row = connection.execute(f"{_CURRENT} AND l.annotator = ? AND l.choice != ? ORDER BY l.label_id DESC "
                                     "LIMIT 1", (annotator, UNDO)).fetchone()
            if row is None:
                return None
            return self._append(connection, row["pair_id"], UNDO, annotator, submission_id, None, None, None)

    def has_submission(self, submission_id: str) -> bool:
        """Whether a label with this submission_id has been committed (a client can check before re-sending)."""
        return self._existing(self.connection(), submission_id) is not None

    def label_for_submission(self, submission_id: str) -> Label | None:
        """The label this submission_id made (on whichever pair), or None when none has been committed."""
        return self._existing(self.connection(), submission_id)

    def current_labels(self, annotator: str | None = None, include_undone: bool = False) -> list[Label]:
        """The latest revision per (pair, annotator), in commit order; undone ones only with include_undone."""
        sql, params = _current_sql(annotator, include_undone)
        return [Label(**dict(row)) for row in self.connection().execute(f"{sql} ORDER BY l.label_id", params)]

    def count_labels(self, annotator: str | None = None) -> int:
        """How many current (not undone) labels there are, for everyone or one annotator."""
        sql, params = _current_sql(annotator, include_undone=False)
        return self.connection().execute(f"SELECT COUNT(*) FROM ({sql})", params).fetchone()[0]

    def history(self, pair_id: str) -> list[Label]:
        """Every revision of every annotator on one pair, in commit order."""
        with self._snapshot() as connection:
            self.get_pair(pair_id)  # KeyError for an unknown pair, rather than an empty history
            rows = connection.execute("SELECT * FROM labels WHERE pair_id = ? ORDER BY label_id", (pair_id,))
            return [Label(**dict(row)) for row in rows]

    def next_unlabelled(self, annotator: str, limit: int | None = 1) -> list[Pair]:
        """Pairs this annotator has no current label for (never labelled, or undone), oldest first."""
        sql, params = _current_sql(annotator, include_undone=False)
        rows = self.connection().execute(
            f"SELECT * FROM pairs WHERE pair_id NOT IN (SELECT pair_id FROM ({sql})) ORDER BY rowid LIMIT ?",
            (*params, _limit(limit)))
        return [_pair_from_row(row) for row in rows]

    def _existing(self, connection: sqlite3.Connection, submission_id: str) -> Label | None:
        row = connection.execute("SELECT * FROM labels WHERE submission_id = ?", (submission_id,)).fetchone()
        return None if row is None else Label(**dict(row))

    def _append(self, connection, pair_id, choice, annotator, submission_id, comment, score_a, score_b) -> Label:
        """Insert the next revision of (pair, annotator); the caller holds the write lock, so the MAX cannot race."""
        revision = connection.execute("SELECT COALESCE(MAX(revision), 0) + 1 FROM labels WHERE pair_id = ? AND "
                                      "annotator = ?", (pair_id, annotator)).fetchone()[0]
        created_at = time.time()
        cursor = connection.execute(
            "INSERT INTO labels (submission_id, pair_id, annotator, choice, revision, comment, score_a, score_b, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (submission_id, pair_id, annotator, choice, revision, comment, score_a, score_b, created_at))
        return Label(cursor.lastrowid, submission_id, pair_id, annotator, choice, revision, comment, score_a, score_b,
                     created_at)

    # -- statistics -------------------------------------------------------------------------------------------

    def stats(self, gold: Callable[[str, str], float] | None = None) -> dict:
        """Counts, position bias, inter-annotator agreement and (given `gold(prompt_text, completion)`) gold agreement.

        All over current labels. Position bias: share of "A" (left side) among A/B answers; 0.5 is unbiased when
        sides are shown in random order. Agreement: per pair of annotators, over the pairs both labelled, raw
        agreement and Cohen's kappa over the five choices. Gold agreement: share of A/B answers picking the side
        with the higher gold reward (a gold tie counts 0.5).
        """
        with self._snapshot():
            labels, n_pairs = self.current_labels(), self.count_pairs()
            pairs = {pair.pair_id: pair for pair in self.pairs()} if gold is not None else {}
        decisive = [label for label in labels if label.choice in ("A", "B")]
        result = {
            "n_pairs": n_pairs,
            "n_labels": len(labels),
            "per_annotator": dict(Counter(label.annotator for label in labels)),
            "per_choice": {choice: sum(label.choice == choice for label in labels) for choice in CHOICES},
            "position_bias": _share([label.choice == "A" for label in decisive], "share_A"),
            "agreement": _agreement(labels),
        }
        if gold is not None:
            rewards: dict[str, tuple[float, float]] = {}  # pair_id -> (gold of A, gold of B), each computed once
            hits = defaultdict(list)  # annotator -> 1 / 0.5 / 0 per decisive label
            for label in decisive:
                pair = pairs[label.pair_id]
                if label.pair_id not in rewards:
                    rewards[label.pair_id] = (gold(pair.prompt_text, pair.completion_a),
                                              gold(pair.prompt_text, pair.completion_b))
                picked, other = rewards[label.pair_id] if label.choice == "A" else rewards[label.pair_id][::-1]
                hits[label.annotator].append(1.0 if picked > other else 0.5 if picked == other else 0.0)
            result["gold_agreement"] = {**_share([h for hs in hits.values() for h in hs], "share"),
                                        "per_annotator": {a: _share(hs, "share") for a, hs in hits.items()}}
        return result


def _fault_message(path: Path, error: sqlite3.Error, busy_timeout_s: float, opening: bool = False) -> str:
    """What a SQLite error means for the person using the store, and what to do about it."""
    text = str(error)
    lowered = text.lower()
    if "disk is full" in lowered:
        return (f"labels cannot be saved: the disk holding {path} is full ({text}); free some space. Nothing was "
                "saved; reads still work, and writes resume by themselves once there is room.")
    if "disk i/o error" in lowered:
        return (f"labels cannot be saved: writing {path} failed ({text}); the disk may be full, read-only or failing. "
                "Nothing was saved; writes resume by themselves once the disk accepts them.")
    if "readonly" in lowered or "read-only" in lowered:
        return (f"labels cannot be saved: {path} is read-only ({text}); make the file and its folder writable again "
                "(e.g. chmod u+w). Nothing was saved; reads still work.")
    if "locked" in lowered or "busy" in lowered:
        return (f"labels cannot be saved: another process has held {path}'s write lock for over {busy_timeout_s:g} s "
                f"({text}); finish or stop it (another workbench command or app on this store). Nothing was saved.")
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return (f"{path} is damaged ({text}); it cannot be used. Move it aside and restore a backup (or re-import an "
                "export with `workbench prefs import`).")
    if opening or "unable to open" in lowered:
        return (f"{path}: the preference store cannot be opened ({text}); check that the path is a file you may read "
                "and write, on a local disk.")
    return f"labels cannot be saved: {path}: {text}. Nothing was saved."


def cohens_kappa(labels1: Sequence[str], labels2: Sequence[str]) -> float:
    """Cohen's kappa of two raters over the same items: κ = (p_o − p_e) / (1 − p_e).

    p_o is the observed share of items where they agree; p_e = Σ_k p1(k)·p2(k) the agreement expected by chance from
    each rater's own category frequencies (Cohen 1960). 1 = perfect, 0 = chance level, < 0 = worse than chance.
    When both raters use one and the same category for every item (p_e = p_o = 1), returns 1.0.
    """
    if len(labels1) != len(labels2) or not labels1:
        raise ValueError(f"cohens_kappa needs two equally long, non-empty label lists, got {len(labels1)} and "
                         f"{len(labels2)}.")
    n = len(labels1)
    p_o = sum(a == b for a, b in zip(labels1, labels2)) / n
    counts1, counts2 = Counter(labels1), Counter(labels2)
    chance = sum(counts1[k] * counts2[k] for k in counts1)  # n² · p_e, kept integer so p_e == 1 is exact
    if chance == n * n:
        return 1.0
    p_e = chance / (n * n)
    return (p_o - p_e) / (1 - p_e)


def _agreement(labels: list[Label]) -> dict:
    votes: dict[str, dict[str, str]] = defaultdict(dict)  # pair_id -> annotator -> choice
    for label in labels:
        votes[label.pair_id][label.annotator] = label.choice
    rows = []
    for first, second in itertools.combinations(sorted({label.annotator for label in labels}), 2):
        shared = [v for v in votes.values() if first in v and second in v]
        if shared:
            choices1, choices2 = [v[first] for v in shared], [v[second] for v in shared]
            rows.append({"annotators": [first, second], "n": len(shared),
                         "raw": sum(a == b for a, b in zip(choices1, choices2)) / len(shared),
                         "kappa": cohens_kappa(choices1, choices2)})
    return {"pairs": rows, "n_shared": sum(row["n"] for row in rows),
            "mean_raw": sum(row["raw"] for row in rows) / len(rows) if rows else None,
            "mean_kappa": sum(row["kappa"] for row in rows) / len(rows) if rows else None}


def _share(values: list, name: str) -> dict:
    return {name: sum(values) / len(values) if values else None, "n": len(values)}


def _current_sql(annotator: str | None, include_undone: bool) -> tuple[str, tuple]:
    sql, params = _CURRENT, ()
    if annotator is not None:
        sql, params = f"{sql} AND l.annotator = ?", (annotator,)
    if not include_undone:
        sql, params = f"{sql} AND l.choice != ?", (*params, UNDO)
    return sql, params


def _limit(limit: int | None) -> int:
    if limit is None:
        return -1  # SQLite: no limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}.")
    return limit


def _check_text(field: str, value, max_chars: int) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string, got {value!r:.60}.")
    if len(value) > max_chars:
        raise ValueError(f"{field} is {len(value)} characters; at most {max_chars} are allowed.")


def _check_score(field: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{field} must be a finite number or None, got {value!r:.60} (convert tensors with float()).")
    if not math.isfinite(value):
        raise ValueError(f"{field} must be finite, got {value}; leave it None when there is no reward-model score.")
    return float(value)


def _check_resend(label: Label, sent: dict) -> None:
    differing = sorted(name for name, value in sent.items() if getattr(label, name) != value)
    if differing:
        raise ValueError(f"submission_id {label.submission_id!r} already made label {label.label_id} with different "
                         f"{differing}; a re-send must repeat the request exactly, a new vote needs a new "
                         "submission_id.")


def _pair_row(pair: Pair) -> tuple:
    if not isinstance(pair, Pair):
        raise ValueError(f"add_pairs expects Pair objects, got {type(pair).__name__}.")
    try:
        generation = json.dumps(pair.generation, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Pair {pair.pair_id!r}: generation settings must be JSON numbers/strings "
                         f"({error}).") from None
    return (pair.pair_id, json.dumps(pair.prompt, ensure_ascii=False, sort_keys=True), pair.completion_a,
            pair.completion_b, pair.model_a, pair.model_b, int(pair.swapped), generation, pair.prompt_id,
            float(pair.created_at))


def _pair_from_row(row: sqlite3.Row) -> Pair:
    values = dict(row)
    values.update(prompt=json.loads(values["prompt"]), generation=json.loads(values["generation"]),
                  swapped=bool(values["swapped"]))
    return Pair(**values)
