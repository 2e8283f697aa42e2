from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from papa_bayes.exceptions import InputDataError, StoreError
from papa_bayes.session import FeaturePool, PreferenceSession
from papa_bayes.store import PreferenceStore

sys.path.insert(0, str(Path(__file__).parent))
from session_worker import SlowUser, setup  # noqa: E402


def test_session_moves_posterior_toward_preference(tmp_path):
    source, user, w = setup()
    session = PreferenceSession(tmp_path / "s.db", source, user, pool_size=12, seed=1, strategy="eig")
    session.run(15, progress_bar=False)
    cos = torch.nn.functional.cosine_similarity(session.posterior.mean("w"), w, dim=0)
    assert float(cos) > 0.8
    hist = session.history
    assert len(hist) == 15 and hist[-1]["num_answers"] == 15
    assert all(0 <= h["information_bits"] <= 1.0 + 1e-9 for h in hist)
    # the answers, together, shrank the posterior by about what the queries promised
    realised = sum(h["realised_information_bits"] for h in hist)
    expected = sum(h["information_bits"] for h in hist)
    assert realised > 0 and 0.3 * expected <= realised <= 3 * expected, (realised, expected)
    assert hist[-1]["posterior_log_sd"] < hist[0]["posterior_log_sd"]
    assert 0 < hist[-1]["exposure_coverage"] <= 1
    rec = session.recommend(5)
    assert rec.features.shape == (5, 4)
    # the recommended items are those the hidden utility ranks high
    assert float((rec.features @ w).mean()) > float((source.items @ w).quantile(0.8))


def test_like_dislike_session(tmp_path):
    source, user, w = setup()
    session = PreferenceSession(tmp_path / "r.db", source, user, query_type="rating", pool_size=12, seed=2, strategy="eig")
    records = session.run(12, progress_bar=False)
    # Each round's record carries the answer it got (it used to say None).
    assert [r.query.answer for r in records] == [q.answer for q in session.store.queries()]
    assert all(r.query.answer in ("like", "dislike") for r in records)
    assert session.data.num_ratings == 12 and session.data.num_comparisons == 0
    cos = torch.nn.functional.cosine_similarity(session.posterior.mean("w"), w, dim=0)
    assert float(cos) > 0.6


def test_existing_store_must_be_resumed(tmp_path):
    source, user, _ = setup()
    PreferenceSession(tmp_path / "s.db", source, user, pool_size=8).run(2, progress_bar=False)
    with pytest.raises(StoreError, match="resume"):
        PreferenceSession(tmp_path / "s.db", source, user)
    with pytest.raises(InputDataError, match="query_type"):
        PreferenceSession(tmp_path / "t.db", source, user, query_type="slider")


@pytest.mark.parametrize("bad", [
    dict(strategy="bogus"), dict(strategy="eubo", query_type="rating"), dict(exploration="0.5"),
    dict(exploration=1.5), dict(pool_size=2.5), dict(pool_size=1), dict(num_draws=0), dict(num_draws=1),
    dict(num_draws=2.5),
    dict(seed=-1), dict(seed=1.5), dict(seed=2**32), dict(finetune_options=[("steps", 2)]),
])
def test_bad_options_are_refused_before_the_store_is_created(tmp_path, bad):
    source, user, _ = setup()
    with pytest.raises(InputDataError, match=next(iter(bad))):
        PreferenceSession(tmp_path / "b.db", source, user, **bad)
    assert not (tmp_path / "b.db").exists()


def test_a_user_without_the_needed_method_is_refused_before_the_store_is_created(tmp_path):
    source, user, _ = setup()
    with pytest.raises(InputDataError, match=r"user.*compare"):  # was an AttributeError at the first question
        PreferenceSession(tmp_path / "u.db", source, lambda a, b: 0)
    with pytest.raises(InputDataError, match=r"user.*rate"):
        PreferenceSession(tmp_path / "u.db", source, SlowUser(user, 0.0), query_type="rating")
    assert not (tmp_path / "u.db").exists()


