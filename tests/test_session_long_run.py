"""A long session's cost per round: what each round reads, computes and syncs must not grow with the whole store.

A session stores every candidate pool it draws (`pool_size` items a round), so after `m` answers the store
holds `pool_size * m` items; each check below failed while a round's work grew with all of them.
"""

from __future__ import annotations

import sqlite3

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference.pyro_posterior import PyroPosterior
from papa_bayes.models import LinearReward
from papa_bayes.models.linear import _observe
from papa_bayes.session import FeaturePool, PreferenceSession
from papa_bayes.store import PreferenceStore
from papa_bayes.users import SimulatedUser


def _session(path, *, n_items=40, d=4, pool_size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n_items, d, dtype=torch.float64, generator=g)
    user = SimulatedUser(torch.randn(d, dtype=torch.float64, generator=g), seed=seed)
    return PreferenceSession(path, FeaturePool(items), user, pool_size=pool_size, seed=seed, num_draws=32)


def test_a_round_reads_only_the_items_stored_since_the_last(tmp_path):
    session = _session(tmp_path / "s.db")
    session.run(5, progress_bar=False)
    statements: list[str] = []
    session.store.conn.set_trace_callback(statements.append)
    session.step()
    reads = [s for s in statements if "FROM items" in s and "features" in s]
    assert reads, statements  # the features were read (the new rows) ...
    assert all("idx >=" in s for s in reads), reads  # ... never every row again (4 times a round before)
    # nor counted (COUNT(*) read every row, three times a round), nor searched for this round's pool from row 0
    assert not [s for s in statements if "COUNT(*) FROM items" in s], statements
    search = [s for s in statements if s.startswith("SELECT idx FROM items")]
    assert search == ["SELECT idx FROM items WHERE idx >= 40 AND rater=0 AND round=5 ORDER BY idx"], search
    session.close()


def test_features_follow_items_another_connection_stores(tmp_path):
    path = tmp_path / "s.db"
    g = torch.Generator().manual_seed(1)
    first, second = PreferenceStore(path), PreferenceStore(path)
    a = torch.randn(5, 3, dtype=torch.float64, generator=g)
    b = torch.randn(70, 3, dtype=torch.float64, generator=g)  # past the first buffer's 64 rows
    assert first.features().shape == first.features([]).shape == (0, 0)
    with pytest.raises(InputDataError, match=r"^indices: expected indices of stored items \(none is stored\), got 0"):
        first.features([0])  # (was a `1 x 0` tensor of nothing)
    first.add_items(a)
    assert torch.equal(first.features(), a)
    second.add_items(b)  # another process's session of another rater
    assert torch.equal(first.features(), torch.cat([a, b]))
    assert torch.equal(first.features([6, 0]), torch.stack([b[1], a[0]]))
    got = first.features()
    got[0] += 1  # a copy: the kept rows do not change
    assert torch.equal(first.features()[0], a[0])
    with pytest.raises(Exception, match="indices"):
        first.features([75])
    assert first.num_items == 75 and PreferenceStore(tmp_path / "empty.db").num_items == 0
    first.add_items(torch.randn(2, 3, dtype=torch.float64, generator=g), rater=4, round=1)
    assert first.round_items(rater=4, round=1) == first.round_items(rater=4, round=1, start=75) == [75, 76]
    assert first.round_items(rater=4, round=1, start=76) == [76]
    first.close()
    second.close()


def test_only_the_answer_commit_is_synced(tmp_path):
    store = PreferenceStore(tmp_path / "s.db")
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL between answers
    idx = store.add_items(torch.randn(2, 3, dtype=torch.float64))
    q = store.add_query(round=0, rater=0, kind="pair", item_a=idx[0], item_b=idx[1])
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.record_answer(q, "first")
    store.conn.set_trace_callback(None)
    full = statements.index("PRAGMA synchronous=FULL")
    insert = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO answers"))
    commit = statements.index("COMMIT")
    assert full < insert < commit < statements.index("PRAGMA synchronous=NORMAL")
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:  # committed: another connection reads it
        assert conn.execute("SELECT answer FROM answers").fetchall() == [("first",)]


def test_linear_likelihood_costs_the_answered_items_not_every_stored_one():
    g = torch.Generator().manual_seed(2)
    n, m, d, s = 4000, 50, 8, 64
    items = torch.randn(n, d, dtype=torch.float64, generator=g)
    comps = torch.randint(0, n, (m, 2), generator=g)
    comps = comps[comps[:, 0] != comps[:, 1]]
    data = PreferenceData(items=items, comparisons=comps)
    v = torch.randn(s, d, dtype=torch.float64, generator=g)
    model = LinearReward(rationality=1.0)
    with FlopCounterMode(display=False) as counter:
        dists = model.observation_distributions({"scaled_w": v}, data)
    assert counter.get_total_flops() <= 2 * s * d * 2 * len(comps)  # not 2 s d n (64 times as many here)
    U = v @ items.T  # the same values as from every item's utility
    expected = _observe(U[:, comps[:, 0]], U[:, comps[:, 1]], None, None, None, "logit")
    first_won = torch.ones(len(comps), dtype=torch.float64)
    # (equal up to rounding: BLAS may sum the `d` products of a smaller product in another order)
    torch.testing.assert_close(dists["comparisons"].log_prob(first_won), expected["comparisons"].log_prob(first_won),
                               rtol=0, atol=1e-12)


