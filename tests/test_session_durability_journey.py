"""A person labeling over days: sessions killed mid-write, resumed, shared, and ``papa-bayes label``'s reading of
the stored model (its JSON record, or the repr of stores written before the record)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from papa_bayes.exceptions import InputDataError
from papa_bayes.labeling import main as label_main
from papa_bayes.models import HierarchicalLinearReward, LinearReward
from papa_bayes.session import PreferenceSession
from papa_bayes.store import PreferenceStore

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import setup  # noqa: E402


class _ModelLoaded(Exception):
    pass


@pytest.fixture
def stops_at_model_load(monkeypatch):
    """Stops ``papa-bayes label`` where it would load the diffusion model; records the reward model it built."""
    import papa_bayes.demo
    import papa_bayes.models

    built = []

    def refuse(*args, **kwargs):
        raise _ModelLoaded

    monkeypatch.setattr(papa_bayes.demo, "make_setup", refuse)
    for cls in (HierarchicalLinearReward, LinearReward):
        class Recorded(cls):
            def __init__(self, *a, _cls=cls, **k):
                super().__init__(*a, **k)
                built.append(_cls.__name__)
        Recorded.__name__ = Recorded.__qualname__ = cls.__name__
        monkeypatch.setattr(papa_bayes.models, cls.__name__, Recorded)
    return built


def _registered(path, model, rater=0):
    """A session of ``rater`` as ``papa-bayes label`` would begin it (its model), one answer stored."""
    source, user, _ = setup()
    PreferenceSession(path, source, user, model=model, pool_size=8, rater=rater).run(1, progress_bar=False)


def _rewrite(path, rater, change):
    with PreferenceStore(path, create=False) as store:
        cfg = store.rater_config(rater)
        store.set_config(change(dict(cfg)), rater=rater)


def _label(path, rater=0):
    return label_main(["--store", str(path), "--rater", str(rater)], read=lambda _: "q", write=io.StringIO())


@pytest.mark.parametrize("kind", ["record", "repr only (before the record)"])
def test_label_reads_a_hierarchical_session_from_its_record_or_an_old_stores_repr(tmp_path, stops_at_model_load,
                                                                                 kind):
    path = tmp_path / "s.db"
    _registered(path, HierarchicalLinearReward(ties=True), rater=1)
    if kind == "record":  # the repr is no longer read: a later version may write it otherwise
        _rewrite(path, 1, lambda c: {**c, "model": "papa_bayes.models.HierarchicalLinearReward<ties=True>"})
    else:
        _rewrite(path, 1, lambda c: {k: v for k, v in c.items() if k != "model_record"})
    del stops_at_model_load[:]
    with pytest.raises(_ModelLoaded):  # resumed with the model it began with, not refused as another program's
        _label(path, rater=1)
    assert stops_at_model_load == ["HierarchicalLinearReward"]


@pytest.mark.parametrize("kind", ["record", "repr only (before the record)"])
def test_label_refuses_another_programs_session_by_record_or_repr(tmp_path, stops_at_model_load, kind):
    path = tmp_path / "s.db"
    _registered(path, LinearReward(rationality=1.0, ties=False))
    if kind == "record":  # the repr as label's own model writes it: only the record tells them apart
        _rewrite(path, 0, lambda c: {**c, "model": repr(LinearReward(rationality=1.0, ties=True))})
    else:
        _rewrite(path, 0, lambda c: {k: v for k, v in c.items() if k != "model_record"})
    with pytest.raises(InputDataError, match=r"another program began with LinearReward\(ties=False, \.\.\.\); "
                                             r"answer as a new rater \(e\.g\. --rater 1\)"):
        _label(path)


def test_a_lock_the_file_system_cannot_take_is_not_called_another_persons(tmp_path, monkeypatch):
    """On a file system without POSIX locks (lockf: ENOLCK) every session and sitting was told, for good, that
    "Rater 0 is already answering (another process holds the rater's session)": a lock that never clears."""
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    source, user, _ = setup()
    path = tmp_path / "s.db"
    with pytest.raises(Exception) as by_session:
        PreferenceSession(path, source, user, pool_size=8)
    with pytest.raises(Exception) as by_command:
        _label(path)
    for err in (by_session.value, by_command.value):
        assert type(err).__name__ == "StoreError"
        assert "No locks available" in str(err) and "POSIX locks" in str(err) and "already answering" not in str(err)
    with PreferenceStore(path, create=False) as store:  # the session's store was made, and nothing was asked
        assert store.queries() == []


def _asked(path):
    with PreferenceStore(path, create=False) as store:
        return [(q.round, q.item_a, q.item_b, q.answer) for q in store.queries()]


def test_a_new_hierarchical_session_shows_its_prior_before_the_first_round(tmp_path):
    """A HierarchicalLinearReward session of a new store (no items yet) failed at ``session.posterior`` and
    ``recommend`` with "items: expected at least one feature, got (0, 0)": the store's empty feature matrix."""
    asked = []
    for look in (False, True):
        source, user, _ = setup()
        path = tmp_path / f"look_{look}.db"
        with PreferenceSession(path, source, user, model=HierarchicalLinearReward(), pool_size=8) as session:
            if look:
                utility = session.posterior.utility(source.items[:5])
                assert utility.shape == (session.num_draws, 5) and bool(utility.isfinite().all())
                assert len(session.recommend(3)) == 3
                assert session.posterior.to_inference_data().posterior.sizes["draw"] == session.num_draws
            session.run(3, progress_bar=False)
        asked.append(_asked(path))
    assert asked[0] == asked[1] and len(asked[0]) == 3  # looking changed no question