def test_a_protocol_subclass_without_the_method_is_refused_as_well(tmp_path):
    """A User or CandidateSource subclass inherits docstring-only methods: callable, returning None."""
    from papa_bayes.session import CandidateSource
    from papa_bayes.users import User

    source, user, _ = setup()

    class ComparesOnly(User):
        def compare(self, first, second):
            return user.compare(first, second)

    with pytest.raises(InputDataError, match=r"user.*rate\(\) method"):
        PreferenceSession(tmp_path / "u.db", source, ComparesOnly(), query_type="rating")
    with pytest.raises(NotImplementedError, match="ComparesOnly answers no like/dislike"):
        ComparesOnly().rate(torch.zeros(1, 2))

    class NoConfig(CandidateSource):
        num_features = source.num_features
        candidates, recommend = source.candidates, source.recommend

    with pytest.raises(InputDataError, match=r"source: expected a CandidateSource with a config\(\) method"):
        PreferenceSession(tmp_path / "u.db", NoConfig(), user)
    assert not (tmp_path / "u.db").exists()
    with PreferenceSession(tmp_path / "ok.db", source, ComparesOnly()) as session:  # pairs need compare only
        session.step()


def test_feature_pool_takes_array_likes_and_names_bad_items():
    pd = pytest.importorskip("pandas")
    items = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(FeaturePool(pd.DataFrame(items.numpy())).items, items)  # was a KeyError
    for bad in ("abc", [[1.0, 2.0], [3.0]]):  # were TypeError / ValueError
        with pytest.raises(InputDataError, match="items"):
            FeaturePool(bad)


def _answers(path):
    with PreferenceStore(path, create=False) as store:
        return [(q.item_a, q.item_b, q.answer) for q in store.queries(answered=True)]


def test_resume_after_kill_loses_nothing_and_continues(tmp_path):
    total = 8
    path = tmp_path / "killed.db"
    worker = Path(__file__).parent / "session_worker.py"
    proc = subprocess.Popen([sys.executable, str(worker), str(path), str(total), "0.4"])
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if path.exists():
            try:
                if len(_answers(path)) >= 3:
                    break
            except StoreError:
                pass
    time.sleep(0.25)  # land inside a round: the user sleeps 0.4 s per answer
    proc.kill()
    proc.wait()
    before = _answers(path)
    assert 3 <= len(before) < total

    source, user, _ = setup()
    session = PreferenceSession.resume(path, source, SlowUser(user, 0.0))
    done = len(_answers(path))
    session.run(total - done, progress_bar=False)
    after = _answers(path)
    assert after[: len(before)] == before  # nothing lost, nothing rewritten
    assert len(after) == total

    # The same session run without a crash asks the same questions.
    clean = tmp_path / "clean.db"
    PreferenceSession(clean, source, SlowUser(user, 0.0), pool_size=12, seed=3, strategy="eig").run(total, progress_bar=False)
    assert _answers(clean) == after


