"""ArviZ groups beyond the posterior: prior / prior_predictive, how a fit was made (attrs), no fake divergences."""

from __future__ import annotations

import warnings

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from papa_bayes import HierarchicalLinearReward, InputDataError, LinearReward, PreferenceData, fit
from papa_bayes.diagnostics import to_inference_data
from papa_bayes.models import PairwiseGPReward
from papa_bayes.users import SimulatedUser, simulate_comparisons


def _data(ties: bool = False) -> PreferenceData:
    """12 items, 4 comparisons (two stored higher index first), 3 ratings, 2 raters."""
    items = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return PreferenceData(
        items=items, comparisons=[[0, 1], [3, 2], [4, 5], [7, 6]], ties=[False, ties, False, False],
        ratings=[[1, 1], [2, -1], [3, 1]], comparison_rater=[0, 1, 0, 1], rating_rater=[0, 1, 1])


def _raters(sizes: list[int]) -> PreferenceData:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 2, generator=g, dtype=torch.float64)
    comps, raters = [], []
    for r, n in enumerate(sizes):
        w = torch.tensor([1.0 + 0.3 * r, -0.5], dtype=torch.float64)
        comps.append(simulate_comparisons(SimulatedUser(w, seed=50 + r), X, n, generator=g).comparisons)
        raters.append(torch.full((n,), r))
    return PreferenceData(items=X, comparisons=torch.cat(comps), comparison_rater=torch.cat(raters))


@pytest.mark.parametrize("model, ties", [(LinearReward(), False), (HierarchicalLinearReward(ties=True), True)],
                         ids=["linear", "hierarchical-ties"])
def test_prior_groups_have_the_posterior_dims_and_coding(model, ties):
    post = fit(model, _data(ties), seed=0)
    idata = post.to_inference_data(prior=True, num_prior_samples=300)
    assert {"prior", "prior_predictive"} <= set(idata.groups())
    assert set(idata.prior.data_vars) == set(idata.posterior.data_vars)
    for var in idata.posterior.data_vars:
        assert idata.prior[var].dims == idata.posterior[var].dims, var
        assert idata.prior[var].shape == (1, 300, *idata.posterior[var].shape[2:]), var
        for dim in idata.posterior[var].dims[2:]:
            assert list(idata.prior[dim].values) == list(idata.posterior[dim].values)
    assert set(idata.prior_predictive.data_vars) == set(idata.observed_data.data_vars) == {"comparisons", "ratings"}
    for var in idata.observed_data.data_vars:
        assert idata.prior_predictive[var].dims == idata.posterior_predictive[var].dims, var
        assert idata.prior_predictive[var].dtype == idata.observed_data[var].dtype == np.int64
    codes = {0, 1, 2} if ties else {0, 1}
    assert set(np.unique(idata.prior_predictive["comparisons"].values)) == codes
    assert set(np.unique(idata.prior_predictive["ratings"].values)) == {0, 1}


def test_prior_is_opt_in_seeded_and_draws_the_models_prior():
    post = fit(LinearReward(), _data(), seed=0)
    assert "prior" not in post.to_inference_data().groups()  # the default output is unchanged
    a = to_inference_data(post, seed=3, prior=True, num_prior_samples=4000)
    b = to_inference_data(post, seed=3, prior=True, num_prior_samples=4000)
    c = to_inference_data(post, seed=4, prior=True, num_prior_samples=4000)
    assert np.array_equal(a.prior["w"].values, b.prior["w"].values)
    assert np.array_equal(a.prior_predictive["comparisons"].values, b.prior_predictive["comparisons"].values)
    assert not np.array_equal(a.prior["w"].values, c.prior["w"].values)
    # threshold ~ N(0, threshold_prior_scale = 1): the prior, not the posterior
    threshold = a.prior["threshold"].values
    assert abs(threshold.mean()) < 0.1 and 0.9 < threshold.std() < 1.1
    with pytest.raises(InputDataError, match="num_prior_samples"):
        post.to_inference_data(prior=True, num_prior_samples=0)


