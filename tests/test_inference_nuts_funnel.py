"""NUTS with a learned rationality under a wide prior: run on scaled_w decentred from the rationality."""

from __future__ import annotations

import warnings

import torch

from papa_bayes import LinearReward, fit
from papa_bayes.users import SimulatedUser, simulate_comparisons


def _weak_data(d: int = 2, m: int = 30, scale: float = 0.3, seed: int = 1):
    """Few answers of a nearly indifferent person: the posterior reaches down to small rationalities."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randn(20, d, generator=gen, dtype=torch.float64)
    return simulate_comparisons(SimulatedUser([scale] + [0.0] * (d - 1)), items, m, generator=gen)


def test_nuts_wide_rationality_prior_reaches_the_funnel_neck():
    # Before: centred NUTS missed the funnel's neck: 2 x 300 draws gave 7 divergences and a log rationality of mean
    # -1.21 (sd 0.96) where a long fully decentred run (2 x 2000) gives -2.71 (sd 2.70), and w's sds 0.68 for 0.86-0.90.
    data = _weak_data()
    model = LinearReward(rationality_prior=(0.0, 5.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(model, data, method="nuts", num_samples=100, warmup_steps=100, seed=0, progress_bar=False)
    # the posterior holds the model's own sites, consistent with each other
    assert set(post.samples) == {"rationality", "scaled_w"}
    w, r = post.draws("w"), post.draws("rationality")
    assert torch.allclose(post.draws("scaled_w"), r.unsqueeze(-1) * w)
    assert post.diagnostics["divergences"] == 0
    log_r = r.log()
    assert float(log_r.mean()) < -1.8, float(log_r.mean())
    assert float(log_r.std()) > 1.6, float(log_r.std())
    assert float(w.std(0).min()) > 0.72, w.std(0)
    # downstream: lp is the model's log joint at the draws, ArviZ gets the model's sites and the log likelihood
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in post.samples.items()}
    assert torch.allclose(post.sample_stats["lp"].reshape(-1), model.log_joint(flat, data))
    idata = post.to_inference_data()
    assert "scaled_w_decentered" not in idata.posterior
    assert {"rationality", "scaled_w", "w"} <= set(idata.posterior.data_vars)
    assert "comparisons" in idata.log_likelihood
    assert set(post.diagnostics["ess"]) == {"rationality", "scaled_w"}
    assert post.diagnostics["centredness"] == [0.0, 0.0]  # weak data: fully decentred


def test_nuts_default_prior_stays_centred_and_updates():
    # informative data at the default prior: the centredness read off Laplace's draws is kept (no funnel); an update
    # runs the same way and reports the model's sites.
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser([2.0, 0.5]), items, 40, generator=gen)
    more = data
    for _ in range(5):
        more = more.append(comparisons=[[0, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = fit(LinearReward(), data, method="nuts", num_samples=60, warmup_steps=60, seed=0,
                   progress_bar=False)
        assert min(post.diagnostics["centredness"]) >= 0.5, post.diagnostics["centredness"]
        new = post.update(more)
    assert set(new.samples) == {"rationality", "scaled_w"}
    assert new.num_draws == 120 and "centredness" in new.diagnostics
    assert torch.allclose(new.draws("scaled_w"), new.draws("rationality").unsqueeze(-1) * new.draws("w"))
