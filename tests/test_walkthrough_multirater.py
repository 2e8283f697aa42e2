"""A statistician's first use of several raters pooled by HierarchicalLinearReward."""

from __future__ import annotations

import warnings

import pytest
import torch

from papa_bayes import HierarchicalLinearReward, InputDataError, LinearReward, PapaBayesWarning, PreferenceData, fit
from papa_bayes.acquisition import select_queries
from papa_bayes.diagnostics import expected_calibration_error
from papa_bayes.users import SimulatedUser, simulate_comparisons


def _raters(W, X, sizes, g, ids=None):
    """Comparisons of rater ``ids[r]`` answering with weights ``W[r]``, stacked into one data set."""
    ids = list(range(len(sizes))) if ids is None else ids
    comps, raters = [], []
    for r, n in enumerate(sizes):
        comps.append(simulate_comparisons(SimulatedUser(W[r], seed=100 + r), X, n, generator=g).comparisons)
        raters.append(torch.full((n,), ids[r]))
    return PreferenceData(items=X, comparisons=torch.cat(comps), comparison_rater=torch.cat(raters))


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1))


def test_recovers_each_raters_weights_without_mixing_raters_up():
    g = torch.Generator().manual_seed(0)
    W = 2.0 * torch.eye(3, dtype=torch.float64)  # three raters who care about different features
    X = torch.randn(300, 3, generator=g, dtype=torch.float64)
    post = fit(HierarchicalLinearReward(), _raters(W, X, [150, 150, 150], g), method="laplace", seed=0)
    Wm = post.mean("w")
    assert Wm.shape == (3, 3) and post.draws("w").shape == (post.num_draws, 3, 3)
    for r in range(3):
        assert _cos(Wm[r], W[r]) > 0.9
        assert all(_cos(Wm[r], W[q]) < 0.4 for q in range(3) if q != r)
        u = post.utility(X[:5], rater=r)
        assert u.shape == (post.num_draws, 5)
        assert torch.allclose(u, post.draws("w")[:, r] @ X[:5].T)  # rationality fixed at 1


def test_utility_without_a_rater_is_the_population_means():
    g = torch.Generator().manual_seed(1)
    W = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    X = torch.randn(50, 2, generator=g, dtype=torch.float64)
    post = fit(HierarchicalLinearReward(rationality=None), _raters(W, X, [30, 30], g), method="laplace", seed=0)
    beta = post.draws("rationality").unsqueeze(-1)
    assert torch.allclose(post.utility(X[:4]), beta * (post.draws("population_mean") @ X[:4].T))
    assert torch.allclose(post.utility(X[:4], rater=1), beta * (post.draws("w")[:, 1] @ X[:4].T))


def test_partial_pooling_shrinks_a_sparse_rater_toward_the_population():
    """Four raters with 100 answers and one with 3, around a population mean far from 0."""
    err_pooled, err_alone = [], []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        mu = torch.tensor([1.5, -1.0, 1.0], dtype=torch.float64)
        W = mu + 0.3 * torch.randn(5, 3, generator=g, dtype=torch.float64)
        X = torch.randn(300, 3, generator=g, dtype=torch.float64)
        data = _raters(W, X, [100, 100, 100, 100, 3], g)
        post = fit(HierarchicalLinearReward(), data, method="laplace", seed=0)
        alone = fit(LinearReward(rationality=1.0), data.for_rater(4), method="laplace", seed=0)
        sparse, population = post.mean("w")[4], post.mean("population_mean")
        # Pooled, the sparse rater sits near the population; alone, near the prior's zero.
        assert float((sparse - population).norm()) < 0.6 * float((alone.mean("w") - population).norm())
        assert bool((post.std("w")[4] > post.std("w")[:4].max(0).values).all())  # least data, widest
        err_pooled.append(float((sparse - W[4]).norm()))
        err_alone.append(float((alone.mean("w") - W[4]).norm()))
    assert sum(err_pooled) < 0.6 * sum(err_alone)


def test_a_rater_id_without_answers_gets_the_population_predictive():
    """Ids {0, 2}: row 1 exists (R = max id + 1), its posterior is a fresh draw from the population."""
    g = torch.Generator().manual_seed(3)
    W = torch.tensor([[1.0, 0.0, 0.5], [0.6, 0.4, 0.5]], dtype=torch.float64)
    X = torch.randn(200, 3, generator=g, dtype=torch.float64)
    data = _raters(W, X, [80, 80], g, ids=[0, 2])
    post = fit(HierarchicalLinearReward(), data, method="laplace", seed=0, num_samples=4000)
    w1 = post.draws("w")[:, 1]
    mu, tau = post.draws("population_mean"), post.draws("population_scale")
    predictive_sd = (mu.var(0) + (tau**2).mean(0)).sqrt()
    assert torch.allclose(w1.mean(0), mu.mean(0), atol=4 * float(predictive_sd.max()) / 4000**0.5)
    assert torch.allclose(w1.std(0), predictive_sd, rtol=0.1)
    assert post.utility(X[:3], rater=1).shape == (4000, 3)
    idata = post.to_inference_data()
    assert idata.posterior["w"].dims == ("chain", "draw", "rater", "feature")
    assert idata.posterior["rater"].values.tolist() == [0, 1, 2]
    for bad in (3, -1, 1.0, "1"):
        with pytest.raises(InputDataError, match="rater"):
            post.utility(X[:3], rater=bad)
        with pytest.raises(InputDataError, match="rater"):
            select_queries(post, X[:10], k=1, rater=bad)


