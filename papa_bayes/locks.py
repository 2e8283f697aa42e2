"""Per-rater locks of a store: one person's session at a time, across processes.

Two sessions of one rater at once, in two processes, would ask the same round twice;
:func:`lock_rater` refuses the second with :class:`~papa_bayes.exceptions.StoreError`.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any, TextIO

from papa_bayes.exceptions import StoreError

__all__ = ["RaterLock", "lock_file", "lock_rater"]


class RaterLock:
    """A rater's lock of a store, held by this process until :meth:`close` (see :func:`lock_rater`)."""

    def __init__(self, key: Path, rater: int) -> None:
        self._key, self.rater, self._open, self._pid = key, rater, True, os.getpid()

    def close(self) -> None:
        """Release it (once; a second call does nothing)."""
        if not self._open:
            return
        self._open = False
        with _LOCKS_GUARD:
            entry = _LOCKS.get(self._key)
            if self._pid != os.getpid() or entry is None or entry[0] != self._pid:  # (taken before a fork)
                return
            _, file, held = entry
            held[self.rater] -= 1
            if held[self.rater] == 0:
                del held[self.rater]
                import fcntl

                fcntl.lockf(file, fcntl.LOCK_UN, 1, self.rater)
            if not held:
                del _LOCKS[self._key]
                file.close()

    def __del__(self) -> None:  # an abandoned session's lock goes with it, as an unreferenced file did
        try:
            self.close()
        except Exception:  # (interpreter shutdown)
            pass

    def __enter__(self) -> RaterLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RaterLock({str(self._key)!r}, rater={self.rater}, {'held' if self._open else 'released'})"


# One open lock file per store and process, with how often each rater's byte is held: POSIX
# record locks belong to the process, and closing *any* descriptor of the file drops them
# all, so a second descriptor, closed, would release every other rater's lock (and a
# rater's lock taken twice, as by ``papa-bayes label`` and its session, would go with the
# first release). Keyed by pid too: a forked child inherits the table, not the locks.
_LOCKS: dict[Path, tuple[int, TextIO, dict[int, int]]] = {}
_LOCKS_GUARD = threading.Lock()


def lock_file(path: str | Path) -> Path:
    """The file holding the raters' locks of the store at ``path``: ``<store>.lock`` beside it (absolute; beside
    the file a symlink leads to, so that a store reached by two paths has one lock)."""
    path = Path(path).resolve()
    return path.with_name(path.name + ".lock")


def lock_rater(path: str | Path, rater: int) -> RaterLock | None:
    """Hold rater ``rater``'s lock of the store at ``path`` until the returned lock is closed.

    Two sessions of one rater at once, in two processes, would ask the same round
    twice. The lock is one byte per rater of ``<store>.lock`` beside the store (a
    POSIX record lock: released when the process ends, however it ends; held per
    process, so one process may take a rater's lock again: it is released when
    every one taken is closed). None where there are no such locks (Windows).

    Raises:
        StoreError: another process holds this rater's lock, or the lock file cannot be written or locked.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    path = Path(path)
    key = lock_file(path)
    rater = int(rater)
    with _LOCKS_GUARD:
        entry = _LOCKS.get(key)
        if entry is None or entry[0] != os.getpid():
            try:
                file = open(key, "a")
            except OSError as err:  # (a read-only folder): a store error, as the store's own would be
                raise StoreError(f"Cannot take rater {rater}'s lock of {path}: {key} cannot be written "
                                 f"({type(err).__name__}: {err.strerror or err}); the store's folder must be "
                                 "writable.") from err
            entry = _LOCKS[key] = (os.getpid(), file, {})
        _, file, held = entry
        if rater not in held:
            try:
                fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, rater)
            except OSError as err:
                if not held:
                    del _LOCKS[key]
                    file.close()
                if err.errno not in (errno.EACCES, errno.EAGAIN):  # (ENOLCK: a file system without locks)
                    raise StoreError(f"Cannot take rater {rater}'s lock of {path}: {key} cannot be locked "
                                     f"({type(err).__name__}: {err.strerror or err}); the store's folder must be "
                                     "on a file system with POSIX locks (e.g. not a network share without "
                                     "them).") from err
                raise StoreError(f"Rater {rater} is already answering in {path} (another process holds the "
                                 "rater's session); a second person needs their own rater id.") from None
        held[rater] = held.get(rater, 0) + 1
    return RaterLock(key, rater)
