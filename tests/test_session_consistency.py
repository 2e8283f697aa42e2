"""What a session keeps consistent when it is interrupted or doubled: callbacks, rater registrations, metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from papa_bayes.exceptions import StoreError
from papa_bayes.session import PreferenceSession

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import setup  # noqa: E402
from test_session import _other_process_takes  # noqa: E402


def _asked(store):
    return [(q.round, q.item_a, q.item_b, q.answer) for q in store.queries()]


def _clean(path, rounds):
    """The same session (seed 2, pools of 8) run ``rounds`` rounds without an interruption, with a fresh user."""
    source, user, _ = setup()
    clean = PreferenceSession(path, source, user, pool_size=8, seed=2)
    clean.run(rounds, progress_bar=False)
    return clean


class _Interrupted:
    """Answers like ``user``; Ctrl-C instead of the ``at``-th answer."""

    def __init__(self, user, at):
        self.user, self.at, self.asked = user, at, 0

    def compare(self, a, b):
        self.asked += 1
        if self.asked == self.at:
            raise KeyboardInterrupt
        return self.user.compare(a, b)


def test_an_on_round_callback_that_fails_in_resume_loses_nothing_and_leaves_it_resumable(tmp_path):
    """resume() finishes a round left open; its on_round raising there propagates, with the answer stored,
    the round finished, store and lock released, and a second resume continuing as an uninterrupted run."""
    source, user, _ = setup()
    path = tmp_path / "s.db"
    first = PreferenceSession(path, source, _Interrupted(user, at=2), pool_size=8, seed=2)
    first.step()
    with pytest.raises(KeyboardInterrupt):
        first.step()  # round 1's query stored, unanswered
    first.close()

    def failing(session, record):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        PreferenceSession.resume(path, source, user, on_round=failing)
    assert _other_process_takes(path, 0)  # the lock went with the failed resume
    with PreferenceSession.resume(path, source, user) as again:
        assert again.round == 2 and again.store.num_answers() == 2  # round 1 answered and finished, not re-asked
        assert [h["round"] for h in again.history] == [0, 1] and again.history[1]["resumed"] == 1.0
        again.run(2, progress_bar=False)
        resumed = _asked(again.store)
    clean = _clean(tmp_path / "clean.db", 4)
    assert resumed == _asked(clean.store)
    clean.close()


def test_a_second_session_of_a_rater_in_one_process_stops_the_first(tmp_path):
    """The rater's lock is re-entrant within a process, so a second new session of a rater that had not asked
    anything yet was accepted beside the first: it overwrote the first's stored settings (a resume then used
    its seed and strategy for the first's questions), and both stored a round 0. Now the newer one asks and
    the older one, left open, refuses to step."""
    source, user, _ = setup()
    path = tmp_path / "s.db"
    first = PreferenceSession(path, source, user, pool_size=8, seed=1)
    second = PreferenceSession(path, source, user, pool_size=8, seed=2, strategy="random")
    with pytest.raises(StoreError, match="newer session of rater 0.*step the newer one"):
        first.step()
    other = PreferenceSession(path, source, user, pool_size=8, rater=1)  # another rater: its own session
    other.step()
    second.step()
    assert [q.round for q in second.store.queries(rater=0)] == [0]
    assert len(second.store.round_items(rater=0, round=0)) == 8  # one pool for round 0
    with pytest.raises(StoreError, match="queries of rater 0"):  # a refused session stops nobody
        PreferenceSession(path, source, user, pool_size=8, seed=3)
    second.step()
    resumed = PreferenceSession.resume(path, source, user)  # stops second in turn
    assert resumed.round == 2 and (resumed.seed, resumed.strategy) == (2, "random")
    with pytest.raises(StoreError, match="newer session"):
        second.step()
    resumed.step()
    assert [q.round for q in resumed.store.queries(rater=0)] == [0, 1, 2]
    for session in (first, second, other, resumed):
        session.close()


def test_an_interrupt_after_the_answer_is_written_leaves_no_pair_out_of_the_exposure_metrics(tmp_path, monkeypatch):
    """Ctrl-C between record_answer and the running list of items shown left that pair out of every later
    round's exposure metrics in this process (a resume, reading the store, counted it)."""
    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, user, pool_size=8, seed=2)
    session.step()
    record = session.store.record_answer
    calls = []

    def written_then_interrupted(query_id, answer):
        record(query_id, answer)
        calls.append(query_id)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(session.store, "record_answer", written_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        session.step()
    session.run(3, progress_bar=False)  # round 1 finished with its stored answer, then rounds 2 and 3
    clean = _clean(tmp_path / "clean.db", 4)
    assert _asked(session.store) == _asked(clean.store)
    for name in ("exposure_entropy_bits", "exposure_coverage"):
        assert [h[name] for h in session.history] == [h[name] for h in clean.history], name
    session.close()
    clean.close()
