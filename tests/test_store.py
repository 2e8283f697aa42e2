from __future__ import annotations

import sqlite3

import pytest
import torch

from papa_bayes.exceptions import InputDataError, StoreError
from papa_bayes.store import SCHEMA_VERSION, PreferenceStore


def test_round_trip_to_preference_data(tmp_path):
    with PreferenceStore(tmp_path / "s.db") as store:
        store.set_config({"liked": [1, 4]})
        idx = store.add_items(torch.randn(4, 3), images=torch.rand(4, 1, 8, 8), source="steered", round=0, rater=0)
        assert idx == [0, 1, 2, 3]
        q1 = store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1, score=0.3)
        store.record_answer(q1, "second")
        q2 = store.add_query(round=1, rater=0, kind="rating", item_a=2)
        store.record_answer(q2, "dislike")
        q3 = store.add_query(round=2, rater=0, kind="pair", item_a=2, item_b=3)
        store.record_answer(q3, "tie")
        data = store.preference_data(rater=0)
        assert data.comparisons.tolist() == [[1, 0], [2, 3]]  # winner first
        assert data.ties.tolist() == [False, True]
        assert data.ratings.tolist() == [[2, -1]]
        assert store.images([3]).shape == (1, 1, 8, 8)
    again = PreferenceStore(tmp_path / "s.db", create=False)
    assert again.config == {"liked": [1, 4]} and again.num_answers() == 3
    assert torch.equal(again.features(), data.items)


def test_answers_are_validated_and_never_overwritten(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    store.add_items(torch.randn(2, 2))
    q = store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1)
    with pytest.raises(InputDataError, match="answer"):
        store.record_answer(q, "like")
    store.record_answer(q, "first")
    with pytest.raises(StoreError, match="never overwritten"):
        store.record_answer(q, "second")
    with pytest.raises(InputDataError, match="features"):
        store.add_items(torch.randn(1, 5))
    assert store.pending_query(0) is None
    q2 = store.add_query(round=1, rater=0, kind="rating", item_a=1)
    assert store.pending_query(0).id == q2


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.db"
    PreferenceStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        PreferenceStore(path)


def test_corrupt_or_foreign_file_is_reported_not_overwritten(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="left untouched"):
        PreferenceStore(path)
    assert path.read_bytes() == before

    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a papa_bayes store"):
        PreferenceStore(other)

    good = tmp_path / "good.db"
    store = PreferenceStore(good)
    store.add_items(torch.randn(50, 4))
    store.close()
    raw = bytearray(good.read_bytes())
    raw[100:4000] = b"\xff" * 3900  # smash the page area after the header
    good.write_bytes(bytes(raw))
    with pytest.raises(StoreError):
        PreferenceStore(good)

    # A folder given as the store (it used to raise IsADirectoryError).
    for create in (True, False):
        with pytest.raises(StoreError, match="folder"):
            PreferenceStore(tmp_path, create=create)


def test_foreign_sqlite_file_is_not_converted_and_not_kept_open(tmp_path, monkeypatch):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    closed = []

    class Connection(sqlite3.Connection):
        def close(self):
            closed.append(True)
            super().close()

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: real_connect(*a, factory=Connection, **kw))
    with pytest.raises(StoreError, match="not a papa_bayes store"):
        PreferenceStore(other)
    assert closed == [True]
    assert other.read_bytes() == before  # no journal_mode=WAL written into its header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal / -shm files


