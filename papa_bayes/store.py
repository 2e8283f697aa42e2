"""The durable store: one SQLite file holding everything a session needs to resume.

Tables: ``meta`` (schema version, configurations, each rater's candidate-source
state), ``items`` (features and, when given, the image of everything shown),
``queries`` (what was asked, by round and rater), ``answers`` (one per query,
committed before anything else happens), ``rounds`` (per-round metrics and the RNG
state needed to continue exactly).

The file uses WAL journaling; answers are committed with ``synchronous=FULL``: once
:meth:`PreferenceStore.record_answer` returns, the answer (and everything written before
it) survives a killed process and a power cut. The other writes (items, queries, round
records, settings) are synced with the next answer: a power cut loses at most those written
since the last answer, a state a killed process leaves too (one fsync a round, not four).
A file that is not a papa_bayes store, is corrupt, or comes from a newer schema is
refused with :class:`~papa_bayes.exceptions.StoreError` and never overwritten.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from papa_bayes.checks import _shown, check_int, check_path, holds_bool, plain_array
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError, StoreError

__all__ = ["PreferenceStore", "StoredQuery", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    idx INTEGER PRIMARY KEY,            -- 0-based, contiguous: the PreferenceData index
    features BLOB NOT NULL,             -- float64, d values
    image BLOB,                         -- .npy bytes, optional
    source TEXT,                        -- 'steered', 'explore', 'base', ...
    round INTEGER,
    rater INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    rater INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('pair', 'rating')),
    item_a INTEGER NOT NULL REFERENCES items(idx),
    item_b INTEGER REFERENCES items(idx),
    score REAL,
    asked REAL NOT NULL,
    rng_state BLOB                      -- the session's RNG state right after choosing this query
);
CREATE TABLE IF NOT EXISTS answers (
    query_id INTEGER PRIMARY KEY REFERENCES queries(id),
    answer TEXT NOT NULL,               -- pair: 'first' | 'second' | 'tie', rating: 'like' | 'dislike'
    answered REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rounds (
    rater INTEGER NOT NULL,
    round INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    rng_state BLOB,
    finished REAL NOT NULL,
    PRIMARY KEY (rater, round)
);
"""

PAIR_ANSWERS = ("first", "second", "tie")
RATING_ANSWERS = ("like", "dislike")