def test_a_crash_between_pool_and_query_stores_the_pool_once(tmp_path, monkeypatch):
    """Killed after a round's pool was stored but before its query (the kill test hit this window on a
    loaded machine): the resumed session draws the same pool again and reuses the stored items, so its
    store equals an uninterrupted run's, item indices included."""
    import papa_bayes.session as session_module

    total, kw = 6, dict(pool_size=12, seed=3, strategy="eig")
    clean = tmp_path / "clean.db"
    source, user, _ = setup()
    PreferenceSession(clean, source, SlowUser(user, 0.0), **kw).run(total, progress_bar=False)
    path = tmp_path / "crashed.db"
    source, user, _ = setup()
    session = PreferenceSession(path, source, SlowUser(user, 0.0), **kw)
    session.run(3, progress_bar=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(session_module, "select_queries", killed)
    with pytest.raises(KeyboardInterrupt):
        session.step()
    session.close()
    monkeypatch.undo()
    with PreferenceStore(path, create=False) as store:
        assert store.num_items == 4 * 12 and len(store.queries()) == 3  # the unasked pool is stored

    source, user, _ = setup()
    resumed = PreferenceSession.resume(path, source, SlowUser(user, 0.0))
    resumed.run(total - 3, progress_bar=False)
    resumed.close()
    assert _answers(path) == _answers(clean)
    with PreferenceStore(path, create=False) as a, PreferenceStore(clean, create=False) as b:
        assert a.num_items == b.num_items == total * 12
        assert torch.equal(a.features(), b.features())


def test_several_raters_share_a_store_and_the_hierarchical_prior(tmp_path):
    from papa_bayes.models import HierarchicalLinearReward
    from papa_bayes.users import SimulatedUser

    source, user0, w0 = setup()
    w1 = w0 + torch.tensor([0.2, 0.1, -0.2, 0.3], dtype=torch.float64)
    user1 = SimulatedUser(w1, rationality=float("inf"), seed=1)
    path = tmp_path / "shared.db"
    s0 = PreferenceSession(path, source, user0, model=HierarchicalLinearReward(), rater=0, pool_size=12, seed=1,
                           strategy="eig")
    s0.run(15, progress_bar=False)
    with pytest.raises(StoreError, match="rater 0"):
        PreferenceSession(path, source, user0, rater=0)
    # A new rater starts from the population posterior of rater 0's answers, not from N(0, I).
    s1 = PreferenceSession(s0.store, source, user1, model=HierarchicalLinearReward(), rater=1, pool_size=12, seed=2,
                           strategy="eig")
    prior_mean = s1.posterior.mean("w")
    assert float(torch.nn.functional.cosine_similarity(prior_mean, w1, dim=0)) > 0.7
    s1.run(6, progress_bar=False)
    assert s1.data.num_comparisons == 6 and s0.data.num_comparisons == 15  # each rater sees only their answers
    assert len(s1.history) == 6 and len(s0.history) == 15
    cos1 = torch.nn.functional.cosine_similarity(s1.posterior.mean("w"), w1, dim=0)
    assert float(cos1) > 0.8
    assert s0.store.raters() == [0, 1]
    # resume picks the right rater's configuration and answers
    s1.close()
    again = PreferenceSession.resume(path, source, user1, model=HierarchicalLinearReward(), rater=1)
    assert again.rater == 1 and again.seed == 2 and again.data.num_comparisons == 6 and again.round == 6
    with pytest.raises(StoreError, match="rater 7"):
        PreferenceSession.resume(path, source, user1, rater=7)


def test_finetune_every_needs_a_source_that_can_finetune(tmp_path):
    source, user, _ = setup()
    with pytest.raises(InputDataError, match="finetune"):
        PreferenceSession(tmp_path / "f.db", source, user, finetune_every=2)
    with pytest.raises(InputDataError, match="refit_every"):
        PreferenceSession(tmp_path / "g.db", source, user, refit_every=0)


def test_gp_reward_session(tmp_path):
    # A GP has no prior posterior: the first query comes from a linear prior, then the GP's own fit (ELBO).
    from papa_bayes.inference.gp_posterior import GPPosterior
    from papa_bayes.models import PreferenceGP

    source, user, w = setup()
    session = PreferenceSession(tmp_path / "gp.db", source, user, model=PreferenceGP(num_inducing=32), pool_size=10,
                                seed=3, strategy="region", refit_every=4)
    session.run(8, progress_bar=False)
    post = session.posterior
    assert isinstance(post, GPPosterior) and post.data.num_comparisons == 8
    x = source.items[:5].clone().requires_grad_(True)
    post.utility(x).mean(0).sum().backward()  # guidance needs gradients through the GP utility
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0
    assert session.recommend(3).features.shape == (3, 4)
    resumed = PreferenceSession.resume(tmp_path / "gp.db", source, user, model=PreferenceGP(num_inducing=32))
    assert isinstance(resumed.posterior, GPPosterior)


class _Killed(BaseException):
    """Stands in for the process being killed (not an Exception: nothing may catch it)."""


class _FinetunePool:
    """A feature pool that 'fine-tunes' by writing a marker, and can be killed while doing so."""

    def __init__(self, pool, *, kill_at_call=None):
        self.pool, self.kill_at_call, self.calls = pool, kill_at_call, []
        self.num_features = pool.num_features

    def candidates(self, *args, **kwargs):
        return self.pool.candidates(*args, **kwargs)

    def recommend(self, *args, **kwargs):
        return self.pool.recommend(*args, **kwargs)

    def config(self):
        return self.pool.config()

    def finetune(self, posterior, *, generator, path):
        self.calls.append(int(posterior.data.num_comparisons))
        if len(self.calls) == self.kill_at_call:
            raise _Killed
        (path / "unet").mkdir(parents=True, exist_ok=True)
        (path / "unet" / "config.json").write_text("{}")

    def load_finetuned(self, path):
        pass


def test_resume_runs_the_finetune_a_crash_interrupted(tmp_path):
    pool, user, _ = setup()
    path = tmp_path / "ft.db"
    killed = _FinetunePool(pool, kill_at_call=2)
    session = PreferenceSession(path, killed, user, pool_size=8, seed=1, finetune_every=2)
    session.run(3, progress_bar=False)
    with pytest.raises(_Killed):
        session.step()  # round 3: its answer is stored, then the fine-tune is killed
    session.close()
    assert killed.calls == [2, 4]

    resumed_source = _FinetunePool(pool)
    resumed = PreferenceSession.resume(path, resumed_source, user)
    assert resumed_source.calls == [4]  # round 3's fine-tune, on its 4 answers
    assert resumed.round == 4 and resumed.history[3]["finetuned"] == 1.0 and resumed.history[3]["resumed"] == 1.0
    resumed.run(2, progress_bar=False)
    assert resumed_source.calls == [4, 6]  # the next one where it is due: round 5


def test_a_query_left_unanswered_makes_a_new_session_refuse(tmp_path):
    pool, user, _ = setup()

    class Dying:
        def compare(self, a, b):
            raise _Killed

    path = tmp_path / "s.db"
    first = PreferenceSession(path, pool, Dying(), pool_size=8, seed=1)
    with pytest.raises(_Killed):
        first.step()  # killed while the first query is asked: no answer stored
    first.close()
    with pytest.raises(StoreError, match="queries of rater 0.*resume"):
        PreferenceSession(path, pool, user, pool_size=8, seed=99, query_type="rating")
    with pytest.raises(InputDataError, match="rater"):
        PreferenceSession(tmp_path / "t.db", pool, user, rater=-1)
    resumed = PreferenceSession.resume(path, pool, user)
    assert resumed.seed == 1 and resumed.query_type == "pair"
    assert resumed.store.pending_query(0) is None and resumed.store.num_answers(0) == 1  # asked again on resume
    # A session that never asked may be replaced; resume then rebuilds the replacement, with or without rater=.
    other = tmp_path / "u.db"
    PreferenceSession(other, pool, user, pool_size=8, seed=1).close()
    PreferenceSession(other, pool, user, pool_size=8, seed=5, query_type="rating").close()
    for again in (PreferenceSession.resume(other, pool, user), PreferenceSession.resume(other, pool, user, rater=0)):
        assert (again.seed, again.query_type) == (5, "rating")


def test_pool_items_are_stored_as_steered_or_explore(tmp_path):
    pool, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", pool, user, pool_size=8, exploration=0.25, seed=1)
    session.run(2, progress_bar=False)
    rows = session.store.conn.execute("SELECT round, source, COUNT(*) FROM items GROUP BY round, source").fetchall()
    assert sorted(rows) == [(0, "explore", 8), (1, "explore", 2), (1, "steered", 6)]  # round 0: no posterior yet


def test_every_answer_is_committed_before_the_posterior_sees_it(tmp_path, monkeypatch):
    """Another connection must find the answer on disk at the moment the update starts: an
    in-memory update with a late commit would lose it to a crash inside the update."""
    source, user, _ = setup()
    path = tmp_path / "d.db"
    session = PreferenceSession(path, source, user, pool_size=8, seed=4)
    seen = []

    def on_disk(data):
        with PreferenceStore(path, create=False) as other:
            seen.append((data.num_comparisons, other.num_answers()))

    from papa_bayes.inference.pyro_posterior import PyroPosterior

    original_fit, original_update = session._fit, PyroPosterior.update

    def fit_checked(data):
        on_disk(data)
        return original_fit(data)

    def update_checked(post, data):
        on_disk(data)
        return original_update(post, data)

    monkeypatch.setattr(session, "_fit", fit_checked)
    monkeypatch.setattr(PyroPosterior, "update", update_checked)
    session.run(3, progress_bar=False)
    assert len(seen) == 3 and all(n_data == n_disk for n_data, n_disk in seen), seen


def test_run_recommend_and_pool_refuse_bad_arguments(tmp_path):
    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "a.db", source, user, pool_size=8)
    session.run(2, progress_bar=False)
    for bad in (-1, "3", 2.5):
        with pytest.raises(InputDataError, match="num_rounds"):
            session.run(bad, progress_bar=False)
    with pytest.raises(InputDataError, match="^progress_bar:"):  # was read by its truthiness
        session.run(1, progress_bar="no")
    for bad in (0, -1, 2.5, source.items.shape[0] + 1):
        with pytest.raises(InputDataError, match="n:"):
            session.recommend(bad)
    assert session.recommend(3).features.shape == (3, source.items.shape[1])
    assert session.round == 2  # nothing ran
    items = source.items.clone()
    items[5, 1] = float("nan")
    with pytest.raises(InputDataError, match="row 5"):
        FeaturePool(items)


