"""SQLite failures inside a store's transaction: reported as StoreError naming the store, and rolled back."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from papa_bayes.exceptions import StoreError
from papa_bayes.store import PreferenceStore


class _Failing:
    """A store's connection whose statements starting with ``prefix`` raise ``error``; all else passes through."""

    def __init__(self, conn, prefix, error):
        self.conn, self.prefix, self.error = conn, prefix, error

    def execute(self, sql, *args):
        if sql.startswith(self.prefix):
            raise self.error
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def _error(cls, message, name):
    err = cls(message)
    err.sqlite_errorname = name
    return err


def _store_with_a_query(path):
    store = PreferenceStore(path)
    store.add_items(torch.randn(3, 2, dtype=torch.float64))
    return store, store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1)


def test_a_full_disk_inside_a_write_is_a_store_error_and_rolled_back(tmp_path):
    """An INSERT refused on a full disk surfaced as sqlite3's bare OperationalError, naming no store."""
    store, q = _store_with_a_query(tmp_path / "s.db")
    conn = store.conn
    store.conn = _Failing(conn, "INSERT INTO answers", _error(sqlite3.OperationalError, "database or disk is full",
                                                               "SQLITE_FULL"))
    with pytest.raises(StoreError, match=r"s\.db \(database or disk is full\).*nothing was written") as info:
        store.record_answer(q, "first")
    assert "another program" not in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    store.conn = conn
    assert not conn.in_transaction and store.num_answers() == 0
    store.record_answer(q, "first")  # usable after
    assert store.num_answers() == 1
    store.close()


def test_a_commit_of_a_corrupt_store_is_rolled_back_and_a_store_error(tmp_path):
    """A COMMIT failing with sqlite3.DatabaseError (a corrupt file) escaped raw and left the transaction open:
    every later write then failed with "cannot start a transaction within a transaction"."""
    store, q = _store_with_a_query(tmp_path / "s.db")
    conn = store.conn
    store.conn = _Failing(conn, "COMMIT", _error(sqlite3.DatabaseError, "database disk image is malformed",
                                                 "SQLITE_CORRUPT"))
    with pytest.raises(StoreError, match=r"s\.db \(database disk image is malformed\)"):
        store.record_answer(q, "first")
    store.conn = conn
    assert not conn.in_transaction and store.num_answers() == 0  # rolled back
    store.record_answer(q, "first")
    assert store.num_answers() == 1
    store.close()


def test_a_rollback_that_fails_too_keeps_the_first_error(tmp_path):
    """A failed COMMIT whose ROLLBACK failed as well raised the ROLLBACK's raw error, hiding the COMMIT's."""
    store, q = _store_with_a_query(tmp_path / "s.db")
    conn = store.conn

    class _Both(_Failing):
        def execute(self, sql, *args):
            if sql == "ROLLBACK":
                conn.execute("ROLLBACK")  # (done, but reported as failed)
                raise _error(sqlite3.OperationalError, "disk I/O error", "SQLITE_IOERR")
            return super().execute(sql, *args)

    store.conn = _Both(conn, "COMMIT", _error(sqlite3.OperationalError, "database or disk is full", "SQLITE_FULL"))
    with pytest.raises(StoreError, match=r"database or disk is full"):
        store.record_answer(q, "first")
    store.conn = conn
    assert not conn.in_transaction and store.num_answers() == 0
    store.close()


def test_a_body_error_that_is_not_sqlites_passes_unchanged(tmp_path):
    """Only SQLite's errors become StoreError: the store's own (a second answer) and bugs pass as raised."""
    store, q = _store_with_a_query(tmp_path / "s.db")
    store.record_answer(q, "first")
    with pytest.raises(StoreError, match="never overwritten"):
        store.record_answer(q, "second")
    assert not store.conn.in_transaction
    store.close()