def test_arviz_prior_tools_run():
    idata = fit(LinearReward(), _data(), seed=0).to_inference_data(prior=True, num_prior_samples=200)
    az.plot_ppc(idata, group="prior", var_names=["ratings"])
    az.plot_dist_comparison(idata, var_names=["threshold"])
    assert "w[x0]" in az.summary(idata, group="prior", var_names=["w"], kind="stats").index
    plt.close("all")


def test_gp_posterior_refuses_prior():
    g = torch.Generator().manual_seed(2)
    X = torch.rand(10, 2, generator=g, dtype=torch.float64)
    data = PreferenceData(items=X, comparisons=[[0, 1], [2, 3], [4, 5], [6, 7]])
    post = fit(PairwiseGPReward(), data, seed=0, num_samples=16)
    with pytest.raises(InputDataError, match="prior"):
        to_inference_data(post, prior=True)
    with pytest.raises(InputDataError, match="^prior: expected False for a GP posterior"):
        post.to_inference_data(prior=True)  # the method too (it was a TypeError)
    assert "prior" not in to_inference_data(post).groups()


def test_attrs_tell_how_a_laplace_posterior_was_fitted():
    data = _raters([8, 8, 8])
    model = HierarchicalLinearReward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # refinement may warn on few answers; the attrs are what is tested
        plain = fit(model, data, seed=0, num_samples=200).to_inference_data()
        refined = fit(model, data, seed=0, num_samples=200, refine_steps=5).to_inference_data()
        nested = fit(model, data, seed=0, num_samples=200, integrate_scale=True).to_inference_data()
    assert plain.attrs["method"] == refined.attrs["method"] == nested.attrs["method"] == "laplace"
    assert (plain.attrs["refine_steps"], plain.attrs["integrate_scale"]) == (0, 0)
    assert (refined.attrs["refine_steps"], refined.attrs["integrate_scale"]) == (5, 0)
    assert (nested.attrs["refine_steps"], nested.attrs["integrate_scale"]) == (0, 1)
    assert plain.attrs["seed"] == 0
    assert 0 < refined.sample_stats.attrs["refine_ess"] <= 1 and "refine_acceptance" in refined.sample_stats.attrs
    assert 0 < nested.sample_stats.attrs["scale_ess"] <= 1
    assert "refine_ess" not in plain.sample_stats.attrs and "scale_ess" not in plain.sample_stats.attrs


def test_svi_and_nuts_attrs():
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svi = fit(LinearReward(), data, method="svi", num_steps=20, num_samples=50, seed=1).to_inference_data()
        nuts = fit(LinearReward(), data, method="nuts", num_samples=20, warmup_steps=20, num_chains=1,
                   seed=1, progress_bar=False).to_inference_data()
    assert svi.attrs["method"] == "svi" and svi.attrs["num_steps"] == 20 and svi.attrs["seed"] == 1
    assert nuts.attrs["method"] == "nuts" and nuts.attrs["warmup_steps"] == 20 and nuts.attrs["num_chains"] == 1
    assert "divergences" in nuts.sample_stats.attrs and "r_hat_max" in nuts.sample_stats.attrs
    # only NUTS has divergences to report
    assert "diverging" in nuts.sample_stats and nuts.sample_stats["diverging"].dtype == bool
    assert "diverging" not in svi.sample_stats and "lp" in svi.sample_stats


def test_laplace_has_no_made_up_divergences():
    idata = fit(LinearReward(), _data(), seed=0).to_inference_data()
    assert "diverging" not in idata.sample_stats and idata.sample_stats["lp"].dims == ("chain", "draw")
    assert float(az.ess(idata)["w"].min()) > 100  # independent draws: ESS is meaningful
    az.plot_trace(idata, var_names=["w"])  # reads no diverging
    plt.close("all")


def test_ratings_coded_like_1_dislike_0():
    idata = fit(LinearReward(), _data(), seed=0).to_inference_data()
    assert idata.observed_data["ratings"].values.tolist() == [1, 0, 1]
    assert idata.constant_data["rated_item"].values.tolist() == [1, 2, 3]
    assert set(np.unique(idata.posterior_predictive["ratings"].values)) <= {0, 1}