def test_numpy_integers_are_integers(tmp_path):
    import numpy as np

    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "n.db", source, user, pool_size=np.int64(8), refit_every=np.int64(2),
                                seed=np.int32(1))
    session.run(np.int64(2), progress_bar=False)
    assert session.round == 2 and session.refit_every == 2 and type(session.refit_every) is int


def test_a_rater_answers_in_one_process_at_a_time(tmp_path):
    """Two processes of one rater took the same rounds (round 0 stored twice); now the second is refused."""
    source, user, _ = setup()
    path = tmp_path / "s.db"
    first = PreferenceSession(path, source, user, pool_size=8)
    first.run(1, progress_bar=False)
    first.close()  # releases the lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom papa_bayes.locks import lock_rater\n"
         "lock = lock_rater(sys.argv[1], 0)\nprint('held', flush=True)\ntime.sleep(120)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match="Rater 0 is already answering"):
            PreferenceSession.resume(path, source, user)
        other = PreferenceSession(path, source, user, pool_size=8, rater=1)  # another rater: its own byte
        other.run(1, progress_bar=False)
        other.close()
    finally:
        holder.kill()
        holder.wait()
    again = PreferenceSession.resume(path, source, user)  # the holder's death released the lock
    assert again.round == 1
    again.close()


def test_session_is_a_context_manager(tmp_path):
    """The session holds a file and the rater's lock: `with` closes both (it raised TypeError)."""
    source, user, _ = setup()
    with PreferenceSession(tmp_path / "s.db", source, user, pool_size=8) as session:
        session.run(1, progress_bar=False)
    assert session._lock is None
    with pytest.raises(StoreError, match="closed"):
        session.step()
    with PreferenceSession.resume(tmp_path / "s.db", source, user) as again:
        assert again.round == 1


