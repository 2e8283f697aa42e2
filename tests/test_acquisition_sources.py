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
