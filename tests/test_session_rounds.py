"""A round that an exception interrupts: which step() finishes it, and what it asks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from papa_bayes.session import PreferenceSession

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import setup  # noqa: E402


class _CountingUser:
    """Answers like the simulated user and counts the questions it was asked."""

    def __init__(self, user):
        self.user, self.asked = user, 0

    def compare(self, a, b):
        self.asked += 1
        return self.user.compare(a, b)


def _asked(session):
    return [(q.round, q.item_a, q.item_b, q.answer) for q in session.store.queries()]


def _clean(tmp_path, rounds):
    source, user, _ = setup()
    clean = PreferenceSession(tmp_path / "clean.db", source, _CountingUser(user), pool_size=8, seed=2)
    clean.run(rounds, progress_bar=False)
    return clean


def test_an_update_that_fails_after_the_answer_is_stored_is_not_asked_again(tmp_path, monkeypatch):
    from papa_bayes.inference.pyro_posterior import PyroPosterior

    source, user, _ = setup()
    asker = _CountingUser(user)
    session = PreferenceSession(tmp_path / "s.db", source, asker, pool_size=8, seed=2)
    session.step()
    original = PyroPosterior.update

    def failing(post, data):
        raise RuntimeError("update failed")

    monkeypatch.setattr(PyroPosterior, "update", failing)
    with pytest.raises(RuntimeError, match="update failed"):
        session.step()
    monkeypatch.setattr(PyroPosterior, "update", original)
    assert asker.asked == 2 and session.store.num_answers() == 2 and session.round == 1
    record = session.step()  # finishes round 1 with its stored answer: refitted, not asked again
    assert asker.asked == 2 and record.round == 1 and record.metrics["resumed"] == 1.0
    assert record.query.answer is not None and session.posterior.data.num_comparisons == 2
    session.run(2, progress_bar=False)
    assert asker.asked == 4 and [h["round"] for h in session.history] == [0, 1, 2, 3]
    assert _asked(session) == _asked(_clean(tmp_path, 4))


def test_a_query_stored_just_before_an_interrupt_is_asked_by_the_next_step(tmp_path, monkeypatch):
    """Ctrl-C right after the query's transaction committed, before step() held its id: the next
    step() asks that stored query rather than drawing a second one for the same round."""
    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, _CountingUser(user), pool_size=8, seed=2)
    session.step()
    add_query = session.store.add_query

    def interrupted(**kwargs):
        add_query(**kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(session.store, "add_query", interrupted)
    with pytest.raises(KeyboardInterrupt):
        session.step()
    monkeypatch.undo()
    assert len(session.store.queries()) == 2 and session.store.pending_query(0) is not None
    record = session.step()
    assert record.round == 1 and record.metrics["resumed"] == 1.0 and len(session.store.queries()) == 2
    session.run(2, progress_bar=False)
    assert _asked(session) == _asked(_clean(tmp_path, 4))


def test_an_exception_before_the_query_is_stored_leaves_no_round_to_finish(tmp_path):
    source, user, _ = setup()

    class FailingOnce:
        num_features = source.num_features

        def __init__(self):
            self.calls = 0

        def candidates(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("no candidates")
            return source.candidates(*args, **kwargs)

        def recommend(self, *args, **kwargs):
            return source.recommend(*args, **kwargs)

        def config(self):
            return source.config()

    session = PreferenceSession(tmp_path / "s.db", FailingOnce(), _CountingUser(user), pool_size=8, seed=2)
    session.step()
    with pytest.raises(RuntimeError, match="no candidates"):
        session.step()
    record = session.step()  # a new round 1: nothing of it was stored
    assert record.round == 1 and "resumed" not in record.metrics and len(session.store.queries()) == 2


def test_a_failing_on_round_callback_leaves_its_round_finished(tmp_path):
    source, user, _ = setup()
    calls = []

    def on_round(session, record):
        calls.append(record.round)
        if len(calls) == 2:
            raise RuntimeError("callback failed")

    asker = _CountingUser(user)
    session = PreferenceSession(tmp_path / "s.db", source, asker, pool_size=8, seed=2, on_round=on_round)
    session.step()
    with pytest.raises(RuntimeError, match="callback failed"):
        session.step()
    assert session.round == 2 and [h["round"] for h in session.history] == [0, 1]
    record = session.step()  # round 2, new: round 1 is not asked again
    assert record.round == 2 and "resumed" not in record.metrics and asker.asked == 3
    assert calls == [0, 1, 2]


def test_an_uninterrupted_step_does_not_read_the_query_history(tmp_path, monkeypatch):
    """step() listed every stored query at the start of each round to find a round left open."""
    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, _CountingUser(user), pool_size=8, seed=2)
    session.step()
    listed = []
    queries = session.store.queries

    def listing(**kwargs):
        if kwargs.get("answered") is None:  # the whole history (answers are read for the posterior's data)
            listed.append(kwargs)
        return queries(**kwargs)

    monkeypatch.setattr(session.store, "queries", listing)
    session.run(3, progress_bar=False)
    assert listed == [] and session.store.num_answers() == 4


@pytest.mark.parametrize("listing", ["readable", "unreadable"])
def test_a_query_that_could_not_be_stored_is_drawn_again_by_the_next_step(tmp_path, monkeypatch, listing):
    """The store refused the query (busy, disk full): nothing of it was stored, so the next step() draws
    the same pool and pair again, as a resume would, and the pool is not stored twice. When the store
    could not even list its queries after the failure ("unreadable"), the round stays open and the next
    step(), finding no stored query for it, rewinds the round's random state (it drew a second pool)."""
    from papa_bayes.exceptions import StoreError

    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, _CountingUser(user), pool_size=8, seed=2)
    session.step()
    queries = session.store.queries

    def refused(**kwargs):
        raise StoreError("the store is busy")

    def unreadable(**kwargs):
        monkeypatch.setattr(session.store, "queries", queries)  # readable again from the next call on
        raise StoreError("disk I/O error")

    monkeypatch.setattr(session.store, "add_query", refused)
    if listing == "unreadable":
        monkeypatch.setattr(session.store, "queries", unreadable)
    with pytest.raises(StoreError, match="busy|disk I/O"):
        session.step()
    monkeypatch.undo()
    assert len(session.store.queries()) == 1
    record = session.step()
    assert record.round == 1 and "resumed" not in record.metrics
    assert len(session.store.round_items(rater=0, round=1)) == 8
    session.run(2, progress_bar=False)
    assert _asked(session) == _asked(_clean(tmp_path, 4))
