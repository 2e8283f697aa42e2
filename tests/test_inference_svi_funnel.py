"""SVI with a wide rationality prior: the guide must not spread into the funnel of (log rationality, scaled_w)."""

from __future__ import annotations

import warnings

import pytest
import torch

from papa_bayes import LinearReward, fit
from papa_bayes.users import SimulatedUser, simulate_comparisons


def _weak_data(d: int = 2, m: int = 30, w: tuple[float, ...] = (0.1, -0.2), seed: int = 0):
    """Few answers of a nearly indifferent person: the posterior reaches down to small rationalities."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randn(40, d, generator=gen, dtype=torch.float64)
    return simulate_comparisons(SimulatedUser(list(w)), items, m, generator=gen)


def _refined(model, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit(model, data, method="laplace", refine_steps=20, seed=0)


@pytest.mark.parametrize("prior_scale", [2.0, 5.0])
def test_svi_wide_rationality_prior_matches_refined_laplace(prior_scale):
    # Before: SVI's Gaussian in (log rationality, scaled_w) put draws below the funnel's neck and w = scaled_w /
    # rationality went to the hundreds (sd 138-224 at LogNormal(0, 5); 1.6e6 measured on other data).
    data = _weak_data()
    model = LinearReward(rationality_prior=(0.0, prior_scale))
    post = fit(model, data, method="svi", num_steps=200, num_samples=1000, seed=0)
    ref = _refined(model, data)
    w, w_ref = post.draws("w"), ref.draws("w")
    assert bool(torch.isfinite(w).all())
    # w's prior sd is 1 and these data say little: the posterior sd is about 1 (refined Laplace 0.93-0.96).
    assert float((w.std(0) / w_ref.std(0) - 1).abs().max()) < 0.25, (w.std(0), w_ref.std(0))
    assert float((w.mean(0) - w_ref.mean(0)).abs().max()) < 0.25, (w.mean(0), w_ref.mean(0))
    log_r, log_r_ref = post.draws("rationality").log(), ref.draws("rationality").log()
    assert abs(float(log_r.mean() - log_r_ref.mean())) < 0.5
    assert 0.6 < float(log_r.std() / log_r_ref.std()) < 1.3
    assert len(post.diagnostics["centredness"]) == 2  # weak data: the guide's weights mostly decentred
    assert max(post.diagnostics["centredness"]) < 0.6, post.diagnostics["centredness"]


def test_svi_wide_prior_with_full_prior_covariance():
    # prior_scale_tril: the guide's weights are standardized by the MultivariateNormal's Cholesky factor.
    data = _weak_data(d=3, m=30, w=(0.2, 0.0, -0.1), seed=1)
    tril = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [0.0, -0.3, 0.6]], dtype=torch.float64)
    model = LinearReward(prior_scale_tril=tril, rationality_prior=(0.0, 5.0))
    post = fit(model, data, method="svi", num_steps=200, num_samples=1000, seed=0)
    ref = _refined(model, data)
    w, w_ref = post.draws("w"), ref.draws("w")
    assert float((w.std(0) / w_ref.std(0) - 1).abs().max()) < 0.3, (w.std(0), w_ref.std(0))
    assert float((w.mean(0) - w_ref.mean(0)).abs().max()) < 0.3, (w.mean(0), w_ref.mean(0))
    # the draws are the model's: scaled_w = rationality * w, and log_joint is finite at every one
    assert torch.allclose(post.draws("scaled_w"), post.draws("rationality").unsqueeze(-1) * w)
    assert bool(torch.isfinite(post.sample_stats["lp"]).all())


def test_svi_wide_prior_update_stays_in_the_posterior():
    # update() refits warm from the Laplace fit of the extended data: the same decentred guide
    data = _weak_data()
    model = LinearReward(rationality_prior=(0.0, 5.0))
    first = fit(model, data, method="svi", num_steps=100, num_samples=500, seed=0)
    post = first.update(data.append(comparisons=[[3, 4], [5, 6], [7, 8]]))
    w = post.draws("w")
    assert post.method == "svi" and post.data.num_comparisons == data.num_comparisons + 3
    assert bool(torch.isfinite(w).all())
    assert float(w.std(0).max()) < 1.3 and float(w.mean(0).abs().max()) < 0.8, (w.mean(0), w.std(0))


def _models(d: int):
    tril = torch.tensor([[0.9, 0.0, 0.0], [0.4, 0.7, 0.0], [-0.2, 0.3, 0.5]], dtype=torch.float64)[:d, :d]
    loc = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)[:d]
    return [LinearReward(prior_scale=0.7, prior_loc=loc, rationality_prior=(0.0, 2.0)),
            LinearReward(prior_scale_tril=tril, prior_loc=loc, rationality_prior=(0.0, 2.0))]


@pytest.mark.parametrize("which", [0, 1])
def test_decentred_coordinates_are_an_exact_change_of_variables(which):
    # The guide's model in (rationality, zeta) must be the model's joint density times the Jacobian of
    # scaled_w = rationality * (loc + L rationality^-lam zeta): else SVI would fit another posterior.
    from pyro import poutine

    from papa_bayes.inference import svi

    d = 3
    data = _weak_data(d=d, m=12, w=(0.2, 0.0, -0.1))
    model = _models(d)[which]
    lam = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    gm = svi.decentred_model(model, "scaled_w", lam)
    gen = torch.Generator().manual_seed(3)
    for b in (0.05, 1.0, 7.0):
        params = {"rationality": torch.tensor([b], dtype=torch.float64),
                  "scaled_w": torch.randn(1, d, generator=gen, dtype=torch.float64)}
        values = svi.to_guide_values(model, data, params, lam)
        back = svi.from_guide_values(model, data, values, lam)
        assert torch.allclose(back["scaled_w"], params["scaled_w"], atol=1e-12)
        cond = {k: v[0] for k, v in values.items()}
        guide_lp = poutine.trace(poutine.condition(gm, data=cond)).get_trace(data).log_prob_sum()
        tril = model.prior_scale_tril if model.prior_scale_tril is not None else model.prior_scale * torch.eye(d)
        log_jac = float(((1 - lam) * torch.log(torch.tensor(b))).sum() + torch.logdet(tril.to(torch.float64)))
        expected = float(model.log_joint(params, data)[0]) + log_jac
        assert abs(float(guide_lp) - expected) < 1e-6, (b, float(guide_lp), expected)  # a Jacobian off: O(1)


def test_centredness_follows_how_much_the_data_say():
    from papa_bayes.inference import svi

    model = LinearReward(rationality_prior=(0.0, 2.0))
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    strong = simulate_comparisons(SimulatedUser([2.0, -3.0]), items, 200, generator=gen)
    lam = {}
    for name, data in (("weak", _weak_data(m=10)), ("strong", strong)):
        post = fit(model, data, method="laplace", num_samples=1000, seed=0)
        lam[name] = svi.centredness(model, data, post.params)
    assert float(lam["weak"].max()) < 0.4 and float(lam["strong"].min()) > 0.7, lam


def test_svi_default_prior_still_matches_refined_laplace():
    # The default LogNormal(0, 0.5) on informative data: (nearly) centred coordinates, as before the fix.
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser([0.5, -1.0]), items, 30, generator=gen)
    model = LinearReward()
    post = fit(model, data, method="svi", num_steps=200, num_samples=1000, seed=0)
    ref = _refined(model, data)
    w, w_ref = post.draws("w"), ref.draws("w")
    assert float((w.std(0) / w_ref.std(0) - 1).abs().max()) < 0.15, (w.std(0), w_ref.std(0))
    assert float((w.mean(0) - w_ref.mean(0)).abs().max()) < 0.1, (w.mean(0), w_ref.mean(0))
    log_r, log_r_ref = post.draws("rationality").log(), ref.draws("rationality").log()
    assert 0.8 < float(log_r.std() / log_r_ref.std()) < 1.2
