"""A GPyTorch / BoTorch user's first journey through the GP preference models: odd but legal inputs and bad ones.

Each test reproduces a bug found on that journey (it failed before the fix).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference import fit
from papa_bayes.models import PairwiseGPReward, PreferenceGP

pytestmark = pytest.mark.usefixtures("one_thread")


def _close_items(n: int = 20) -> PreferenceData:
    """`n` items on [0, 1] in d=1: their kernel matrix is singular in float64 without jitter."""
    items = torch.linspace(0, 1, n, dtype=torch.float64).unsqueeze(-1)
    comparisons = [[i, n - 1 - i] for i in range(n // 2)] + [[i, i + 1] for i in range(n // 2, n - 1)]
    return PreferenceData(items=items, comparisons=comparisons)


def test_nuts_with_zero_jitter_samples():
    """PreferenceGP(jitter=0) with NUTS raised torch's "Expected p_in >= 0 && p_in <= 1" from inside Pyro (the
    sampler's Cholesky failed); the ELBO fit of the same model works (psd_safe_cholesky retries with jitter)."""
    data = _close_items()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # R-hat of 4 draws
        post = fit(PreferenceGP(jitter=0.0), data, method="nuts", num_samples=4, warmup_steps=4, progress_bar=False,
                   seed=0)
    assert bool(torch.isfinite(post.utility(data.items)).all())


def test_pairwise_zero_jitter_names_the_field():
    """PairwiseGPReward(jitter=0) on the same items raised linear_operator's NotPSDError from BoTorch."""
    with pytest.raises(InputDataError, match="jitter") as info:
        fit(PairwiseGPReward(jitter=0.0), _close_items(), seed=0)
    assert info.value.field == "jitter"


def test_closed_forms_refuse_nan_moments():
    """gaussian_expected_max, pair_moments and utility_moments returned NaN for NaN moments or draws, where
    houlsby_information_gain (the same module) names the field."""
    from papa_bayes.acquisition import gaussian_expected_max, pair_moments, utility_moments

    nan, one, zero = torch.tensor([float("nan")]), torch.ones(1), torch.zeros(1)
    for args, field in (((nan, zero, one), "mean_first"), ((one, nan, one), "mean_second"),
                        ((one, zero, torch.tensor([float("inf")])), "var_diff")):
        with pytest.raises(InputDataError) as info:
            gaussian_expected_max(*args)
        assert info.value.field == field
    first, second = torch.tensor([0]), torch.tensor([1])
    with pytest.raises(InputDataError) as info:
        pair_moments(torch.tensor([float("nan"), 0.0, 0.0]), torch.eye(3), first, second)
    assert info.value.field == "mean"
    cov = torch.eye(3)
    cov[0, 1] = float("nan")
    with pytest.raises(InputDataError) as info:
        pair_moments(torch.zeros(3), cov, first, second)
    assert info.value.field == "cov"
    with pytest.raises(InputDataError) as info:
        utility_moments(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    assert info.value.field == "utility_draws"
    # finite moments: unchanged
    assert torch.allclose(gaussian_expected_max(one, zero, zero), one)


def test_elbo_progress_bar_true_shows_a_bar(capsys):
    """fit(PreferenceGP(), data, progress_bar=True) showed no bar and said nothing (then only warned it ignored the
    option); a minute-long ELBO fit now shows a bar when asked (tests/test_gp_scale.py checks it)."""
    data = PreferenceData(items=torch.randn(4, 2, dtype=torch.float64), comparisons=[[0, 1], [2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(PreferenceGP(), data, seed=0, num_samples=8, progress_bar=True)
    assert "PreferenceGP ELBO" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(PreferenceGP(), data, seed=0, num_samples=8, progress_bar=False)