def test_a_store_reached_through_a_symlink_has_the_one_lock(tmp_path):
    """The lock file was named after the path given: a store reached as ``projects/s.db``, a symlink to
    ``data/real.db``, was locked in ``projects/s.db.lock``, so two processes of one rater asked the same rounds."""
    import subprocess

    from papa_bayes.exceptions import StoreError

    (tmp_path / "data").mkdir()
    (tmp_path / "projects").mkdir()
    real, link = tmp_path / "data" / "real.db", tmp_path / "projects" / "s.db"
    source, user, _ = setup()
    PreferenceSession(real, source, user, pool_size=8).run(1, progress_bar=False)
    link.symlink_to(real)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom papa_bayes.locks import lock_rater\n"
         "lock = lock_rater(sys.argv[1], 0)\nprint('held', flush=True)\ntime.sleep(120)", str(real)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match="Rater 0 is already answering"):
            PreferenceSession.resume(link, source, user)
    finally:
        holder.kill()
        holder.wait()
    with PreferenceSession.resume(link, source, user) as session:  # the holder's end released it
        session.run(1, progress_bar=False)
    assert [q[0] for q in _asked(real)] == [0, 1]
    assert not (tmp_path / "projects" / "s.db.lock").exists() and (tmp_path / "data" / "real.db.lock").exists()


_KILLED_IN_THE_ANSWERS_WRITE = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from session_worker import setup
from papa_bayes.session import PreferenceSession
from papa_bayes.store import PreferenceStore

Tx, when, count, active = PreferenceStore._Tx, sys.argv[2], [0], [False]
close = Tx.__exit__
def exit_and_die(self, *exc):  # SIGKILL inside the third answer's transaction, before or after its COMMIT
    if active[0] and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    out = close(self, *exc)
    if active[0] and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return out
Tx.__exit__ = exit_and_die
record = PreferenceStore.record_answer
def counted(self, *args):
    count[0] += 1
    active[0] = count[0] == 3
    try:
        return record(self, *args)
    finally:
        active[0] = False