def _hidden_choice(w):
    return lambda a, b: 0 if float(a @ w) > float(b @ w) else 1


@pytest.mark.parametrize("where", ["user", "update"])
def test_a_step_after_an_interrupted_one_finishes_its_round(tmp_path, monkeypatch, where):
    """A step interrupted (Ctrl-C in the person's callback, a failing update) left its query unanswered or
    its round unfinished; the next step() drew a new query under the same round number and left the old one
    behind. It now finishes the open round first, and the session asks what an uninterrupted one asks."""
    from papa_bayes.inference.pyro_posterior import PyroPosterior
    from papa_bayes.users import CallbackUser

    source, _, w = setup()
    clean = PreferenceSession(tmp_path / "clean.db", source, CallbackUser(_hidden_choice(w)), pool_size=8, seed=2)
    clean.run(4, progress_bar=False)
    calls = {"user": 0, "update": 0}

    def answer(a, b):
        calls["user"] += 1
        if where == "user" and calls["user"] == 2:
            raise KeyboardInterrupt
        return _hidden_choice(w)(a, b)

    original = PyroPosterior.update

    def update(post, data):
        calls["update"] += 1
        if where == "update" and calls["update"] == 1:
            raise RuntimeError("update failed")
        return original(post, data)

    monkeypatch.setattr(PyroPosterior, "update", update)
    session = PreferenceSession(tmp_path / "s.db", source, CallbackUser(answer), pool_size=8, seed=2)
    session.step()
    with pytest.raises((KeyboardInterrupt, RuntimeError)):
        session.step()
    assert session.store.num_answers() == (2 if where == "update" else 1)  # an answer given is stored
    record = session.step()
    assert record.round == 1 and record.query.answer is not None
    session.run(2, progress_bar=False)
    asked = [(q.round, q.item_a, q.item_b, q.answer) for q in session.store.queries()]
    assert asked == [(q.round, q.item_a, q.item_b, q.answer) for q in clean.store.queries()]
    assert [h["round"] for h in session.history] == [0, 1, 2, 3]
    assert session.posterior.data.num_comparisons == 4


