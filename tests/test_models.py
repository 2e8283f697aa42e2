"""The Pyro models and their pure-torch twins (used by Laplace and ArviZ) agree."""

from __future__ import annotations

import pytest
import torch
from pyro.infer.util import torch_item
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from papa_bayes import HierarchicalLinearReward, LinearReward, ModelError, PreferenceData
from papa_bayes.models.likelihoods import comparison_log_probs


def _data(ties=False, ratings=True, raters=False):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 3, generator=g, dtype=torch.float64)
    comps = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]])
    kw = dict(items=X, comparisons=comps)
    if ties:
        kw["ties"] = [False, True, False, True, False]
    if ratings:
        kw["ratings"] = [[10, 1], [11, -1], [0, 1]]
    if raters:
        kw["comparison_rater"] = [0, 1, 2, 0, 1]
        kw["rating_rater"] = [2, 1, 0] if ratings else None
    return PreferenceData(**kw)


CASES = [
    (LinearReward(), dict()),
    (LinearReward(link="probit"), dict()),
    (LinearReward(ties=True), dict(ties=True)),
    (LinearReward(link="probit", ties=True), dict(ties=True)),
    (LinearReward(rationality=2.0), dict()),
    (HierarchicalLinearReward(), dict(raters=True)),
    (HierarchicalLinearReward(link="probit", ties=True), dict(raters=True, ties=True)),
]


@pytest.mark.parametrize("model, kw", CASES, ids=[f"{type(m).__name__}-{m.link}-{m.ties}" for m, _ in CASES])
def test_pyro_log_density_equals_log_joint(model, kw):
    data = _data(**kw)
    trace = poutine.trace(model).get_trace(data)
    params = {k: trace.nodes[k]["value"].unsqueeze(0) for k in trace.stochastic_nodes if not site_is_subsample(trace.nodes[k])}
    assert set(params) == set(model.priors(data))
    assert list(params) == list(model.priors(data))  # same order (SVI guides rely on it)
    ours = float(model.log_joint(params, data)[0])
    assert ours == pytest.approx(torch_item(trace.log_prob_sum()), rel=1e-10, abs=1e-10)


def test_ties_need_a_tie_model():
    with pytest.raises(ModelError, match="ties=True"):
        LinearReward().log_joint({"rationality": torch.ones(1), "scaled_w": torch.zeros(1, 3)}, _data(ties=True, ratings=False))


def test_outcome_probabilities_sum_to_one_and_tie_grows_with_strength():
    diff = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for link in ("logit", "probit"):
        p_small = comparison_log_probs(diff, link, torch.tensor(0.1, dtype=torch.float64)).exp()
        p_big = comparison_log_probs(diff, link, torch.tensor(1.5, dtype=torch.float64)).exp()
        assert torch.allclose(p_small.sum(-1), torch.ones(7, dtype=torch.float64))
        assert torch.all(p_big[:, 2] > p_small[:, 2])
        strict = comparison_log_probs(diff, link).exp()
        assert torch.all(strict[1:, 0] > strict[:-1, 0])  # monotone in the difference


def test_bad_model_options():
    from papa_bayes import InputDataError

    with pytest.raises(InputDataError, match=r"link: expected one of \('logit', 'probit'\), got 'cauchit'"):
        LinearReward(link="cauchit")
    with pytest.raises(InputDataError, match="link: .* got None"):
        LinearReward(link=None)
    with pytest.raises(InputDataError, match="prior_scale"):
        LinearReward(prior_scale=-1.0)
    with pytest.raises(InputDataError, match="rationality"):
        LinearReward(rationality=float("nan"))
    for kwargs, field in (({"rationality": "1"}, "rationality"), ({"rationality": True}, "rationality"),
                          ({"rationality_prior": ("a", 1.0)}, "rationality_prior"),
                          ({"rationality_prior": 5}, "rationality_prior"),
                          ({"ties": "no"}, "ties"),  # bool("no") is True
                          ({"prior_loc": "abc"}, "prior_loc"), ({"prior_loc": torch.zeros(2, 2)}, "prior_loc")):
        with pytest.raises(InputDataError, match=field):
            LinearReward(**kwargs)
    with pytest.raises(InputDataError, match="ties"):
        HierarchicalLinearReward(ties="yes")
    # A prior of another dimension than the data's features: named before any fitting starts.
    for kwargs, field in (({"prior_loc": torch.zeros(2)}, "prior_loc"),
                          ({"prior_scale_tril": torch.eye(2, dtype=torch.float64)}, "prior_scale_tril")):
        with pytest.raises(InputDataError, match=field):
            LinearReward(**kwargs).priors(_data())


