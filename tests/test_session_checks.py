"""What a session checks before it writes: the user's answers, a resumed session's model and source,
and the random stream that an exact resume depends on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from papa_bayes.exceptions import InputDataError
from papa_bayes.models import LinearReward
from papa_bayes.session import FeaturePool, PreferenceSession
from papa_bayes.store import PreferenceStore
from papa_bayes.users import CallbackUser

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import setup  # noqa: E402


class _Answers:
    """A user (any object with compare/rate will do) whose answers are given values."""

    def __init__(self, value):
        self.value = value

    def compare(self, first, second):
        return self.value

    def rate(self, x):
        return self.value


@pytest.mark.parametrize("query_type, answer", [
    ("rating", torch.tensor([0.9])),  # stored as 'dislike' (int(0.9) == 0)
    ("rating", torch.tensor([0])),
    ("rating", torch.tensor([float("nan")])),
    ("rating", "like"),
    ("pair", (torch.tensor([float("nan")]), torch.tensor([0.0]))),  # stored as 'first' (bool(nan))
    ("pair", (torch.tensor([0.5]), torch.tensor([False]))),
    ("pair", (torch.tensor([True, False]), torch.tensor([False, False]))),
    ("pair", torch.tensor([True])),
])
def test_an_answer_that_is_not_one_is_refused_before_it_is_stored(tmp_path, query_type, answer):
    """A custom user's answer was stored as whatever int() or bool() made of it, for good: answers are
    never overwritten. It is refused, naming the method; the query stays pending and is asked again."""
    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, _Answers(answer), query_type=query_type, pool_size=8)
    method = "compare" if query_type == "pair" else "rate"
    with pytest.raises(InputDataError, match=f"user.{method}"):
        session.step()
    assert session.store.num_answers() == 0 and len(session.store.queries(answered=False)) == 1
    session.user = user  # a user who answers properly finishes the open round with the same query
    record = session.step()
    assert record.round == 0 and session.store.num_answers() == 1
    assert len(session.store.queries()) == 1


@pytest.mark.parametrize("query_type, answer, stored", [
    ("pair", (True, False), "first"), ("pair", (0, 1), "tie"), ("pair", (torch.tensor([0.0]), [False]), "second"),
    ("rating", torch.tensor([-1]), "dislike"), ("rating", 1.0, "like"),
])
def test_answers_in_other_plain_forms_are_read(tmp_path, query_type, answer, stored):
    source, _, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, _Answers(answer), query_type=query_type, pool_size=8,
                                model=LinearReward(rationality=1.0, ties=query_type == "pair"))
    assert session.step().query.answer == stored


def test_resume_refuses_another_model_or_source(tmp_path):
    """Resumed with another model (or none: the default), or another pool, the session went on silently."""
    source, user, _ = setup()
    path = tmp_path / "s.db"
    model = LinearReward(rationality=1.0, ties=True)
    PreferenceSession(path, source, user, model=model, pool_size=8).run(2, progress_bar=False)
    with pytest.raises(InputDataError, match="model: expected the session's model, LinearReward.*ties=True"):
        PreferenceSession.resume(path, source, user, model=LinearReward(link="probit"))
    with pytest.raises(InputDataError, match="model"):
        PreferenceSession.resume(path, source, user)  # the default model is not the session's
    other_pool = FeaturePool(torch.randn(100, 4, dtype=torch.float64))
    with pytest.raises(InputDataError, match="source: expected the session's source"):
        PreferenceSession.resume(path, other_pool, user, model=model)
    session = PreferenceSession.resume(path, source, user, model=LinearReward(rationality=1.0, ties=True))
    assert session.step().round == 2  # the same model, rebuilt, continues (the failed resumes released the lock)


def test_a_refused_resume_names_the_settings_that_differ(tmp_path):
    """The refusal printed the stored and the given source's whole configurations (a diffusion source's
    has twenty settings) and the models' whole reprs: which setting differed was left to the reader."""
    source, user, _ = setup()
    path = tmp_path / "s.db"
    model = LinearReward(rationality=1.0, ties=True)
    PreferenceSession(path, source, user, model=model, pool_size=8).run(1, progress_bar=False)
    shifted = FeaturePool(source.items + 1.0)  # as many items: only the digest differs
    with pytest.raises(InputDataError) as err:
        PreferenceSession.resume(path, shifted, user, model=model)
    message = str(err.value)
    stored, given = source.config()["items_sha256"], shifted.config()["items_sha256"]
    assert message.startswith("source: expected the session's source") and err.value.field == "source"
    assert f"items_sha256={stored!r}" in message and f"items_sha256={given!r}" in message, message
    assert "num_items" not in message and "kind" not in message, message
    with pytest.raises(InputDataError) as err:
        PreferenceSession.resume(path, source, user, model=LinearReward(rationality=1.0, ties=True, link="probit"))
    message = str(err.value)
    assert message.startswith("model: expected the session's model, LinearReward"), message
    assert "link='logit'" in message and "link='probit'" in message, message
    assert "prior_scale" not in message and "tie_prior" not in message, message
    PreferenceSession.resume(path, source, user, model=model).close()