def test_looking_at_the_posterior_does_not_change_the_questions(tmp_path):
    """A new rater of a shared store: reading session.posterior before the first round made that round's
    pool steered by the prior instead of unsteered. Before the first round it is the prior, and recommend()
    and data work (they raised AttributeError and an InputDataError about items on an empty store)."""
    source, user, _ = setup()
    asked = []
    for look in (False, True):
        path = tmp_path / f"m{look}.db"
        PreferenceSession(path, source, user, pool_size=8, seed=1).run(2, progress_bar=False)
        session = PreferenceSession(path, source, user, pool_size=8, seed=5, rater=1)
        if look:
            assert session.posterior.data.num_observations == 0
        session.run(2, progress_bar=False)
        asked.append([(q.item_a, q.item_b) for q in session.store.queries(rater=1)])
        session.close()
    assert asked[0] == asked[1]
    fresh = PreferenceSession(tmp_path / "fresh.db", source, user, pool_size=8)
    assert fresh.data.num_observations == 0 and fresh.data.items.shape == (0, 4)
    assert fresh.posterior.utility(source.items).shape[1] == 60
    assert fresh.recommend(3).features.shape == (3, 4)
    first = fresh.step()  # the first pool is still drawn unsteered
    assert not bool(fresh.store.conn.execute("SELECT COUNT(*) FROM items WHERE source='steered'").fetchone()[0])
    assert first.round == 0


def test_resume_refuses_a_source_of_another_feature_dimension(tmp_path):
    """Resumed with a 3-feature source on a 4-feature store, the session only failed at the first pool."""
    source, user, _ = setup()
    PreferenceSession(tmp_path / "s.db", source, user, pool_size=8).run(1, progress_bar=False)
    with pytest.raises(InputDataError, match="source.*4 features"):
        PreferenceSession.resume(tmp_path / "s.db", FeaturePool(torch.randn(20, 3)), user)
    PreferenceSession.resume(tmp_path / "s.db", source, user).close()  # the store was closed, the lock released


def test_closing_a_session_leaves_a_store_it_was_given_open(tmp_path):
    """Two raters' sessions over one PreferenceStore object: closing the first closed the store under the
    second (and a `with` block would too). A session closes only a store it opened."""
    source, user, _ = setup()
    with PreferenceStore(tmp_path / "s.db") as store:
        first = PreferenceSession(store, source, user, pool_size=8, rater=0)
        second = PreferenceSession(store, source, user, pool_size=8, rater=1)
        first.run(1, progress_bar=False)
        first.close()
        second.run(1, progress_bar=False)
        second.close()
        assert store.raters() == [0, 1]
    with pytest.raises(StoreError, match="closed"):
        store.num_items
    resumed = PreferenceSession.resume(tmp_path / "s.db", source, user, rater=1)  # opens the store: closes it
    resumed.close()
    with pytest.raises(StoreError, match="closed"):
        resumed.store.num_items


def _other_process_takes(path, rater):
    """Whether another process can take ``rater``'s byte of the lock file (what lock_rater takes; no torch import)."""
    code = ("import fcntl, sys\nf = open(sys.argv[1] + '.lock', 'a')\n"
            "try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))\nexcept OSError:\n"
            "    print('refused')\nelse:\n    print('taken')")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(rater)], capture_output=True, text=True)
    return out.stdout.strip() == "taken"


def test_closing_one_lock_keeps_the_others_of_the_process(tmp_path):
    """POSIX record locks belong to the process and go with the first file closed: closing rater 0's
    session released rater 1's lock of a session still running (and the CLI's own lock, taken twice)."""
    from papa_bayes.locks import lock_rater

    source, user, _ = setup()
    path = tmp_path / "s.db"
    first = PreferenceSession(path, source, user, pool_size=8, rater=0)
    second = PreferenceSession(path, source, user, pool_size=8, rater=1)
    first.close()
    assert _other_process_takes(path, 0)
    assert not _other_process_takes(path, 1)
    outer = lock_rater(path, 1)  # the same rater again in this process (as `papa-bayes label` does)
    second.close()
    assert not _other_process_takes(path, 1)
    outer.close()
    outer.close()  # twice is fine
    assert _other_process_takes(path, 1)


def test_a_resume_that_fails_releases_the_store_and_lock(tmp_path):
    """Ctrl-C while resume() asked the pending query again left the store open and the rater locked
    (a terminal of the same rater was then refused until this process ended)."""
    source, user, _ = setup()

    class Dying:
        def compare(self, a, b):
            raise KeyboardInterrupt

    path = tmp_path / "s.db"
    first = PreferenceSession(path, source, Dying(), pool_size=8)
    with pytest.raises(KeyboardInterrupt):
        first.step()
    first.close()
    with pytest.raises(KeyboardInterrupt) as caught:  # kept, as a REPL keeps sys.last_traceback
        PreferenceSession.resume(path, source, Dying())
    assert _other_process_takes(path, 0) and caught.traceback
    with PreferenceSession.resume(path, source, user) as again:
        assert again.round == 1 and again.store.num_answers() == 1