def test_linear_utility_pools_raters_and_checks_the_rater_id():
    from papa_bayes import InputDataError

    X = torch.randn(4, 3, dtype=torch.float64)
    flat = LinearReward()
    params = {"scaled_w": torch.randn(5, 3, dtype=torch.float64)}
    pooled = flat.utility(params, X)
    for rater in (0, 7, torch.tensor(2)):  # one w for every rater
        assert torch.equal(flat.utility(params, X, rater=rater), pooled)
    hier = HierarchicalLinearReward()
    hparams = {"population_mean": torch.randn(5, 3, dtype=torch.float64),
               "population_scale": torch.rand(5, 3, dtype=torch.float64),
               "rater_offset": torch.randn(5, 2, 3, dtype=torch.float64)}
    assert hier.utility(hparams, X, rater=1).shape == (5, 4)
    for bad in (-1, "a", 1.5, True):
        with pytest.raises(InputDataError, match="rater"):
            flat.utility(params, X, rater=bad)
        with pytest.raises(InputDataError, match="rater"):
            hier.utility(hparams, X, rater=bad)


def test_hierarchical_model_under_vectorized_particles_keeps_particles_apart():
    """Trace_ELBO(vectorize_particles=True) wraps the model in a particle plate: each
    particle's population mean must meet only its own rater offsets (P x m answers)."""
    import pyro

    data = _data(ratings=False, raters=True)
    model = HierarchicalLinearReward()
    with pyro.plate("particles", 4, dim=-2):
        trace = poutine.trace(model).get_trace(data)
    assert tuple(trace.nodes["comparisons"]["fn"].batch_shape) == (4, data.num_comparisons)
    mu, tau, z = (trace.nodes[k]["value"] for k in ("population_mean", "population_scale", "rater_offset"))
    w = mu + tau * z  # `4 x R x d`, particle by particle
    X, c, r = data.items, data.comparisons, data.comparison_rater
    diff = (w[:, r, :] * (X[c[:, 0]] - X[c[:, 1]])).sum(-1)  # `4 x m`, winner first
    assert torch.allclose(trace.nodes["comparisons"]["fn"].log_prob(trace.nodes["comparisons"]["value"]),
                          torch.nn.functional.logsigmoid(diff))


def test_hierarchical_model_options_are_checked():
    from papa_bayes import InputDataError

    for kwargs, field in (({"rationality": -1.0}, "rationality"), ({"rationality": 0.0}, "rationality"),
                          ({"population_prior_scale": -1.0}, "population_prior_scale"),
                          ({"scale_prior_scale": 0.0}, "scale_prior_scale"),
                          ({"threshold_prior_scale": float("nan")}, "threshold_prior_scale"),
                          ({"tie_prior": (0.0, -1.0)}, "tie_prior")):
        with pytest.raises(InputDataError, match=field):
            HierarchicalLinearReward(**kwargs)


def test_linear_prior_options_are_checked_when_built():
    from papa_bayes import InputDataError

    upper = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    for kwargs, field in (({"prior_loc": torch.tensor([0.0, float("nan")])}, "prior_loc"),
                          ({"prior_scale_tril": upper}, "prior_scale_tril"),
                          ({"prior_scale_tril": -torch.eye(2, dtype=torch.float64)}, "prior_scale_tril"),
                          ({"threshold_prior_scale": -1.0}, "threshold_prior_scale"),
                          ({"rationality_prior": (0.0, 0.0)}, "rationality_prior")):
        with pytest.raises(InputDataError, match=field):
            LinearReward(**kwargs)
    assert LinearReward(prior_scale_tril=torch.linalg.cholesky(torch.eye(2, dtype=torch.float64) * 2)).prior_scale_tril.shape == (2, 2)


def test_tie_models_and_links_in_closed_form():
    """Davidson (logit): Bradley-Terry odds and P(tie) = nu sqrt(p1 p2); Glenn-David (probit):
    Phi(d - tau), Phi(-d - tau); the probit link is Phi itself."""
    import math

    from papa_bayes.models.likelihoods import log_cdf

    diff = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for nu in (0.2, 1.0, 2.5):
        p = comparison_log_probs(diff, "logit", torch.tensor(nu, dtype=torch.float64)).exp()
        assert torch.allclose(p[:, 0] / p[:, 1], diff.exp(), rtol=1e-10)
        assert torch.allclose(p[:, 2], nu * (p[:, 0] * p[:, 1]).sqrt(), rtol=1e-10)
    strict = comparison_log_probs(diff, "logit", torch.tensor(1e-12, dtype=torch.float64)).exp()
    assert torch.allclose(strict[:, 0], torch.sigmoid(diff), atol=1e-9)
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    for tau in (0.1, 0.7):
        p = comparison_log_probs(diff, "probit", torch.tensor(tau, dtype=torch.float64)).exp()
        assert torch.allclose(p[:, 0], phi(diff - tau), atol=1e-12)
        assert torch.allclose(p[:, 1], phi(-diff - tau), atol=1e-12)
    assert torch.allclose(log_cdf(diff, "probit").exp(), phi(diff), atol=1e-12)
    assert torch.allclose(log_cdf(diff, "logit").exp(), torch.sigmoid(diff), atol=1e-12)
    assert math.isfinite(float(log_cdf(torch.tensor(-40.0, dtype=torch.float64), "probit")))  # stable far in the tail