def test_log_likelihood_of_a_rater_the_fit_never_saw_names_the_rater():
    """It failed inside the indexing with an IndexError ("index 5 is out of bounds for dimension 0")."""
    g = torch.Generator().manual_seed(4)
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    X = torch.randn(40, 2, generator=g, dtype=torch.float64)
    data = _raters(W, X, [20, 20], g)
    post = fit(HierarchicalLinearReward(), data, method="laplace", seed=0, num_samples=50)
    assert post.log_likelihood(data.for_rater(1))["comparisons"].shape == (50, 20)
    new = data.append(comparisons=[[0, 1]], comparison_rater=[5])
    with pytest.raises(InputDataError, match=r"rater: expected rater ids in \[0, 1\].*got 5"):
        post.log_likelihood(new)
    assert post.update(new).mean("w").shape == (6, 2)  # update() refits with the new rater


def test_held_out_predictions_per_rater_are_calibrated_and_beat_the_population():
    """Truth drawn from the model's own prior; each rater's held-out answers scored per rater."""
    g = torch.Generator().manual_seed(5)
    d, R = 3, 4
    probs, outcomes, loss_rater, loss_population = [], [], [], []
    for rep in range(15):
        mu = torch.randn(d, generator=g, dtype=torch.float64)
        tau = torch.randn(d, generator=g, dtype=torch.float64).abs()  # HalfNormal(1), the model's prior below
        W = mu + tau * torch.randn(R, d, generator=g, dtype=torch.float64)
        X = torch.randn(200, d, generator=g, dtype=torch.float64)
        post = fit(HierarchicalLinearReward(scale_prior_scale=1.0), _raters(W, X, [30] * R, g), method="laplace",
                   seed=rep)
        for r in range(R):
            held = simulate_comparisons(SimulatedUser(W[r], seed=1000 + 10 * rep + r), X, 50, generator=g).comparisons
            flip = torch.rand(50, generator=g) < 0.5  # predict P(a won) for pairs in a random orientation
            a, b = torch.where(flip, held[:, 1], held[:, 0]), torch.where(flip, held[:, 0], held[:, 1])
            y = (~flip).double()
            p, p_population = (post.preference_probability(X[a], X[b], rater=who) for who in (r, None))
            loss_rater.append(-(y * p.log() + (1 - y) * (1 - p).log()).mean())
            loss_population.append(-(y * p_population.log() + (1 - y) * (1 - p_population).log()).mean())
            probs.append(p)
            outcomes.append(y)
    assert expected_calibration_error(torch.cat(probs), torch.cat(outcomes)) < 0.03
    assert float(torch.stack(loss_rater).mean()) < float(torch.stack(loss_population).mean()) - 0.02


def test_a_sessions_cold_start_prior_is_not_widened_by_plain_laplace(tmp_path):
    """Plain Laplace put population_scale at 2-3x NUTS's; the session's cold start integrates it out."""
    from papa_bayes.session import FeaturePool, PreferenceSession
    from papa_bayes.store import PreferenceStore

    g = torch.Generator().manual_seed(2)
    mu = torch.tensor([1.5, -1.0, 1.0], dtype=torch.float64)
    W = mu + 0.3 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    X = torch.randn(300, 3, generator=g, dtype=torch.float64)
    others = _raters(W, X, [100, 100, 100, 100, 3], g)
    path = tmp_path / "raters.db"
    with PreferenceStore(path) as store:
        store.add_items(X)
        for (a, b), r in zip(others.comparisons.tolist(), others.comparison_rater.tolist()):
            store.record_answer(store.add_query(round=0, rater=r, kind="pair", item_a=a, item_b=b), "first")
    newcomer = SimulatedUser(mu, seed=9)
    with PreferenceSession(path, FeaturePool(X), newcomer, model=HierarchicalLinearReward(), rater=5, seed=0) as s:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prior = s._rater_model
    assert not [w for w in caught if issubclass(w.category, PapaBayesWarning)]
    plain = fit(HierarchicalLinearReward(), others, method="laplace", seed=0).new_rater_model()
    refined = fit(HierarchicalLinearReward(), others, method="laplace", seed=0, refine_steps=20).new_rater_model()
    sd = lambda model: model.prior_scale_tril.pow(2).sum(-1).sqrt()  # noqa: E731
    assert torch.allclose(prior.prior_loc, plain.prior_loc, atol=0.3)  # same population, centred alike
    # Measured prior sds: NUTS (400 draws, seeds 0 and 1) about (0.53, 0.39, 0.29); plain Laplace about
    # (1.0, 0.96, 0.92); refined about (0.68, 0.57, 0.42); the session's (nested Laplace) (0.55, 0.37, 0.33).
    nuts = torch.tensor([0.53, 0.39, 0.29], dtype=torch.float64)
    assert float(sd(plain).min()) > 0.85
    assert float(sd(refined).max()) > 0.6
    assert bool((sd(prior) < 1.2 * nuts).all()) and bool((sd(prior) > nuts / 1.2).all()), sd(prior)


def test_sparse_rater_ids_are_refused_before_the_fit_allocates_them():
    """Rater id 10**7 made the Laplace fit ask torch for 7e15 bytes (a raw RuntimeError)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 2, generator=g, dtype=torch.float64)
    data = PreferenceData(items=X, comparisons=[[0, 1], [2, 3], [4, 5]], comparison_rater=[0, 10**7, 10**7])
    with pytest.raises(InputDataError,
                       match=r"^comparison_rater/rating_rater:.*torch.unique.*largest id 10000000 for 2"):
        fit(HierarchicalLinearReward(), data, method="laplace")
    gaps = PreferenceData(items=X, comparisons=[[0, 1], [2, 3], [4, 5]], comparison_rater=[0, 2, 5])
    assert fit(HierarchicalLinearReward(), gaps, method="laplace", num_samples=8).draws("w").shape == (8, 6, 2)