def test_a_model_without_a_repr_of_its_own_is_compared_by_class(tmp_path):
    class Custom(LinearReward):
        __repr__ = object.__repr__

    source, user, _ = setup()
    path = tmp_path / "s.db"
    PreferenceSession(path, source, user, model=Custom(rationality=1.0), pool_size=8).run(1, progress_bar=False)
    PreferenceSession.resume(path, source, user, model=Custom(rationality=1.0)).close()
    with pytest.raises(InputDataError, match="model"):
        PreferenceSession.resume(path, source, user, model=LinearReward(rationality=1.0))


def test_recommendations_leave_the_session_stream_alone(tmp_path):
    """recommend() drew from the session's generator: a session that looked at recommendations asked other
    questions than its resumed copy (which never saw them). They draw from (seed, round) now."""

    from papa_bayes.sources import Candidates

    class DrawingPool(FeaturePool):  # recommends as DiffusionCandidates does: by drawing
        def recommend(self, posterior, n, *, generator):
            idx = torch.randperm(self.items.shape[0], generator=generator)[:n]
            return Candidates(self.items[idx], None, torch.ones(n, dtype=torch.bool))

    _, user, _ = setup()
    items = setup()[0].items
    asked = []
    for look in (False, True):
        session = PreferenceSession(tmp_path / f"s{look}.db", DrawingPool(items), user, pool_size=8, seed=4)
        session.run(2, progress_bar=False)
        if look:
            first = session.recommend(3).features
            assert torch.equal(first, session.recommend(3).features)  # same answers, same recommendation
        session.run(2, progress_bar=False)
        asked.append([(q.item_a, q.item_b) for q in session.store.queries()])
        session.close()
    assert asked[0] == asked[1]


def test_a_step_retried_after_a_failure_before_its_query_draws_the_same_pool(tmp_path, monkeypatch):
    """select_queries failed once: the retried step stored a second pool under the round and asked other
    questions than an uninterrupted session. It rewinds the random state, as resume() would."""
    import papa_bayes.session as session_module

    source, user, _ = setup()
    clean = PreferenceSession(tmp_path / "clean.db", source, user, pool_size=8, seed=2)
    clean.run(4, progress_bar=False)
    session = PreferenceSession(tmp_path / "s.db", source, user, pool_size=8, seed=2)
    session.run(2, progress_bar=False)
    original, calls = session_module.select_queries, []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("selection failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(session_module, "select_queries", fails_once)
    with pytest.raises(RuntimeError, match="selection failed"):
        session.step()
    session.run(2, progress_bar=False)
    assert session.store.num_items == clean.store.num_items == 4 * 8
    assert [(q.item_a, q.item_b, q.answer) for q in session.store.queries()] == \
        [(q.item_a, q.item_b, q.answer) for q in clean.store.queries()]


def test_a_new_rater_with_a_source_of_another_dimension_is_refused_before_anything_is_stored(tmp_path):
    source, user, _ = setup()
    path = tmp_path / "s.db"
    PreferenceSession(path, source, user, pool_size=8).run(1, progress_bar=False)
    with pytest.raises(InputDataError, match="source: expected a source of the store's 4 features, got 3"):
        PreferenceSession(path, FeaturePool(torch.randn(20, 3)), user, rater=1)
    with PreferenceStore(path, create=False) as store:
        assert store.raters() == [0] and store.rater_config(1) is None


def test_finetune_options_that_cannot_be_stored_are_refused_before_the_store_is_created(tmp_path):
    source, user, _ = setup()
    with pytest.raises(InputDataError, match="finetune_options: expected JSON-serializable"):
        PreferenceSession(tmp_path / "s.db", source, user, finetune_options={"dtype": torch.float32})
    assert not (tmp_path / "s.db").exists()


def test_a_callback_user_session_still_works_with_plain_int_answers(tmp_path):
    source, _, w = setup()
    session = PreferenceSession(tmp_path / "s.db", source, CallbackUser(lambda a, b: 0 if float(a @ w) > float(b @ w)
                                                                        else 1), pool_size=8)
    assert session.step().query.answer in ("first", "second")


def test_a_session_steps_in_another_thread(tmp_path):
    """Created in one thread and stepped in another (a web server's worker): sqlite3 refused."""
    import threading

    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, user, pool_size=8)
    outcome = []

    def step():
        try:
            outcome.append(session.step())
        except Exception as err:  # noqa: BLE001 (the test reports it)
            outcome.append(err)

    thread = threading.Thread(target=step)
    thread.start()
    thread.join()
    assert outcome[0].query.answer is not None and session.store.num_answers() == 1