@pytest.mark.parametrize("model, kw", [CASES[2], CASES[3], CASES[4], CASES[6]],
                         ids=["logit-ties", "probit-ties", "fixed-rationality", "hierarchical-ties"])
def test_predictive_replicates_answers_under_uncondition(model, kw):
    """Prior and posterior predictive checks the Pyro way: ``Predictive`` of the
    unconditioned model samples the observed sites (Pyro distributions are callable)."""
    from pyro.infer import Predictive

    from papa_bayes import fit

    data = _data(**kw)
    free = poutine.uncondition(model)
    prior = Predictive(free, num_samples=30)(data)
    post = fit(model, data, method="laplace", num_samples=30)
    posterior = Predictive(free, posterior_samples=post.params)(data)
    for pred in (prior, posterior):
        assert tuple(pred["comparisons"].shape) == (30, data.num_comparisons)
        assert tuple(pred["ratings"].shape) == (30, data.num_ratings)
        assert set(pred["comparisons"].unique().tolist()) <= {0, 1, 2}  # first wins, second wins, tie
        assert len(pred["comparisons"].unique()) > 1  # replicated, not the observed answers copied


@pytest.mark.parametrize("model, kw", [CASES[0], CASES[3], CASES[4], CASES[6]],
                         ids=["logit", "probit-ties", "fixed-rationality", "hierarchical-ties"])
def test_vectorized_predictive_gives_the_pointwise_log_likelihood(model, kw):
    """``Predictive(parallel=True)`` pads `s x d` draws to `s x d` (the event dim counted as a
    plate); ``az.from_pyro`` builds its log_likelihood group from that vectorized trace."""
    from pyro.infer import Predictive

    from papa_bayes import fit

    data = _data(**kw)
    post = fit(model, data, method="laplace", num_samples=20)
    trace = Predictive(model, posterior_samples=post.params).get_vectorized_trace(data)
    ours = model.log_likelihood(post.params, data)
    for site in ("comparisons", "ratings"):
        node = trace.nodes[site]
        assert torch.allclose(node["fn"].log_prob(node["value"]), ours[site], rtol=1e-10, atol=1e-12)
    replicated = Predictive(poutine.uncondition(model), posterior_samples=post.params, parallel=True)(data)
    assert tuple(replicated["comparisons"].shape) == (20, data.num_comparisons)


@pytest.mark.parametrize("model", [LinearReward(), HierarchicalLinearReward()], ids=["linear", "hierarchical"])
def test_model_called_on_other_than_preference_data_names_it(model):
    """``model(data)`` is public Pyro: features or a tuple in place of the data say so."""
    from papa_bayes import InputDataError

    data = _data()
    for bad in (data.items, (data.items, data.comparisons), None):
        with pytest.raises(InputDataError, match="data: expected a PreferenceData"):
            model(bad)
        with pytest.raises(InputDataError, match="data"):
            model.priors(bad)


def test_input_errors_raised_inside_a_traced_model_stay_input_errors():
    """Pyro's trace re-raises with its shapes added, as type(err)(message): that was a TypeError (two arguments missing)."""
    import pickle

    from papa_bayes import InputDataError

    with pytest.raises(InputDataError, match="prior_loc"):
        poutine.trace(LinearReward(prior_loc=torch.zeros(2))).get_trace(_data())
    err = InputDataError("comparisons", "shape `m x 2`", (5, 3))
    back = pickle.loads(pickle.dumps(err))
    assert (back.field, back.expected, back.actual, str(back)) == (err.field, err.expected, err.actual, str(err))
    rebuilt = InputDataError(str(err) + "\nTrace Shapes: ...")
    assert rebuilt.field == "comparisons" and str(rebuilt).startswith("comparisons: expected")
    assert str(pickle.loads(pickle.dumps(rebuilt))) == str(rebuilt)


def test_python_float_options_are_read_in_double_precision():
    """check_real_tensor read Python floats through float32 (0.1 became 0.10000000149) before casting."""
    model = LinearReward(prior_loc=[0.1, 0.2])
    assert model.prior_loc.tolist() == [0.1, 0.2] and model.prior_loc.dtype == torch.float64


def test_prior_tensors_are_copied_not_shared_with_the_caller():
    """prior_loc and prior_scale_tril kept the caller's float64 tensors: editing them afterwards
    changed the model's prior (and bypassed the checks, e.g. a negative diagonal)."""
    loc = torch.tensor([0.5, -0.5], dtype=torch.float64)
    tril = torch.eye(2, dtype=torch.float64) * 2.0
    model = LinearReward(prior_loc=loc, prior_scale_tril=tril)
    loc.fill_(9.0)
    tril.mul_(-1.0)
    assert model.prior_loc.tolist() == [0.5, -0.5]
    assert model.prior_scale_tril.tolist() == [[2.0, 0.0], [0.0, 2.0]]
    prior = model._scaled_w_prior(2, torch.ones((), dtype=torch.float64))  # what log_prior and the Pyro model use
    assert prior.mean.tolist() == [0.5, -0.5] and prior.scale_tril.tolist() == [[2.0, 0.0], [0.0, 2.0]]