PreferenceStore.record_answer = counted
source, user, _ = setup()
PreferenceSession(sys.argv[1], source, user, query_type="rating", pool_size=8, seed=3).run(4, progress_bar=False)
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_kill_inside_the_answers_write_loses_and_repeats_nothing(tmp_path, when):
    """SIGKILL inside the third answer's transaction: before its COMMIT the answer is not stored and its question
    is asked again first; after it, the answer is kept and not asked again. Either way the stored questions and
    answers are those of a session never killed."""
    import subprocess

    path, straight = tmp_path / "killed.db", tmp_path / "straight.db"
    done = subprocess.run([sys.executable, "-c", _KILLED_IN_THE_ANSWERS_WRITE, str(path), when,
                           str(Path(__file__).parent)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr[-2000:]
    kept = _asked(path)
    assert [q[3] is not None for q in kept] == [True, True, when == "after"]  # the third: pending, or kept
    source, user, _ = setup()
    with PreferenceSession.resume(path, source, user) as session:
        session.run(4 - session.store.num_answers(), progress_bar=False)
        assert [r["round"] for r in session.history] == [0, 1, 2, 3]
    with PreferenceSession(straight, source, user, query_type="rating", pool_size=8, seed=3) as session:
        session.run(4, progress_bar=False)
    assert _asked(path) == _asked(straight) and _asked(path)[:2 + (when == "after")] == kept[:2 + (when == "after")]


def test_resuming_a_rater_the_store_does_not_hold_names_the_ones_it_does(tmp_path):
    """"s.db holds no session of rater 2." left a person who shares a store to guess their id."""
    from papa_bayes.exceptions import StoreError

    source, user, _ = setup()
    for rater in (0, 3):
        with PreferenceSession(tmp_path / "s.db", source, user, pool_size=8, rater=rater) as session:
            session.run(1, progress_bar=False)
    with pytest.raises(StoreError, match=r"holds no session of rater 2 \(the raters it holds: 0, 3\)\.$"):
        PreferenceSession.resume(tmp_path / "s.db", source, user, rater=2)
    PreferenceStore(tmp_path / "empty.db").close()
    with pytest.raises(StoreError, match=r"holds no session configuration \(no rater was asked anything\)\.$"):
        PreferenceSession.resume(tmp_path / "empty.db", source, user)
    with PreferenceSession.resume(tmp_path / "s.db", source, user, rater=3) as session:  # nothing was left open
        assert session.round == 1


def test_a_rating_session_of_a_pairwise_gp_is_refused_before_anything_is_asked(tmp_path):
    """PairwiseGPReward takes only comparisons: a 'rating' session of it asked its first question, stored the
    answer, then failed to fit it (ModelError), on every step and every resume: a store stuck with an answer."""
    from papa_bayes.models import PairwiseGPReward, PreferenceGP

    source, user, _ = setup()
    with pytest.raises(InputDataError, match=r"^model: expected a model of like/dislike ratings .*use PreferenceGP"):
        PreferenceSession(tmp_path / "s.db", source, user, model=PairwiseGPReward(), query_type="rating")
    assert not (tmp_path / "s.db").exists()
    with PreferenceSession(tmp_path / "s.db", source, user, model=PreferenceGP(), query_type="rating",
                           pool_size=8) as session:  # the suggested model takes them
        session.run(2, progress_bar=False)
    assert len([q for q in _asked(tmp_path / "s.db") if q[3] in ("like", "dislike")]) == 2


def test_a_path_the_file_system_refuses_is_a_store_error_naming_it(tmp_path):
    """A file name over the file system's limit raised a bare OSError ("[Errno 36] File name too long"), a NUL
    character sqlite3's bare ValueError ("embedded null byte"), from the session as from the store."""
    from papa_bayes.exceptions import StoreError

    source, user, _ = setup()
    long_name = tmp_path / ("a" * 300 + ".db")
    with pytest.raises(StoreError, match=r"^Cannot open the store .*a{300}\.db \(OSError: File name too long\); "
                                         r"nothing was written\.$"):
        PreferenceSession(long_name, source, user, pool_size=8)
    with pytest.raises(StoreError, match=r"File name too long"):
        PreferenceSession.resume(long_name, source, user)
    with pytest.raises(StoreError, match=r"^--store: Cannot open the store .*File name too long"):  # papa-bayes label
        _label(long_name)
    with pytest.raises(InputDataError, match=r"^path: expected a file path \(str or Path\) without NUL characters"):
        PreferenceStore(str(tmp_path / "s\0.db"))
    assert not any(tmp_path.iterdir())
