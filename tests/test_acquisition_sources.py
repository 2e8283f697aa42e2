"""papa_bayes.sources: FeaturePool's candidates and the checks and exploration share every source shares."""

from __future__ import annotations

import pytest
import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.exceptions import InputDataError
from papa_bayes.sources import FeaturePool, check_pool_request, num_unsteered


@pytest.fixture(scope="module")
def pool_and_posterior():
    items = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    posterior = fit(LinearReward(), PreferenceData(items=items, comparisons=[[0, 1], [2, 3]]), seed=0)
    return FeaturePool(items), posterior


@pytest.mark.parametrize(("n", "exploration"), [(2, 0.25), (2, 0.75), (8, 0.05), (3, 0.5)])
def test_the_unsteered_share_averages_the_exploration_share(pool_and_posterior, n, exploration):
    """round(exploration * n) never explored at 0.25 of 2 or 0.05 of 8, and at 0.75 of 2 (1.5, rounded half to
    even: 2) steered nothing."""
    pool, posterior = pool_and_posterior
    gen = torch.Generator().manual_seed(0)
    unsteered = [int((~pool.candidates(posterior, n, exploration=exploration, generator=gen).steered).sum())
                 for _ in range(400)]
    share = sum(unsteered) / (400 * n)
    assert share == pytest.approx(exploration, abs=0.04), share
    assert set(unsteered) <= {int(exploration * n), int(exploration * n) + 1}  # the nearest two counts only


def test_a_whole_share_draws_nothing_from_the_generator(pool_and_posterior):
    """0.25 of 8 is 2 every time, and leaves the source's random stream as it was."""
    _, posterior = pool_and_posterior
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    assert num_unsteered(posterior, 8, 0.25, generator=gen) == 2
    assert num_unsteered(posterior, 30, 0.1, generator=gen) == 3  # 3.0000000000000004
    assert num_unsteered(None, 8, 0.25, generator=gen) == 8  # no posterior: nothing to steer by
    assert torch.equal(gen.get_state(), state)
    assert num_unsteered(posterior, 8, 1.0, generator=gen) == 8 and num_unsteered(posterior, 8, 0.0, generator=gen) == 0


@pytest.mark.parametrize(("n", "exploration", "field"), [(0, 0.5, "n"), (-3, 0.5, "n"), (True, 0.5, "n"),
                                                          (2.5, 0.5, "n"), (4, 1.5, "exploration"),
                                                          (4, float("nan"), "exploration"), (4, "half", "exploration")])
def test_check_pool_request_names_the_bad_argument(n, exploration, field):
    with pytest.raises(InputDataError, match=f"^{field}: expected"):
        check_pool_request(n, exploration)
    assert check_pool_request(4, 0.5) == (4, 0.5)


def test_a_feature_pool_refuses_more_candidates_than_its_items(pool_and_posterior):
    """A request past the pool's 10 items handed out all 10, while the session stored the request as its pool_size."""
    pool, posterior = pool_and_posterior
    assert pool.max_candidates == 10
    for post in (None, posterior):
        with pytest.raises(InputDataError, match=r"^n: expected at most the pool's 10 items .*pool_size.*, got 11\.$"):
            pool.candidates(post, 11, exploration=0.5, generator=torch.Generator())
    assert len(pool.candidates(posterior, 10, exploration=0.5, generator=torch.Generator())) == 10  # all of them


def test_a_session_asking_for_more_candidates_than_the_pool_holds_is_refused(tmp_path, pool_and_posterior):
    """pool_size=16 over 10 items ran rounds of 10 candidates, its stored pool_size saying 16."""
    from papa_bayes.session import PreferenceSession
    from papa_bayes.users import SimulatedUser

    pool, _ = pool_and_posterior
    with pytest.raises(InputDataError, match=r"^pool_size: expected at most the source's 10 candidates .*got 16"):
        PreferenceSession(tmp_path / "s.db", pool, SimulatedUser([1.0, 0.0]), pool_size=16)
    assert not (tmp_path / "s.db").exists()  # refused before the store is made


def test_a_store_begun_with_a_pool_size_above_its_pool_still_resumes(tmp_path, pool_and_posterior):
    """Stores written before the check drew the whole pool each round: they resume and keep doing so."""
    from papa_bayes.session import PreferenceSession
    from papa_bayes.store import PreferenceStore
    from papa_bayes.users import SimulatedUser

    pool, _ = pool_and_posterior
    with PreferenceSession(tmp_path / "s.db", pool, SimulatedUser([1.0, 0.0]), pool_size=10) as session:
        session.run(2)
    with PreferenceStore(tmp_path / "s.db", create=False) as store:  # as the earlier code stored pool_size=16
        cfg = store.rater_config(0)
        store.set_config({**cfg, "pool_size": 16}, rater=0)
    with PreferenceSession.resume(tmp_path / "s.db", pool, SimulatedUser([1.0, 0.0])) as session:
        assert session.pool_size == 16
        session.run(1)
        assert len(session.store.queries(rater=0)) == 3


def test_a_session_over_a_small_pool_asks_from_all_its_items_by_default(tmp_path):
    """The default pool_size (32) over a 12-item pool: every item each round, and the store says 12."""
    from papa_bayes.session import PreferenceSession
    from papa_bayes.store import PreferenceStore
    from papa_bayes.users import SimulatedUser

    pool = FeaturePool(torch.randn(12, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    with PreferenceSession(tmp_path / "s.db", pool, SimulatedUser([1.0, 0.0])) as session:
        assert session.pool_size == 12
        session.run(1, progress_bar=False)
    with PreferenceStore(tmp_path / "s.db", create=False) as store:
        assert store.rater_config(0)["pool_size"] == 12
    big = FeaturePool(torch.randn(40, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    with PreferenceSession(tmp_path / "t.db", big, SimulatedUser([1.0, 0.0])) as session:
        assert session.pool_size == 32