@dataclass(frozen=True)
class StoredQuery:
    """A query as stored: ``item_b`` is None for a like/dislike query.

    ``asked`` / ``answered``: Unix times the query was stored and answered (None
    until then, or on a query not read from a store). A table of a store's
    queries: ``pandas.DataFrame([dataclasses.asdict(q) for q in store.queries()])``.
    """

    id: int
    round: int
    rater: int
    kind: str
    item_a: int
    item_b: int | None
    score: float | None
    answer: str | None
    asked: float | None = None
    answered: float | None = None


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _from_npy(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _json(name: str, value: Any, **options: Any) -> str:
    """``value`` as JSON text, or InputDataError naming ``name`` (json's bare TypeError named no argument)."""
    try:
        return json.dumps(value, **options)
    except (TypeError, ValueError) as err:
        raise InputDataError(name, "JSON-serializable values", str(err)) from None


def _rng_blob(rng_state: Any) -> bytes | None:
    """A torch.Generator's state (a uint8 tensor) as the bytes stored, None for None; else InputDataError."""
    if rng_state is None:
        return None
    if not (isinstance(rng_state, Tensor) and rng_state.dtype == torch.uint8):
        raise InputDataError("rng_state", "None or a torch.Generator's state (a uint8 tensor)",
                             type(rng_state).__name__)
    return rng_state.cpu().numpy().tobytes()


def _source_state_json(state: Any) -> str:
    """A candidate source's state (a JSON-serializable dict) as JSON text, or InputDataError."""
    if not isinstance(state, dict):
        raise InputDataError("source_state", "None or a dict (a source's state())", type(state).__name__)
    return _json("source_state", state)


def _metric_number(value: Any) -> float:
    """A metric JSON cannot hold as it is (a NumPy or 0-d torch number) as a float; TypeError for anything else."""
    if isinstance(value, (str, bytes)) or (hasattr(value, "dtype") and getattr(value, "ndim", 0) != 0):
        raise TypeError(f"Object of type {type(value).__name__} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"Object of type {type(value).__name__} is not a number") from None


def _shown_metrics(metrics: Any) -> str:
    if isinstance(metrics, dict):
        return f"keys {sorted({type(k).__name__ for k in metrics if not isinstance(k, str)})}"
    return type(metrics).__name__


#: Rater and query ids are SQLite integers (and a rater's byte offset in the lock file): signed 64 bits.
MAX_ID = 2**63 - 1


def check_id(name: str, value: Any) -> int:
    """A rater or query id as an int, or InputDataError naming ``name`` (NumPy and 0-d tensor integers too: SQLite would store those as blobs)."""
    return check_int(name, value, minimum=0, maximum=MAX_ID, expected="an integer id in [0, 2**63 - 1]")


_READ_ONLY = ("the file or its folder is read-only (SQLite writes <store>-wal and <store>-shm beside the "
              "file); nothing was written.")


def _read_only(err: BaseException | None) -> bool:
    """Whether ``err`` is SQLite's refusal to write a read-only file (or one in a read-only folder)."""
    return isinstance(err, sqlite3.OperationalError) and getattr(err, "sqlite_errorname", "").startswith(
        "SQLITE_READONLY")


def _busy(err: BaseException) -> bool:
    """Whether ``err`` is SQLite's "database is locked": another connection held the store past the wait."""
    name = getattr(err, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) if name else "locked" in str(err)


class _Undo(Exception):
    """Rolls a probing transaction back (:meth:`PreferenceStore.check_writable`)."""


class _ClosedConnection:
    """Stands in for a closed store's connection: any use names the closed store (sqlite3's
    ProgrammingError did not), closing again does nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise StoreError(f"The store {self.path} is closed; open it again (PreferenceStore(path) or "
                         "PreferenceSession.resume(path, ...)).")


class PreferenceStore:
    """Open (or create) a store.

    Args:
        path: the SQLite file.
        create: create the file when missing (default True); an existing file is
            always opened, never recreated. Several processes may open one new store
            at once: one creates it, the others wait and open it. (An empty SQLite
            file, with no table, counts as missing: it is made a store.)

    A store may be used from any thread (as a web server's worker threads answer),
    one at a time as a session is; its writes are serialized.

    Raises:
        InputDataError: a ``path`` that is not a str or os.PathLike, or holds a NUL character.
        StoreError: the file is corrupt, not a papa_bayes store, or from a newer schema;
            ``path`` is a folder, or names no store (with ``create=False``) or lies in
            no folder (with ``create=True``); SQLite, or the file system, cannot open it there (a read-only
            folder, a name too long). A read-only file opens for reading; a write to it raises StoreError
            (see :meth:`check_writable`).
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = check_path("path", path, expected="a file path (str or Path)")
        if "\0" in str(self.path):  # (sqlite3: a bare ValueError "embedded null byte")
            raise InputDataError("path", "a file path (str or Path) without NUL characters", repr(str(self.path)))
        try:  # (a name too long, a folder that may not be entered: the OSError named neither store nor cause)
            if self.path.is_dir():
                raise StoreError(f"{self.path} is a folder; a store is a file (e.g. {self.path / 'session.db'}).")
            exists = self.path.exists() and self.path.stat().st_size > 0
            if not exists and not create:
                raise StoreError(f"No store at {self.path}.")
            if not exists and not self.path.parent.is_dir():  # sqlite3 would say "unable to open database file"
                raise StoreError(f"Cannot create the store {self.path}: {self.path.parent} is not a folder "
                                 "(create it first).")
            if exists:
                self._check_header()
        except OSError as err:
            raise StoreError(f"Cannot open the store {self.path} ({type(err).__name__}: {err.strerror or err}); "
                             "nothing was written.") from err
        conn = None
        try:
            # Any thread may use the store (a web server answers in its worker threads); the lock keeps
            # one transaction at a time on the shared connection.
            self._lock = threading.RLock()
            self._items_buffer: Tensor | None = None  # features of the items read so far (see features())
            self._items_read = 0
            conn = self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0,
                                               check_same_thread=False)
            # Read-only checks first: journal_mode=WAL would rewrite a foreign file's header. A file with
            # no table yet is one another process is creating this moment (its schema not yet committed).
            if exists and self._check_existing():
                exists = False
            self._set_wal()
            # NORMAL: a commit is synced at the next durable one (an answer; see _transaction), not each time.
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if not exists:
                with self._transaction(durable=True):
                    # Another process may have created the store since we looked (several workers opening
                    # one new store at once): its schema, committed, is checked instead of written twice.
                    exists = bool(self._tables())
                    if not exists:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                self.conn.execute(statement)
                        self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                        self.conn.execute("INSERT INTO meta VALUES ('created', ?)", (str(time.time()),))
                if exists:
                    self._check_existing()
        except BaseException as err:
            if conn is not None:
                conn.close()
            if _read_only(err):  # (a folder SQLite cannot write its -wal and -shm files in): a store, not writable
                raise StoreError(f"Cannot open the store {self.path} ({err}): {_READ_ONLY}") from err
            if getattr(err, "sqlite_errorname", "").startswith("SQLITE_CANTOPEN"):  # not "not a store"
                raise StoreError(f"Cannot open the store {self.path} ({err}): SQLite could not open or create it "
                                 "there (a read-only folder?); nothing was written.") from err
            if isinstance(err, sqlite3.DatabaseError):
                raise StoreError(
                    f"{self.path} is not a readable papa_bayes store ({err}); the file was left untouched."
                ) from err
            raise

    def _set_wal(self, timeout: float = 30.0) -> None:
        """WAL journaling, waiting for a process that is creating the same store: SQLite answers
        "database is locked" at once there, without waiting its busy timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    # ------------------------------------------------------------ integrity
    def _check_header(self) -> None:
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head != b"SQLite format 3\x00":
            raise StoreError(f"{self.path} is not a SQLite file (corrupt, or some other file); it was left untouched.")

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def _check_existing(self) -> bool:
        """StoreError unless the file is a readable store; True when it is an empty SQLite file (no table)."""
        ok = self.conn.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise StoreError(f"{self.path} is corrupt (SQLite quick_check: {ok}); it was left untouched.")
        if not self.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall():
            return True  # nothing in it to keep: made a store like a new file
        tables = self._tables()
        if "meta" not in tables:
            raise StoreError(f"{self.path} is a SQLite file but not a papa_bayes store (no 'meta' table).")
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            raise StoreError(f"{self.path} has no schema version; it is not a papa_bayes store.")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written with store schema version {version}, newer than this papa_bayes "
                f"understands ({SCHEMA_VERSION}). Upgrade papa_bayes to open it; the file was left untouched."
            )
        missing = {"items", "queries", "answers", "rounds"} - tables
        if missing:
            raise StoreError(f"{self.path} lacks tables {sorted(missing)}; it is corrupt or incomplete.")
        return False

    class _Tx:
        def __init__(self, conn: sqlite3.Connection, lock: threading.RLock, path: Path, durable: bool) -> None:
            self.conn, self.lock, self.path, self.durable = conn, lock, path, durable

        def _refused(self, err: sqlite3.DatabaseError) -> StoreError:
            if _read_only(err):
                return StoreError(f"Could not write to the store {self.path} ({err}): {_READ_ONLY}")
            if not _busy(err):  # (a full disk, an I/O error, ...): SQLite's own reason, not a lock
                return StoreError(f"Could not write to the store {self.path} ({err}); nothing was written.")
            # sqlite3's bare "database is locked" named neither the file nor what to do.
            return StoreError(f"Could not write to the store {self.path} ({err}): another program held it "
                              "longer than the 30 s wait; nothing was written, try again.")

        def __enter__(self):
            self.lock.acquire()
            try:
                if self.durable:  # this commit syncs the WAL, and with it every earlier write (see _transaction)
                    self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("BEGIN IMMEDIATE")
            except BaseException as err:
                self.lock.release()
                if isinstance(err, sqlite3.DatabaseError):  # (a lock, a read-only or corrupt file)
                    raise self._refused(err) from err
                raise
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            try:
                try:
                    self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
                except sqlite3.DatabaseError as err:  # (a full disk, a corrupt file, a lock, ...)
                    if self.conn.in_transaction:  # a failed COMMIT leaves it open: every later BEGIN would fail
                        try:
                            self.conn.execute("ROLLBACK")
                        except sqlite3.DatabaseError:  # the first failure is the one to report
                            pass
                    if exc_type is None:
                        raise self._refused(err) from err
            finally:
                try:
                    if self.durable:
                        self.conn.execute("PRAGMA synchronous=NORMAL")
                finally:
                    self.lock.release()
            # SQLite's error inside the body (a full disk on INSERT, a read-only file, ...) named neither the
            # store nor that nothing was written. The store's own errors pass unchanged, and so does a broken
            # constraint: the store's checks before each write should have caught it (a bug, not the file).
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
                raise self._refused(exc) from exc
            return False

    def _transaction(self, *, durable: bool = False) -> PreferenceStore._Tx:
        """A write transaction; ``durable``: synced to disk at its commit (an answer), else at the next durable one.

        The WAL is synced in order, so a durable commit also makes every earlier one durable; a power
        cut can lose only the writes after the last answer (items, a query, a round's record), which
        :meth:`PreferenceSession.resume` redraws as after a killed process. Syncing all four writes
        of a round cost four fsyncs where one is needed (about 4.5 ms each on an ext4 disk).
        """
        return PreferenceStore._Tx(self.conn, self._lock, self.path, durable)

    def check_writable(self) -> None:
        """StoreError unless this process may write to the store (a read-only file or folder takes no answer).

        A session checks it before it asks anything: an answer typed, then refused, would be lost.
        """
        try:
            with self._transaction():  # a write SQLite refuses at once on a read-only file; else rolled back
                self.conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
                raise _Undo
        except _Undo:
            pass

    # --------------------------------------------------------------- config
    def set_config(self, config: dict[str, Any], *, rater: int | None = None) -> None:
        """Store a session configuration (JSON-serializable).

        With ``rater``, it is that rater's session's configuration; the first one
        stored is also the store's default (:attr:`config`), and stays that rater's:
        a later configuration of the same rater replaces the default too.
        """
        if rater is not None:
            rater = check_id("rater", rater)
        if not isinstance(config, dict):  # another kind replaced a session's settings: resume() then failed
            raise InputDataError("config", "a dict of settings", type(config).__name__)
        text = _json("config", config)
        with self._transaction():
            row = self.conn.execute("SELECT value FROM meta WHERE key='config'").fetchone()
            default = None if row is None else json.loads(row[0])
            if rater is None or row is None or (isinstance(default, dict) and default.get("rater") == int(rater)):
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('config', ?)", (text,))
            if rater is not None:
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"config/rater{int(rater)}", text))

    @property
    def config(self) -> dict[str, Any] | None:
        """The store's (first) session configuration, or None."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='config'").fetchone()
        return None if row is None else json.loads(row[0])

    def rater_config(self, rater: int) -> dict[str, Any] | None:
        """The configuration of ``rater``'s session, or None.

        (A store written before per-rater configurations holds only the default one,
        which is that of its rater.)
        """
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (f"config/rater{check_id('rater', rater)}",)).fetchone()
        if row is not None:
            return json.loads(row[0])
        default = self.config
        return default if default is not None and default.get("rater") == int(rater) else None

    def raters(self) -> list[int]:
        """Rater ids that were asked at least one query, sorted."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT rater FROM queries ORDER BY rater")]

    @property
    def schema_version(self) -> int:
        """The store's schema version (at most :data:`SCHEMA_VERSION`: a newer store is refused on opening)."""
        return int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    # ---------------------------------------------------------------- items
    def add_items(
        self,
        features: Tensor,
        *,
        images: Tensor | None = None,
        source: str | Sequence[str] = "",
        round: int | None = None,
        rater: int | None = None,
    ) -> list[int]:
        """Append `n x d` items (and optionally their `n x ...` images); returns their indices.

        ``source`` labels where the items came from: one label for all, or `n`
        labels, one per item (e.g. ``"steered"`` / ``"explore"``).
        """
        try:
            raw = torch.as_tensor(plain_array(features)).detach()
        except (TypeError, ValueError, RuntimeError):
            raise InputDataError("features", "an `n x d` array of real numbers", type(features).__name__) from None
        if raw.is_complex() or raw.dtype == torch.bool:  # as PreferenceData refuses them: stored items are permanent
            raise InputDataError("features", "real numbers", str(raw.dtype))
        feats = raw.to(torch.float64).cpu()
        if feats.dim() != 2:
            raise InputDataError("features", "shape `n x d`", tuple(feats.shape))
        d = self.num_features
        if d is not None and feats.shape[1] != d:
            raise InputDataError("features", f"shape `n x {d}` (the store's feature dimension)", tuple(feats.shape))
        bad = int((~torch.isfinite(feats)).sum())
        if bad:  # stored items are permanent: one NaN would make the store unusable
            raise InputDataError("features", "finite values", f"{bad} non-finite values")
        if images is not None and not isinstance(images, Tensor):
            raise InputDataError("images", "None or a tensor of `n x ...` images", type(images).__name__)
        if images is not None and images.shape[0] != feats.shape[0]:
            raise InputDataError("images", f"{feats.shape[0]} images (one per item)", images.shape[0])
        round = None if round is None else check_int("round", round, minimum=0)
        rater = None if rater is None else check_id("rater", rater)
        if not isinstance(source, (str, Sequence)):  # (None: a bare "'NoneType' object is not iterable")
            raise InputDataError("source", f"one str label or {feats.shape[0]} (one per item)", type(source).__name__)
        sources = [source] * feats.shape[0] if isinstance(source, str) else list(source)
        if len(sources) != feats.shape[0]:
            raise InputDataError("source", f"one label or {feats.shape[0]} (one per item)", f"{len(sources)} labels")
        if not all(isinstance(s, str) for s in sources):
            raise InputDataError("source", "str labels", sorted({type(s).__name__ for s in sources}))
        now = time.time()
        with self._transaction():
            start = self.num_items
            rows = []
            for i in range(feats.shape[0]):
                img = None if images is None else _npy(images[i].detach().float().cpu().numpy())
                rows.append((start + i, feats[i].numpy().tobytes(), img, sources[i], round, rater, now))
            self.conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if d is None:
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('num_features', ?)", (str(feats.shape[1]),))
        return list(range(start, start + feats.shape[0]))

    def round_items(self, *, rater: int, round: int, start: int = 0) -> list[int]:
        """Indices of the items stored for ``rater``'s round ``round``, in index order.

        ``start``: an index no item of that round lies below (e.g. the items stored when the round
        before ended): only the items from there are searched, not the whole table (which has no
        index on rounds: a session looks every round, and a long one stores `pool_size` items a round).
        """
        rows = self.conn.execute("SELECT idx FROM items WHERE idx >= ? AND rater=? AND round=? ORDER BY idx",
                                 (check_int("start", start, minimum=0), check_id("rater", rater),
                                  check_int("round", round, minimum=0))).fetchall()
        return [int(r[0]) for r in rows]

    @property
    def num_items(self) -> int:
        """Items stored (every item ever shown, all raters)."""
        # Indices are contiguous from 0: the last one, found in the key's b-tree, where COUNT(*) read every row.
        return int(self.conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM items").fetchone()[0])

    @property
    def num_features(self) -> int | None:
        """`d` of the stored items (None before the first item)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='num_features'").fetchone()
        return None if row is None else int(row[0])

    def features(self, indices: list[int] | Tensor | None = None) -> Tensor:
        """`n x d` features of every stored item, in index order; with ``indices``, `len(indices) x d` of those.

        Items are never changed or removed, so the rows read once are kept and only the items stored
        since (by any process) are read: a session reads the features several times a round, and a
        long one stores `pool_size` items a round (a re-read of every row cost 14 ms at 9,600 items,
        four times a round, growing with every answer). A copy is returned.
        """
        with self._lock:
            buf, n = self._items_buffer, self._items_read
            rows = self.conn.execute("SELECT idx, features FROM items WHERE idx >= ? ORDER BY idx", (n,)).fetchall()
            if rows:
                if [int(r[0]) for r in (rows[0], rows[-1])] != [n, n + len(rows) - 1]:  # not appended: read all
                    buf, n, rows = None, 0, self.conn.execute("SELECT idx, features FROM items ORDER BY idx").fetchall()
                new = torch.from_numpy(np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float64).copy())
                new = new.reshape(len(rows), -1)
                if buf is None or buf.shape[0] < n + len(rows):  # capacity doubled: appends cost O(1) a row
                    grown = torch.empty(max(2 * (n + len(rows)), 64), new.shape[1], dtype=torch.float64)
                    if buf is not None:
                        grown[:n] = buf[:n]
                    buf = grown
                buf[n : n + len(rows)] = new
                n += len(rows)
                self._items_buffer, self._items_read = buf, n
            idx = None if indices is None else torch.as_tensor([int(i) for i in indices], dtype=torch.long)
            if idx is not None and idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < n):
                bad = next(int(i) for i in idx if not 0 <= int(i) < n)  # (an empty store had given zeros for them)
                raise InputDataError("indices", f"indices of stored items (0 to {n - 1})" if n else
                                     "indices of stored items (none is stored)", bad)
            if buf is None:
                return torch.zeros(0, self.num_features or 0, dtype=torch.float64)
            return buf[:n].clone() if idx is None else buf[idx]

    def images(self, indices: list[int] | Tensor) -> Tensor:
        """Stored images of the given items: `len(indices) x ...` float32."""
        out = []
        for i in [int(i) for i in indices]:
            row = self.conn.execute("SELECT image FROM items WHERE idx=?", (i,)).fetchone()
            if row is None or row[0] is None:
                raise InputDataError("indices", "items stored with an image", i)
            out.append(torch.from_numpy(_from_npy(row[0]).copy()))
        return torch.stack(out) if out else torch.zeros(0)

    # -------------------------------------------------------------- queries
    def add_query(
        self, *, round: int, rater: int, kind: str, item_a: int, item_b: int | None = None,
        score: float | None = None, rng_state: Tensor | None = None, source_state: dict[str, Any] | None = None,
    ) -> int:
        """Record a query before it is asked (with the state to resume from); returns its id.

        ``rng_state`` is the session's RNG state and ``source_state`` the candidate
        source's (JSON-serializable, see :meth:`source_state`) right after choosing
        this query; both are written in the query's transaction.
        """
        round, rater = check_int("round", round, minimum=0), check_id("rater", rater)
        if kind not in ("pair", "rating"):
            raise InputDataError("kind", "'pair' or 'rating'", kind)
        if (kind == "pair") != (item_b is not None):
            raise InputDataError("item_b", "an item for a pair and None for a rating", item_b)
        n = self.num_items
        for name, item in (("item_a", item_a), ("item_b", item_b)):
            if item is not None and not 0 <= check_int(name, item, minimum=0) < n:
                raise InputDataError(name, f"the index of a stored item (0 to {n - 1})", item)
        if item_b is not None and int(item_a) == int(item_b):
            raise InputDataError("item_b", f"an item other than item_a ({item_a}): a pair compares two items", item_b)
        if score is not None:  # (a selection's score may be infinite: any real number is stored)
            try:
                if isinstance(score, (str, bytes)) or holds_bool(score) or getattr(score, "ndim", 0) != 0:
                    raise TypeError
                score = float(score)
            except (TypeError, ValueError):  # text gave a bare ValueError; True was stored as 1.0
                raise InputDataError("score", "None or a real number", _shown(score)) from None
        blob = _rng_blob(rng_state)
        state_text = None if source_state is None else _source_state_json(source_state)
        with self._transaction():
            if state_text is not None:
                self._put_source_state(rater, state_text)
            cur = self.conn.execute(
                "INSERT INTO queries (round, rater, kind, item_a, item_b, score, asked, rng_state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (round, rater, kind, int(item_a), None if item_b is None else int(item_b), score, time.time(), blob),
            )
            return int(cur.lastrowid)

    def record_answer(self, query_id: int, answer: str) -> None:
        """Write an answer durably (committed and synced before returning)."""
        query_id = check_id("query_id", query_id)
        row = self.conn.execute("SELECT kind FROM queries WHERE id=?", (query_id,)).fetchone()
        if row is None:
            raise InputDataError("query_id", "the id of a stored query", query_id)
        allowed = PAIR_ANSWERS if row[0] == "pair" else RATING_ANSWERS
        if answer not in allowed:
            raise InputDataError("answer", f"one of {allowed} for a {row[0]} query", answer)
        with self._transaction(durable=True):
            try:
                self.conn.execute("INSERT INTO answers VALUES (?, ?, ?)", (query_id, answer, time.time()))
            except sqlite3.IntegrityError as err:
                raise StoreError(f"Query {query_id} already has an answer; answers are never overwritten.") from err

    def queries(self, *, rater: int | None = None, answered: bool | None = None) -> list[StoredQuery]:
        """The stored queries (of ``rater``; only the answered or unanswered ones), in the order asked."""
        sql = ("SELECT q.id, q.round, q.rater, q.kind, q.item_a, q.item_b, q.score, a.answer, q.asked, a.answered "
               "FROM queries q LEFT JOIN answers a ON a.query_id = q.id")
        cond, args = [], []
        if rater is not None:
            cond.append("q.rater = ?")
            args.append(check_id("rater", rater))
        if answered is not None:
            cond.append("a.answer IS NOT NULL" if answered else "a.answer IS NULL")
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        return [StoredQuery(*r) for r in self.conn.execute(sql + " ORDER BY q.id", args)]

    def query_rng_state(self, query_id: int) -> Tensor | None:
        """The RNG state stored with a query (None when none was stored)."""
        row = self.conn.execute("SELECT rng_state FROM queries WHERE id=?", (check_id("query_id", query_id),)).fetchone()
        if row is None or row[0] is None:
            return None
        return torch.from_numpy(np.frombuffer(row[0], dtype=np.uint8).copy())

    def finished_rounds(self, rater: int) -> set[int]:
        """Numbers of ``rater``'s rounds whose record is stored."""
        return {r[0] for r in self.conn.execute("SELECT round FROM rounds WHERE rater=?", (check_id("rater", rater),))}

    def pending_query(self, rater: int) -> StoredQuery | None:
        """The last query asked of ``rater`` and not yet answered (after a crash)."""
        pending = self.queries(rater=rater, answered=False)
        return pending[-1] if pending else None

    def num_answers(self, rater: int | None = None) -> int:
        """How many answers are stored (of ``rater``); counted in SQL, as sessions ask every round."""
        sql = "SELECT COUNT(*) FROM answers a JOIN queries q ON q.id = a.query_id"
        args = () if rater is None else (check_id("rater", rater),)
        return int(self.conn.execute(sql + (" WHERE q.rater = ?" if rater is not None else ""), args).fetchone()[0])

    def source_state(self, rater: int) -> dict[str, Any] | None:
        """The candidate source's state stored with ``rater``'s last query or finished round, or None."""
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (f"source_state/rater{check_id('rater', rater)}",)).fetchone()
        return None if row is None else json.loads(row[0])

    def cold_start(self, rater: int) -> dict[str, Any] | None:
        """The cold-start prior kept for ``rater`` (:meth:`set_cold_start`), or None."""
        key = f"cold_start/rater{check_id('rater', rater)}"
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_cold_start(self, rater: int, record: dict[str, Any]) -> None:
        """Keep ``rater``'s cold-start prior (a JSON-serializable dict: what it was learned from, and the prior),
        so that a resume need not learn it again from the same answers (a minute with 30 raters' answers)."""
        rater = check_id("rater", rater)
        if not isinstance(record, dict):
            raise InputDataError("record", "a dict", type(record).__name__)
        text = _json("record", record)
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"cold_start/rater{rater}", text))

    def _put_source_state(self, rater: int, text: str) -> None:
        """Store ``rater``'s source state, as :func:`_source_state_json` wrote it (checked before the transaction)."""
        key = f"source_state/rater{rater}"
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, text))

    # ---------------------------------------------------------------- rounds
    def finish_round(self, *, rater: int, round: int, metrics: dict[str, Any], rng_state: Tensor | None = None,
                     source_state: dict[str, Any] | None = None) -> None:
        """Record a finished round's metrics (and the source's state at its end, as in :meth:`add_query`)."""
        rater, round = check_id("rater", rater), check_int("round", round, minimum=0)
        # Read back as {"round": r, **metrics}: anything but a dict of str keys made rounds() raise, for good.
        if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
            raise InputDataError("metrics", "a dict of str names to numbers", _shown_metrics(metrics))
        text = _json("metrics", metrics, default=_metric_number)
        blob = _rng_blob(rng_state)
        state_text = None if source_state is None else _source_state_json(source_state)
        with self._transaction():
            if state_text is not None:
                self._put_source_state(rater, state_text)
            self.conn.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?, ?, ?, ?, ?)",
                (rater, round, text, blob, time.time()),
            )

    def rounds(self, rater: int) -> list[dict[str, Any]]:
        """``rater``'s finished rounds in order: ``{"round": r, **metrics}`` each."""
        rows = self.conn.execute("SELECT round, metrics FROM rounds WHERE rater=? ORDER BY round",
                                 (check_id("rater", rater),)).fetchall()
        return [{"round": r, **json.loads(m)} for r, m in rows]

    # ---------------------------------------------------------- to the model
    def preference_data(self, *, rater: int | None = None, exclude_rater: int | None = None,
                        feature_names: tuple[str, ...] | None = None) -> PreferenceData:
        """Every item, and the answered queries (of ``rater``, or of all with rater ids).

        ``exclude_rater`` leaves one rater's answers out (e.g. to build a new rater's
        prior from the others).
        """
        if exclude_rater is not None:
            exclude_rater = check_id("exclude_rater", exclude_rater)
        comps, ties, crater, ratings, rrater = [], [], [], [], []
        for q in self.queries(rater=rater, answered=True):
            if exclude_rater is not None and q.rater == exclude_rater:
                continue
            if q.kind == "pair":
                comps.append([q.item_b, q.item_a] if q.answer == "second" else [q.item_a, q.item_b])
                ties.append(q.answer == "tie")
                crater.append(q.rater)
            else:
                ratings.append([q.item_a, 1 if q.answer == "like" else -1])
                rrater.append(q.rater)
        multi = rater is None and any(crater + rrater)  # all rater 0: one person, no ids needed
        return PreferenceData(
            items=self.features(),
            comparisons=torch.tensor(comps, dtype=torch.long).reshape(-1, 2),
            ties=torch.tensor(ties, dtype=torch.bool),
            ratings=torch.tensor(ratings, dtype=torch.long).reshape(-1, 2),
            comparison_rater=torch.tensor(crater, dtype=torch.long) if multi else None,
            rating_rater=torch.tensor(rrater, dtype=torch.long) if multi else None,
            feature_names=feature_names,
        )

    def close(self) -> None:
        """Close the file; using the store afterwards raises :class:`StoreError`."""
        self.conn.close()
        self.conn = _ClosedConnection(self.path)

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[StoredQuery]:
        return iter(self.queries())

    def __repr__(self) -> str:
        if isinstance(self.conn, _ClosedConnection):
            return f"PreferenceStore({str(self.path)!r}, closed)"
        return f"PreferenceStore({str(self.path)!r}, items={self.num_items}, answers={self.num_answers()})"
