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
    """Ratings scored by a fit without a threshold raised a TypeError (Tensor - None)."""
    post = fit(LinearReward(), PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2]]), num_samples=16)
    with pytest.raises(ModelError, match="no like/dislike threshold"):
        post.log_likelihood(PreferenceData(items=ITEMS, ratings=[[0, 1]]))
    assert post.log_likelihood(PreferenceData(items=ITEMS, comparisons=[[1, 2]]))["comparisons"].shape == (16, 1)
    tied = fit(LinearReward(ties=True), PreferenceData(items=ITEMS, ratings=[[0, 1], [1, -1]]), num_samples=16)
    # a tie model has its tie strength (at its prior) before any comparison: it scores them
    assert tied.log_likelihood(PreferenceData(items=ITEMS, comparisons=[[0, 1]]))["comparisons"].shape == (16, 1)
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


def test_a_numpy_seed_draws_what_the_same_python_seed_draws():
    """fit derived its streams' seeds from a NumPy seed in NumPy's arithmetic, which wraps: np.int16(30000)
    plus 7919 per answer (Laplace) came out as another seed. (32-bit NumPy seeds wrap harmlessly: torch's
    CPU generator reads a seed modulo 2**32.)"""
    data = PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2], [0, 2]])
    for seed in (np.int16(30000), np.uint16(2**16 - 1)):
        post = fit(LinearReward(rationality=1.0), data, num_samples=8, seed=seed)
        same = fit(LinearReward(rationality=1.0), data, num_samples=8, seed=int(seed))
        assert torch.equal(post.params["scaled_w"], same.params["scaled_w"])
        assert type(post.options["seed"]) is int
    # Refinement draws 2 * num_samples proposals: 2 * np.uint8(200) wrapped to 144.
    prior = prior_posterior(LinearReward(rationality=1.0), PreferenceData(items=ITEMS), num_samples=np.uint8(200),
                            refine_steps=1, seed=np.uint32(3))
    same = prior_posterior(LinearReward(rationality=1.0), PreferenceData(items=ITEMS), num_samples=200,
                           refine_steps=1, seed=3)
    assert torch.equal(prior.params["scaled_w"], same.params["scaled_w"])


def test_cold_start_from_a_one_draw_posterior_is_our_error():
    """new_rater_model() of a one-draw posterior failed in torch's Cholesky (torch.cov of one draw is NaN)."""
    from papa_bayes import HierarchicalLinearReward

    data = PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2]], comparison_rater=[0, 1])
    post = fit(HierarchicalLinearReward(), data, num_samples=1)
    with pytest.raises(InputDataError, match="num_samples: expected at least 2 posterior draws"):
        post.new_rater_model()
    assert fit(HierarchicalLinearReward(), data, num_samples=2).new_rater_model().prior_loc.shape == (1,)


def test_an_update_on_data_that_does_not_extend_the_fit_says_where():
    """PyroPosterior.update named only the new data's sizes (GPPosterior.update says where it differs), and
    printed the whole repr of a non-data argument."""
    data = PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2]])
    post = fit(LinearReward(rationality=1.0), data, num_samples=8)
    other = PreferenceData(items=ITEMS, comparisons=[[0, 1], [2, 3], [0, 2]])
    with pytest.raises(InputDataError, match=r"data: expected the fitted data with rows appended.*"
                                             r"comparisons differ at comparison 1"):
        post.update(other)
    with pytest.raises(InputDataError, match="got dict"):
        post.update({"items": ITEMS.tolist()})
    assert post.update(data.append(comparisons=[[0, 2]])).data.num_comparisons == 3


def test_fit_options_take_0d_integer_tensors_as_check_int_does():
    """check_fit_options refused a 0-d integer tensor (num_samples=torch.tensor(32)) that check_int, and so
    refine_steps beside it, accepted."""
    from papa_bayes.inference.fit import check_fit_options

    data = PreferenceData(items=ITEMS, comparisons=[[0, 1], [3, 2], [0, 2]])
    post = fit(LinearReward(rationality=1.0), data, refine_steps=torch.tensor(3), num_samples=torch.tensor(32),
               seed=torch.tensor(1, dtype=torch.int16))
    same = fit(LinearReward(rationality=1.0), data, refine_steps=3, num_samples=32, seed=1)
    assert torch.equal(post.params["scaled_w"], same.params["scaled_w"])
    assert all(type(post.options[k]) is int for k in ("num_samples", "seed", "refine_steps"))
    checked = check_fit_options(num_chains=torch.tensor(2), warmup_steps=torch.tensor(0), seed=np.uint8(7))
    assert checked == (2, 0, 7) and all(type(v) is int for v in checked)  # in the order passed
    # what check_int refuses: a one-element tensor, a float or bool tensor, a value out of range
    for name, bad in (("num_samples", torch.tensor([32])), ("num_samples", torch.tensor(32.0)),
                      ("seed", torch.tensor(True)), ("num_chains", torch.tensor(0)), ("seed", torch.tensor(-1)),
                      ("num_samples", True), ("seed", 2**32)):
        with pytest.raises(InputDataError, match=f"^{name}: expected an integer") as info:
            check_fit_options(**{name: bad})
        assert info.value.field == name