def test_posterior_log_sd_is_read_over_the_distinct_items(tmp_path, monkeypatch):
    session = _session(tmp_path / "s.db", n_items=40, pool_size=8)
    session.run(12, progress_bar=False)  # 96 stored items, at most 40 distinct
    widest: list[int] = []
    utility = PyroPosterior.utility

    def recording(self, features, *args, **kwargs):
        widest.append(features.shape[0])
        return utility(self, features, *args, **kwargs)

    monkeypatch.setattr(PyroPosterior, "utility", recording)
    record = session.step()
    assert session.store.num_items == 104 and max(widest) <= 40, widest
    # the same mean over every stored item as before
    sd = session.posterior.utility(session.store.features()).std(0).clamp(min=1e-12)
    assert record.metrics["posterior_log_sd"] == pytest.approx(float(sd.log().mean()), rel=0, abs=1e-12)
    session.close()


def test_resumed_session_counts_the_distinct_items_again(tmp_path):
    path = tmp_path / "s.db"
    session = _session(path)
    session.run(6, progress_bar=False)
    session.close()
    g = torch.Generator().manual_seed(0)
    items = torch.randn(40, 4, dtype=torch.float64, generator=g)
    user = SimulatedUser(torch.randn(4, dtype=torch.float64, generator=g), seed=0)
    resumed = PreferenceSession.resume(path, FeaturePool(items), user)
    record = resumed.step()
    sd = resumed.posterior.utility(resumed.store.features()).std(0).clamp(min=1e-12)
    assert record.metrics["posterior_log_sd"] == pytest.approx(float(sd.log().mean()), rel=0, abs=1e-12)
    resumed.close()


def test_resume_reads_the_newcomers_prior_back_while_the_others_answers_are_the_same(tmp_path, monkeypatch):
    import papa_bayes.session as session_module
    from papa_bayes.models import HierarchicalLinearReward

    path = tmp_path / "h.db"
    g = torch.Generator().manual_seed(3)
    items = torch.randn(30, 3, dtype=torch.float64, generator=g)
    store = PreferenceStore(path)
    idx = store.add_items(items)
    for rater in range(3):
        user = SimulatedUser(torch.randn(3, dtype=torch.float64, generator=g), seed=rater)
        for k in range(8):
            a, b = torch.randperm(30, generator=g)[:2].tolist()
            q = store.add_query(round=k, rater=rater, kind="pair", item_a=idx[a], item_b=idx[b])
            won, _ = user.compare(items[a : a + 1], items[b : b + 1])
            store.record_answer(q, "first" if bool(won) else "second")
    store.close()
    user = SimulatedUser(torch.ones(3, dtype=torch.float64), seed=9)
    session = PreferenceSession(path, FeaturePool(items), user, model=HierarchicalLinearReward(), rater=5, seed=1,
                                pool_size=6, num_draws=32)
    session.run(2, progress_bar=False)
    prior = session._rater_model
    session.close()

    fit = session_module.fit

    def no_fit(model, *args, **kwargs):
        if isinstance(model, HierarchicalLinearReward):
            raise AssertionError("the cold start was fitted again")
        return fit(model, *args, **kwargs)  # (this rater's own answers)

    monkeypatch.setattr(session_module, "fit", no_fit)
    resumed = PreferenceSession.resume(path, FeaturePool(items), user, model=HierarchicalLinearReward(), rater=5)
    kept = resumed._rater_model
    assert repr(kept) == repr(prior) and type(kept) is type(prior)
    assert torch.equal(kept.prior_loc, prior.prior_loc) and torch.equal(kept.prior_scale_tril, prior.prior_scale_tril)
    assert kept.rationality_prior == prior.rationality_prior
    resumed.close()
    # another rater answered since: learned again from the answers as they are now
    with PreferenceStore(path) as store:
        q = store.add_query(round=8, rater=0, kind="pair", item_a=idx[0], item_b=idx[1])
        store.record_answer(q, "first")
    with pytest.raises(AssertionError, match="fitted again"):
        PreferenceSession.resume(path, FeaturePool(items), user, model=HierarchicalLinearReward(), rater=5)
    monkeypatch.setattr(session_module, "fit", fit)
    again = PreferenceSession.resume(path, FeaturePool(items), user, model=HierarchicalLinearReward(), rater=5)
    assert not torch.equal(again._rater_model.prior_loc, prior.prior_loc)
    again.close()
