"""A tie model fitted before any comparison (ratings only) still models ties: its tie strength is at its prior."""

from __future__ import annotations

import math

import pytest
import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.models import PreferenceGP

ITEMS = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
RATINGS = PreferenceData(items=ITEMS, ratings=[[i, 1 if i % 2 else -1] for i in range(8)])
TIED = PreferenceData(items=ITEMS, comparisons=[[0, 1], [2, 3]], ties=[True, False])


@pytest.mark.parametrize("model", [PreferenceGP(ties=True), LinearReward(ties=True)], ids=["gp", "linear"])
def test_a_tie_model_fitted_on_ratings_predicts_and_scores_three_outcomes(model):
    """Fitted on ratings only, a ties=True model gave 2 outcome probabilities (strict comparisons); the GP
    scored tied answers with "the model was built with ties=False; pass ties=True", the linear model refused."""
    post = fit(model, RATINGS, seed=0, num_samples=64)
    probs = post.outcome_probabilities(ITEMS[:3], ITEMS[3:6])
    assert probs.shape == (64, 3, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(64, 3, dtype=torch.float64))
    ll = post.log_likelihood(TIED)["comparisons"]
    assert ll.shape == (64, 2) and bool(torch.isfinite(ll).all())


def test_the_tie_strength_before_any_comparison_is_its_prior():
    """Laplace is exact for a LogNormal site the data do not touch: log tie strength ~ N(loc, scale)."""
    loc, scale = math.log(0.3), 0.7
    post = fit(LinearReward(ties=True, rationality=1.0, tie_prior=(loc, scale)), RATINGS, num_samples=4000, seed=0)
    log_tie = post.params["tie_strength"].log()
    assert abs(float(log_tie.mean()) - loc) < 0.05 and abs(float(log_tie.std()) - scale) < 0.05


def test_the_gp_update_fits_the_tie_strength_on_the_first_comparisons():
    """An ELBO update keeps the hyperparameters fixed; the tie strength, at its prior until the first
    comparisons arrive, is fitted by the update that brings them (as a parameter new to the likelihood)."""
    post = fit(PreferenceGP(ties=True), RATINGS, seed=0, num_samples=16)
    before = float(post.tie_strength_draws()[0])
    more = RATINGS.append(comparisons=[[0, 1], [2, 3], [4, 5], [6, 7]], ties=[True, True, True, False])
    after = float(post.update(more).tie_strength_draws()[0])
    assert after > 1.2 * before  # three ties in four answers: more ties than the prior's mode


def test_the_prior_of_a_tie_model_predicts_ties_for_the_first_query():
    """prior_posterior (an online loop's start, before any answer) of a ties=True model predicted 2 outcomes,
    so the first query was chosen as if no one could answer "tie"."""
    from papa_bayes.inference import prior_posterior

    prior = prior_posterior(LinearReward(ties=True, rationality=1.0), PreferenceData(items=ITEMS), num_samples=32)
    assert prior.outcome_probabilities(ITEMS[:2], ITEMS[2:4]).shape == (32, 2, 3)
    assert prior.tie_strength_draws().shape == (32,)
