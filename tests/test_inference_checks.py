"""Fits and posteriors asked for something they cannot give: our errors, or the right numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.inference import prior_posterior

ITEMS = torch.tensor([[2.0], [-2.0], [0.0], [1.0]], dtype=torch.float64)


def test_the_prior_refuses_data_with_answers():
    """prior_posterior conditioned on any answers given and returned that posterior as 'the prior'."""
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(InputDataError, match="data: expected items without answers.*got 20 comparisons"):
        prior_posterior(LinearReward(rationality=1.0), PreferenceData(items=items, comparisons=[[0, 1]] * 20))
    prior = prior_posterior(LinearReward(rationality=1.0), PreferenceData(items=items), num_samples=4000, seed=0)
    assert torch.allclose(prior.mean("w"), torch.zeros(2, dtype=torch.float64), atol=0.06)
    assert torch.allclose(prior.std("w"), torch.ones(2, dtype=torch.float64), atol=0.05)


def test_refine_steps_takes_numpy_integers_as_the_other_counts_do():
    data = PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2], [0, 2]])
    post = fit(LinearReward(), data, refine_steps=np.int64(3), num_samples=np.int64(32), seed=np.int64(1))
    assert post.options["refine_steps"] == 3 and type(post.options["refine_steps"]) is int
    with pytest.raises(InputDataError, match="refine_steps: expected a non-negative integer"):
        fit(LinearReward(), data, refine_steps=2.0)


def test_log_likelihood_of_answers_the_fit_has_no_parameter_for():
    """Ratings scored by a fit without a threshold raised a TypeError (Tensor - None); comparisons scored
    by a tie model fitted on ratings only, a RuntimeError about dtypes."""
    post = fit(LinearReward(), PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2]]), num_samples=16)
    with pytest.raises(ModelError, match="no like/dislike threshold"):
        post.log_likelihood(PreferenceData(items=ITEMS, ratings=[[0, 1]]))
    assert post.log_likelihood(PreferenceData(items=ITEMS, comparisons=[[1, 2]]))["comparisons"].shape == (16, 1)
    tied = fit(LinearReward(ties=True), PreferenceData(items=ITEMS, ratings=[[0, 1], [1, -1]]), num_samples=16)
    with pytest.raises(ModelError, match="no tie strength"):
        tied.log_likelihood(PreferenceData(items=ITEMS, comparisons=[[0, 1]]))
    assert tied.log_likelihood(PreferenceData(items=ITEMS, ratings=[[2, 1]]))["ratings"].shape == (16, 1)


def test_sbc_scores_a_hierarchical_fit_by_the_rater_who_answered(monkeypatch):
    """The held-out answers are rater 0's; SBC predicted them with the population's mean utility, which
    reported a spurious miscalibration (ECE 0.085 against 0.023 for rater 0's predictions)."""
    from papa_bayes.diagnostics import simulation_based_calibration
    from papa_bayes.inference.pyro_posterior import PyroPosterior
    from papa_bayes.models import HierarchicalLinearReward

    raters = []
    original = PyroPosterior.preference_probability

    def recording(self, first, second, **kwargs):
        raters.append(kwargs.get("rater"))
        return original(self, first, second, **kwargs)

    monkeypatch.setattr(PyroPosterior, "preference_probability", recording)
    items = torch.randn(12, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = simulation_based_calibration(HierarchicalLinearReward(), items, 10, 2, num_rank_draws=9, num_heldout=5,
                                          fit_options={"num_samples": 16})
    assert raters == [0, 0] and result.probs.shape == (2, 5)


def test_a_gaussian_sampler_on_the_draws_model_is_our_error():
    """qEUBO with a SobolQMCNormalSampler raised BoTorch's NotImplementedError: DrawsPosterior does not
    implement `base_sample_shape`."""
    from botorch.acquisition.preference import qExpectedUtilityOfBestOption
    from botorch.sampling import IIDNormalSampler, SobolQMCNormalSampler

    post = fit(LinearReward(), PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2], [0, 2]]), num_samples=16)
    X = torch.tensor([[[2.0], [-1.0]], [[0.5], [1.0]]], dtype=torch.float64)  # 2 pairs `2 x 2 x 1`
    for sampler in (SobolQMCNormalSampler(torch.Size([64])), IIDNormalSampler(torch.Size([64]))):
        acquisition = qExpectedUtilityOfBestOption(pref_model=post.as_botorch_model(), sampler=sampler)
        with pytest.raises(ModelError, match=r"fixed set of 16 posterior draws.*do not apply.*sampler=None"):
            acquisition(X)
    value = qExpectedUtilityOfBestOption(pref_model=post.as_botorch_model(), sampler=None)(X)
    u = post.utility(X.reshape(-1, 1)).reshape(16, 2, 2)  # the same draws for both items of a pair
    assert torch.allclose(value, u.max(-1).values.mean(0))


def test_fit_passes_a_gp_models_own_options_on_and_names_them_for_a_pyro_model():
    """fit(PreferenceGP(), data, batch_size=...) raised Python's TypeError: the GP's own options (minibatch,
    optimizer) were reachable only through PreferenceGP().fit."""
    from papa_bayes.models import PreferenceGP

    gen = torch.Generator().manual_seed(0)
    items = torch.randn(12, 2, generator=gen, dtype=torch.float64)
    first = torch.randint(0, 12, (30,), generator=gen)
    second = (first + 1 + torch.randint(0, 11, (30,), generator=gen)) % 12
    data = PreferenceData(items=items, comparisons=torch.stack([first, second], 1))
    opts = dict(batch_size=8, optimizer="adam", num_steps=20, num_samples=16, seed=3)
    via_fit, direct = fit(PreferenceGP(), data, **opts), PreferenceGP().fit(data, **opts)
    assert torch.equal(via_fit.utility_mean(items), direct.utility_mean(items))
    full = fit(PreferenceGP(), data, num_steps=20, num_samples=16, seed=3)  # another fit: the options arrived
    assert not torch.allclose(via_fit.utility_mean(items), full.utility_mean(items))
    with pytest.raises(InputDataError, match="batch_size"):
        fit(PreferenceGP(), data, batch_size=0)
    with pytest.raises(InputDataError, match=r"batch_size: expected only fit's own options for LinearReward"):
        fit(LinearReward(), data, batch_size=8)