def test_a_tie_the_model_cannot_take_is_refused_before_it_is_stored(tmp_path):
    """A 'tie' was stored, then every update, step and resume raised 'the data holds ties but the model was
    built with ties=False': the store could not be used again."""
    from papa_bayes.users import SimulatedUser

    source, _, _ = setup()
    answers = iter([0, "tie", 1, 0])
    session = PreferenceSession(tmp_path / "s.db", source, CallbackUser(lambda a, b: next(answers)), pool_size=8)
    session.step()
    with pytest.raises(InputDataError, match="user.compare: expected a strict answer .*ties=False"):
        session.step()
    assert session.store.num_answers() == 1 and len(session.store.queries(answered=False)) == 1
    assert session.step().query.answer == "second" and session.step().round == 2  # the pending one asked again
    with pytest.raises(InputDataError, match="model: expected a model with ties=True for a user who ties"):
        PreferenceSession(tmp_path / "t.db", source, SimulatedUser([1.0, 0, 0, 0], tie_margin=1.0), pool_size=8)
    tied = PreferenceSession(tmp_path / "u.db", source, CallbackUser(lambda a, b: "tie"), pool_size=8,
                             model=LinearReward(rationality=1.0, ties=True))
    assert tied.step().query.answer == "tie" and tied.posterior.data.has_ties


def test_a_kill_in_round_zero_after_the_pool_was_stored_resumes_exactly(tmp_path, monkeypatch):
    """Resume fitted 'the prior' when no answer was stored: the retried first pool was steered by it, did not
    match the stored one, and was stored again (16 orphaned items, other questions than a clean run)."""
    import papa_bayes.session as session_module

    source, user, _ = setup()
    kw = dict(pool_size=8, seed=3, strategy="eig")
    clean = PreferenceSession(tmp_path / "clean.db", source, user, **kw)
    clean.run(3, progress_bar=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    session = PreferenceSession(tmp_path / "s.db", source, user, **kw)
    monkeypatch.setattr(session_module, "select_queries", killed)
    with pytest.raises(KeyboardInterrupt):
        session.step()
    session.close()
    monkeypatch.undo()
    resumed = PreferenceSession.resume(tmp_path / "s.db", source, user)
    resumed.run(3, progress_bar=False)
    assert resumed.store.num_items == clean.store.num_items == 3 * 8
    assert [(q.item_a, q.item_b) for q in resumed.store.queries()] == [(q.item_a, q.item_b) for q in clean.store.queries()]


def test_resume_refuses_another_pool_of_the_same_size(tmp_path):
    source, user, _ = setup()
    PreferenceSession(tmp_path / "s.db", source, user, pool_size=8).run(1, progress_bar=False)
    other = FeaturePool(source.items + 0.01)  # same size, other items
    with pytest.raises(InputDataError, match="source: expected the session's source"):
        PreferenceSession.resume(tmp_path / "s.db", other, user)
    PreferenceSession.resume(tmp_path / "s.db", FeaturePool(source.items.clone()), user).close()


def test_a_feature_pool_says_which_of_its_items_it_recommends():
    """Recommendations and pools came as bare feature vectors: a catalogue's ids had to be matched back by hand."""
    source, _, w = setup()
    gen = torch.Generator().manual_seed(0)
    pool = source.candidates(None, 8, exploration=0.5, generator=gen)
    assert torch.equal(source.items[pool.indices], pool.features) and len(set(pool.indices.tolist())) == 8
    from papa_bayes.inference import prior_posterior
    from papa_bayes.data import PreferenceData

    post = prior_posterior(LinearReward(rationality=1.0), PreferenceData(items=source.items), num_samples=16)
    best = source.recommend(post, 3, generator=gen)
    assert torch.equal(source.items[best.indices], best.features)


def test_a_session_that_fails_to_store_its_config_releases_its_lock(tmp_path):
    """A source whose config() JSON cannot hold: the error came, but the half-built session, kept alive by the
    traceback (a notebook keeps the last one), still held the rater's lock and the open store, so another
    process (a web worker) was refused rater 0 until that traceback went."""
    import papa_bayes.locks as locks

    class TensorConfigPool(FeaturePool):
        def config(self):
            return {"items": self.items}

    source, user, _ = setup()
    path = tmp_path / "s.db"
    with pytest.raises(InputDataError, match="JSON") as err:
        PreferenceSession(path, TensorConfigPool(source.items), user, pool_size=8)
    assert err.value.__traceback__ is not None  # still alive, with every frame it names
    assert (path.parent / "s.db.lock").resolve() not in locks._LOCKS
    session = PreferenceSession(path, source, user, pool_size=8)  # the same rater, the store usable
    session.run(1, progress_bar=False)
    session.close()


def test_a_rater_id_beyond_the_stores_range_is_refused_before_the_store_is_created(tmp_path):
    """A rater of 2**63 (the store's ids are signed 64 bits) raised OverflowError from the lock, after the
    store file was created."""
    source, user, _ = setup()
    with pytest.raises(InputDataError, match=r"rater: expected an integer id in \[0, 2\*\*63 - 1\]"):
        PreferenceSession(tmp_path / "s.db", source, user, rater=2**63)
    assert not (tmp_path / "s.db").exists()
    session = PreferenceSession(tmp_path / "s.db", source, user, pool_size=6, rater=2**63 - 1)  # the largest id
    session.run(1, progress_bar=False)
    session.close()
    with pytest.raises(InputDataError, match="rater"):  # before the store is opened (it was left open)
        PreferenceSession.resume(tmp_path / "missing.db", source, user, rater=-1)