def test_on_round_callback_user_and_store_are_checked_before_anything_is_stored(tmp_path):
    """on_round=5 raised TypeError after round 0 was stored; a CallbackUser without compare_fn in a pair
    session failed at the first question, leaving a query that only resume() could continue; store=123
    raised TypeError."""
    from papa_bayes.users import CallbackUser

    source, user, _ = setup()
    path = tmp_path / "s.db"
    with pytest.raises(InputDataError, match="on_round"):
        PreferenceSession(path, source, user, on_round=5)
    with pytest.raises(InputDataError, match="compare_fn"):
        PreferenceSession(path, source, CallbackUser(rate_fn=lambda x: 1))
    with pytest.raises(InputDataError, match="rate_fn"):
        PreferenceSession(path, source, CallbackUser(lambda a, b: 0), query_type="rating")
    with pytest.raises(InputDataError, match="store"):
        PreferenceSession(123, source, user)
    assert not path.exists()
    with PreferenceSession(path, source, CallbackUser(lambda a, b: 0), on_round=lambda s, r: None) as session:
        session.step()


def test_a_closed_session_refuses_to_step_even_with_a_store_it_was_given(tmp_path):
    """close() released the rater's lock but left a given store open, and step() went on asking and storing
    without the lock (another process could resume the same rater meanwhile); with a store it opened, step()
    drew a whole pool before the closed store stopped it."""
    source, user, _ = setup()
    with PreferenceStore(tmp_path / "s.db") as store:
        session = PreferenceSession(store, source, user, pool_size=8)
        session.run(1, progress_bar=False)
        session.close()
        session.close()  # twice: nothing more
        with pytest.raises(StoreError, match="closed.*resume"):
            session.step()
        assert store.num_answers() == 1 and len(store.queries()) == 1
    drawn = []

    class CountingPool(FeaturePool):
        def candidates(self, *args, **kwargs):
            drawn.append(1)
            return super().candidates(*args, **kwargs)

    owned = PreferenceSession(tmp_path / "t.db", CountingPool(source.items), user, pool_size=8)
    owned.close()
    with pytest.raises(StoreError, match="closed"):
        owned.step()
    assert drawn == []


def test_a_read_only_store_is_refused_before_a_pending_query_is_asked(tmp_path, monkeypatch):
    """Resuming a read-only store asked its pending query again, then lost the person's answer to sqlite3's
    bare OperationalError; the session now checks that it may write before it asks anything."""
    source, user, _ = setup()
    session = PreferenceSession(tmp_path / "s.db", source, user, pool_size=8)
    session.run(1, progress_bar=False)
    monkeypatch.setattr(PreferenceStore, "record_answer", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        session.step()  # killed while asking: round 1's query stays pending
    session.close()
    monkeypatch.undo()
    from test_store import _read_only

    _read_only(monkeypatch)
    asked = []

    class Asked:
        def compare(self, first, second):
            asked.append(1)
            return user.compare(first, second)

    with pytest.raises(StoreError, match="read-only"):
        PreferenceSession.resume(tmp_path / "s.db", source, Asked())
    assert asked == []
    monkeypatch.undo()
    resumed = PreferenceSession.resume(tmp_path / "s.db", source, Asked())  # the lock and store were released
    assert asked == [1] and resumed.store.num_answers() == 2
    resumed.close()


def test_a_lock_file_that_cannot_be_written_is_a_store_error(tmp_path, monkeypatch):
    """In a folder where ``<store>.lock`` cannot be created, lock_rater raised the bare PermissionError, and the
    session left its store open (it closed it only on a StoreError)."""
    import papa_bayes.locks as locks

    closed = []
    close = PreferenceStore.close
    monkeypatch.setattr(PreferenceStore, "close", lambda self: (closed.append(1), close(self)))

    def no_lock_file(path, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(locks, "open", no_lock_file, raising=False)
    source, user, _ = setup()
    with pytest.raises(StoreError, match=r"s\.db\.lock cannot be written.*Permission denied"):
        PreferenceSession(tmp_path / "s.db", source, user, pool_size=8)
    assert closed == [1]
