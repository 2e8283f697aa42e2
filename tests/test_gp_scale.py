"""GP preference models at realistic sizes: limits refused with the memory they would need, progress on long fits.

Measured (one CPU thread; see the report of the scale journey): PreferenceGP fits 10^4 comparisons over 5,000
items (d=32) in 15 s and 2x10^4 comparisons plus 10^4 ratings over 10^4 items (d=64) in 16 s, an update by one
answer in 0.2-1.6 s; BoTorch's PairwiseGP needed 92 s and 2 GB for 3,000 items without hyperparameter fitting
(220 s for 1,000 items with it), and would need tens of GB for 10^4 items, so PairwiseGPReward refuses more than
``max_items`` items up front.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference import fit
from papa_bayes.models import PairwiseGPReward, PreferenceGP
from papa_bayes.models.gp_pairwise import MAX_PAIRWISE_ITEMS, pairwise_gp_memory
from papa_bayes.users import SimulatedUser, simulate_comparisons

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n: int, m: int, seed: int = 0, d: int = 3) -> PreferenceData:
    g = torch.Generator().manual_seed(seed)
    items = torch.randn(n, d, generator=g, dtype=torch.float64)
    person = SimulatedUser(lambda x: -(x**2).sum(-1), link="probit", rationality=2.0, seed=seed + 1)
    return simulate_comparisons(person, items, m, generator=g)


def test_pairwise_gp_refuses_more_items_than_its_dense_algebra_can_hold():
    """2,100 distinct compared items went straight into BoTorch's dense `n x n` / `m x n` Laplace algebra (92 s and
    2 GB at 3,000 items without hyperparameter fitting, ~20 GB at 10^4): now an InputDataError before any work,
    naming the limit and the memory."""
    items = torch.randn(2100, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    data = PreferenceData(items=items, comparisons=torch.arange(2100).reshape(-1, 2))
    with pytest.raises(InputDataError) as info:
        PairwiseGPReward().check_data(data)  # what fit and update call first (the old code went on to fit)
    err = info.value
    assert err.field == "comparisons"
    assert "max_items=2000" in err.expected and "PreferenceGP" in err.expected
    assert "2100 distinct items in 1050 comparisons" in err.actual
    assert f"about {pairwise_gp_memory(2100, 1050):.1f} GB" in err.actual
    assert MAX_PAIRWISE_ITEMS == 2000
    with pytest.raises(InputDataError):
        fit(PairwiseGPReward(), data, progress_bar=False)


def test_pairwise_gp_memory_estimate_matches_measurements():
    """The estimate the error quotes, against peaks measured above the imports (d=8, comparisons twice the items):
    within 1.5x of a fit with hyperparameters (0.54 GB among 1,000 items), above those without (0.34, 1.0 and
    2.0 GB among 1,000, 2,000 and 3,000 items); quadratic in the items."""
    assert 0.54 / 1.5 < pairwise_gp_memory(1000, 2000) < 0.54 * 1.5
    for n, measured in ((1000, 0.34), (2000, 1.02), (3000, 1.97)):
        assert measured < pairwise_gp_memory(n, 2 * n) < 2 * measured
    assert pairwise_gp_memory(10_000, 20_000) > 30.0


def test_pairwise_gp_max_items_is_an_option_and_update_checks_it():
    """max_items raises or lowers the limit; an update that brings the items past it is refused the same way."""
    data = _data(30, 40)
    n = int(torch.unique(data.comparisons).numel())
    with pytest.raises(InputDataError) as info:
        fit(PairwiseGPReward(max_items=n - 1), data, progress_bar=False)
    assert info.value.field == "comparisons" and f"{n} distinct items" in info.value.actual
    post = fit(PairwiseGPReward(max_items=n), data, num_samples=16, progress_bar=False, seed=0)
    assert post.num_draws == 16
    unseen = next(i for i in range(30) if i not in set(data.comparisons.reshape(-1).tolist()))
    first = int(data.comparisons[0, 0])
    with pytest.raises(InputDataError) as info:
        post.update(data.append(comparisons=[[first, unseen]]))
    assert f"{n + 1} distinct items" in info.value.actual
    for bad in (0, 2.5, True):
        with pytest.raises(InputDataError) as info:
            PairwiseGPReward(max_items=bad)
        assert info.value.field == "max_items"


def test_elbo_progress_bar_counts_minibatch_steps_and_changes_nothing(capsys):
    """A minibatched ELBO fit (a minute or more at 10^4 answers with hundreds of inducing points) had no bar to
    ask for (progress_bar=True only warned). It shows one now, and the posterior is the same with or without."""
    data = _data(40, 60)
    opts = dict(seed=0, num_samples=8, batch_size=20, num_steps=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shown = fit(PreferenceGP(num_inducing=16), data, progress_bar=True, **opts)
    err = capsys.readouterr().err
    assert "PreferenceGP ELBO" in err
    assert shown.diagnostics["optimizer"] == "ngd"
    quiet = fit(PreferenceGP(num_inducing=16), data, **opts)
    assert "PreferenceGP ELBO" not in capsys.readouterr().err
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert torch.equal(shown.utility(x), quiet.utility(x))
    assert shown.diagnostics["loss"] == quiet.diagnostics["loss"]