def test_non_finite_features_are_refused_before_writing(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    store.add_items(torch.randn(2, 2))
    with pytest.raises(InputDataError, match="features: expected finite values"):
        store.add_items(torch.tensor([[0.0, 1.0], [float("nan"), float("inf")]]))
    assert store.num_items == 2 and bool(torch.isfinite(store.preference_data().items).all())


def test_add_query_validates_items_round_and_rater(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    store.add_items(torch.randn(3, 2))
    bad = [
        ("item_b", dict(round=0, rater=0, kind="pair", item_a=0, item_b=99)),
        ("item_a", dict(round=0, rater=0, kind="rating", item_a=-1)),
        ("round", dict(round=None, rater=0, kind="rating", item_a=0)),
        ("rater", dict(round=0, rater=None, kind="rating", item_a=0)),
        ("item_a", dict(round=0, rater=0, kind="rating", item_a=1.5)),
        ("item_b", dict(round=0, rater=0, kind="pair", item_a=0, item_b="1")),
        ("item_b", dict(round=0, rater=0, kind="pair", item_a=2, item_b=2)),
    ]
    for field, kwargs in bad:
        with pytest.raises(InputDataError, match=f"^{field}:"):
            store.add_query(**kwargs)
    assert store.queries() == []


def test_items_take_one_source_per_item(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    store.add_items(torch.randn(3, 2), source=["explore", "steered", "steered"], round=0)
    store.add_items(torch.randn(1, 2), source="base")
    rows = store.conn.execute("SELECT source FROM items ORDER BY idx").fetchall()
    assert [r[0] for r in rows] == ["explore", "steered", "steered", "base"]
    with pytest.raises(InputDataError, match="source"):
        store.add_items(torch.randn(2, 2), source=["explore"])
    for field, bad in (("round", dict(round=-1)), ("rater", dict(rater=1.5)), ("images", dict(images=[0, 1]))):
        with pytest.raises(InputDataError, match=f"^{field}:"):
            store.add_items(torch.randn(2, 2), **bad)
    assert store.num_items == 4


def test_set_config_keeps_the_default_that_of_its_rater(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    store.set_config({"rater": 0, "seed": 1}, rater=0)
    store.set_config({"rater": 1, "seed": 2}, rater=1)
    assert store.config == {"rater": 0, "seed": 1}  # the first rater's stays the default
    store.set_config({"rater": 0, "seed": 3}, rater=0)
    assert store.config == store.rater_config(0) == {"rater": 0, "seed": 3}
    assert store.rater_config(1) == {"rater": 1, "seed": 2}


def test_source_state_is_written_with_queries_and_rounds(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    store.add_items(torch.randn(2, 2))
    assert store.source_state(0) is None
    store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1, source_state={"calls": 1})
    assert store.source_state(0) == {"calls": 1} and store.source_state(1) is None
    store.finish_round(rater=0, round=0, metrics={}, source_state={"calls": 1, "chosen_scale": 0.5})
    assert store.source_state(0) == {"calls": 1, "chosen_scale": 0.5}


def test_a_closed_store_says_so(tmp_path):
    """After close(), repr raised sqlite3.ProgrammingError and every use a foreign error."""
    store = PreferenceStore(tmp_path / "s.db")
    store.add_items(torch.zeros(2, 3))
    store.close()
    assert "closed" in repr(store)
    with pytest.raises(StoreError, match="closed"):
        store.num_items
    with pytest.raises(StoreError, match="closed"):
        store.queries()
    store.close()  # twice is fine


def test_queries_carry_their_times_and_make_a_table(tmp_path):
    """A study measures how long a person took; the store wrote asked/answered times but no API gave them."""
    import dataclasses

    with PreferenceStore(tmp_path / "s.db") as store:
        store.add_items(torch.zeros(3, 2))
        q = store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1)
        store.add_query(round=1, rater=0, kind="rating", item_a=2)
        store.record_answer(q, "tie")
        answered, pending = store.queries()
        assert answered.asked <= answered.answered and pending.asked is not None and pending.answered is None
        rows = [dataclasses.asdict(query) for query in store]
        assert rows[0]["answer"] == "tie" and set(rows[0]) >= {"round", "rater", "kind", "asked", "answered"}
    with pytest.raises(InputDataError, match="path"):
        PreferenceStore(123)


def test_a_store_in_a_missing_folder_says_so(tmp_path):
    """sqlite3's "unable to open database file" came as "not a readable papa_bayes store ... left untouched"."""
    with pytest.raises(StoreError, match="is not a folder"):
        PreferenceStore(tmp_path / "nowhere" / "s.db")
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(StoreError, match="No store at"):
        PreferenceStore(tmp_path / "nowhere" / "s.db", create=False)
    with pytest.raises(InputDataError, match=r"^path: expected a file path \(str or Path\), got int"):
        PreferenceStore(3)


def test_num_answers_counts_per_rater_and_skips_pending_queries(tmp_path):
    with PreferenceStore(tmp_path / "s.db") as store:
        store.add_items(torch.randn(4, 3))
        for rater, answer in ((0, "first"), (0, "tie"), (1, "like")):
            kind = "rating" if answer == "like" else "pair"
            q = store.add_query(round=0, rater=rater, kind=kind, item_a=0, item_b=None if kind == "rating" else 1)
            store.record_answer(q, answer)
        store.add_query(round=1, rater=0, kind="pair", item_a=2, item_b=3)  # asked, not answered
        assert (store.num_answers(), store.num_answers(0), store.num_answers(1), store.num_answers(2)) == (3, 2, 1, 0)
        assert store.num_answers(0) == len(store.queries(rater=0, answered=True))


def test_numpy_and_tensor_ids_find_what_int_ids_find(tmp_path):
    """SQLite stored a NumPy integer as a blob: every `rater = ?` matched nothing, silently."""
    import numpy as np

    with PreferenceStore(tmp_path / "s.db") as s:
        s.add_items(torch.randn(3, 2, dtype=torch.float64))
        q = s.add_query(round=0, rater=1, kind="pair", item_a=0, item_b=1)
        s.record_answer(np.int64(q), "first")
        s.finish_round(rater=np.int64(1), round=np.int64(0), metrics={"a": 1.0})
        for r in (1, np.int64(1), torch.tensor(1)):
            assert s.num_answers(r) == 1 and len(s.queries(rater=r)) == 1 and s.finished_rounds(r) == {0}
            assert s.preference_data(rater=r).num_comparisons == 1 and s.rounds(r)[0]["a"] == 1.0
            assert s.preference_data(exclude_rater=r).num_comparisons == 0
        for bad in (-1, 1.0, 2**63, "1"):
            with pytest.raises(InputDataError, match="rater"):
                s.num_answers(bad)
        with pytest.raises(InputDataError, match="query_id"):
            s.record_answer(1.5, "first")


def test_a_single_rater_keeps_their_id_in_the_data(tmp_path):
    """Only rater 2 had answered: the data carried no ids, so for_rater(2) was empty and rater 0 had the answer."""
    with PreferenceStore(tmp_path / "s.db") as s:
        s.add_items(torch.randn(3, 2, dtype=torch.float64))
        s.record_answer(s.add_query(round=0, rater=2, kind="pair", item_a=0, item_b=1), "second")
        data = s.preference_data()
        assert data.comparison_rater.tolist() == [2] and data.for_rater(2).comparisons.tolist() == [[1, 0]]
        assert data.for_rater(0).num_comparisons == 0
        s.record_answer(s.add_query(round=0, rater=0, kind="pair", item_a=1, item_b=2), "first")
        assert s.preference_data().comparison_rater.tolist() == [2, 0]


@pytest.mark.parametrize("bad, match", [
    (torch.ones(2, 2, dtype=torch.complex128), "real numbers"),
    (torch.ones(2, 2, dtype=torch.bool), "real numbers"),
    ([["a", "b"]], "an `n x d` array of real numbers"),
])
def test_items_that_are_not_real_numbers_are_refused(tmp_path, bad, match):
    """Complex features lost their imaginary part, bools became 0/1, and text raised numpy's ValueError."""
    with PreferenceStore(tmp_path / "s.db") as s:
        with pytest.raises(InputDataError, match=f"features: expected {match}"):
            s.add_items(bad)
        assert s.num_items == 0


def test_a_config_that_json_cannot_hold_is_refused(tmp_path):
    with PreferenceStore(tmp_path / "s.db") as s:
        with pytest.raises(InputDataError, match="config: expected JSON-serializable"):
            s.set_config({"dtype": torch.float32}, rater=0)
        assert s.config is None


def test_a_store_is_usable_from_other_threads(tmp_path):
    """A web server answers in worker threads: the store raised sqlite3's ProgrammingError ('objects created
    in a thread can only be used in that same thread'). Writes from several threads are serialized."""
    import threading

    with PreferenceStore(tmp_path / "s.db") as s:
        s.add_items(torch.randn(4, 2, dtype=torch.float64))
        ids = [s.add_query(round=r, rater=0, kind="pair", item_a=0, item_b=1) for r in range(40)]
        errors = []

        def answer(part):
            try:
                for q in part:
                    s.record_answer(q, "first")
                    s.add_query(round=100, rater=1, kind="rating", item_a=2)
            except Exception as err:  # noqa: BLE001 (reported below)
                errors.append(err)

        threads = [threading.Thread(target=answer, args=(ids[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and s.num_answers(0) == 40 and len(s.queries(rater=1)) == 40


def _open_at(args):
    path, start = args
    import time

    while time.time() < start:  # every worker opens the new store at the same moment
        pass
    try:
        PreferenceStore(path).close()
        return "ok"
    except Exception as err:  # noqa: BLE001 (compared below)
        return f"{type(err).__name__}: {err}"


def test_workers_creating_one_new_store_at_once_all_open_it(tmp_path):
    """Several processes (a web server's workers, one per rater) opening one new store at the same time:
    all but one failed with StoreError '... is not a readable papa_bayes store (UNIQUE constraint failed:
    meta.key)' or '(database is locked)', or '... not a papa_bayes store (no 'meta' table)'."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        for trial in range(6):
            path = tmp_path / f"s{trial}.db"
            outcomes = pool.map(_open_at, [(path, time.time() + 0.2)] * 4)
            assert outcomes == ["ok"] * 4, outcomes
            with PreferenceStore(path, create=False) as store:
                assert store.schema_version == SCHEMA_VERSION


def test_an_empty_sqlite_file_is_made_a_store(tmp_path):
    """A SQLite file with no table yet (another process creating the store, its schema not yet committed)
    was refused as 'not a papa_bayes store (no 'meta' table)'."""
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    assert path.stat().st_size > 0
    with PreferenceStore(path) as store:
        store.add_items(torch.randn(2, 3))
    with PreferenceStore(path, create=False) as store:
        assert store.num_items == 2


def test_a_store_another_program_holds_says_so_and_stays_usable(tmp_path):
    """Another connection holding the write lock past the wait: record_answer raised sqlite3's bare
    OperationalError('database is locked'); now a StoreError naming the file, and the store works after."""
    path = tmp_path / "s.db"
    with PreferenceStore(path) as store:
        store.add_items(torch.randn(3, 2, dtype=torch.float64))
        q = store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1)
        store.conn.execute("PRAGMA busy_timeout=100")  # (the store waits 30 s)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match=r"s\.db \(database is locked\).*nothing was written"):
            store.record_answer(q, "first")
        other.execute("ROLLBACK")
        other.close()
        assert store.num_answers() == 0
        store.record_answer(q, "first")
        assert store.num_answers() == 1


def _read_only(monkeypatch):
    """Open every store read-only (SQLite's mode=ro), as a file without write permission opens; root, who runs
    these tests in containers, writes files whatever their permissions say."""
    connect = sqlite3.connect

    def read_only_connect(path, **kwargs):
        return connect(f"file:{path}?mode=ro", uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only_connect)


def test_a_read_only_store_is_read_and_refuses_writes_with_a_store_error(tmp_path, monkeypatch):
    """A read-only file opened, then every write raised sqlite3's bare OperationalError ("attempt to write a
    readonly database"), naming neither the file nor why."""
    with PreferenceStore(tmp_path / "s.db") as store:
        store.add_items(torch.randn(3, 2))
    _read_only(monkeypatch)
    with PreferenceStore(tmp_path / "s.db", create=False) as store:
        assert store.num_items == 3  # reading works
        with pytest.raises(StoreError, match=r"s\.db.*read-only"):
            store.set_config({"a": 1})
        with pytest.raises(StoreError, match="read-only"):
            store.add_items(torch.randn(1, 2))
        with pytest.raises(StoreError, match="read-only"):
            store.check_writable()
        assert store.num_items == 3 and store.config is None
    monkeypatch.undo()
    with PreferenceStore(tmp_path / "s.db") as store:
        store.check_writable()  # a probe: nothing written
        assert store.num_items == 3 and store.config is None


class _FailingCommit:
    """A store's connection whose COMMIT fails as SQLite's does on a full disk; all else passes through."""

    def __init__(self, conn, message="database or disk is full", name="SQLITE_FULL"):
        self.conn, self.message, self.name = conn, message, name

    def execute(self, sql, *args):
        if sql == "COMMIT":
            err = sqlite3.OperationalError(self.message)
            err.sqlite_errorname = self.name
            raise err
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


def test_a_commit_that_fails_for_another_reason_than_a_lock_says_why(tmp_path):
    """A COMMIT refused on a full disk was reported as "another program held it longer than the 30 s wait";
    now a StoreError naming the file and SQLite's own reason, and the store stays usable."""
    path = tmp_path / "s.db"
    with PreferenceStore(path) as store:
        store.add_items(torch.randn(3, 2, dtype=torch.float64))
        q = store.add_query(round=0, rater=0, kind="pair", item_a=0, item_b=1)
        conn, store.conn = store.conn, _FailingCommit(store.conn)
        with pytest.raises(StoreError, match=r"s\.db \(database or disk is full\)") as info:
            store.record_answer(q, "first")
        assert "another program" not in str(info.value) and "30 s" not in str(info.value)
        store.conn = conn
        assert not conn.in_transaction and store.num_answers() == 0  # rolled back
        store.record_answer(q, "first")
        assert store.num_answers() == 1
        store.conn = _FailingCommit(conn, "database is locked", "SQLITE_BUSY")  # a lock is still named as one
        with pytest.raises(StoreError, match="another program held it"):
            store.add_items(torch.randn(1, 2, dtype=torch.float64))
        store.conn = conn
