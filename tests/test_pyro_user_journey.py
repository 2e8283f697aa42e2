"""A Pyro user's own reward model through papa_bayes: the contract of ``PyroRewardModel``.

Custom models are written as a Pyro user would; the tests check that fit, ArviZ and the
acquisition read them right, and that a model breaking the contract is told so by name.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.exceptions import ModelError
from papa_bayes.models import PyroRewardModel
from papa_bayes.models.likelihoods import comparison_distribution
from papa_bayes.users import SimulatedUser, simulate_comparisons

pytestmark = pytest.mark.usefixtures("one_thread")


def _f64(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


class ScaleMixtureReward(PyroRewardModel):
    """``u(x) = w . x``, ``w ~ N(0, s^2 I)``, ``s ~ HalfNormal(1)``: a Pyro user's own model."""

    dims = {"w": ["feature"]}
    link = "logit"

    def priors(self, data):
        d = data.num_features
        return {"s": dist.HalfNormal(_f64(1.0)), "w": dist.Normal(torch.zeros(d, dtype=torch.float64), 1.0).to_event(1)}

    def log_prior(self, params, data):
        s = params["s"]
        return dist.HalfNormal(_f64(1.0)).log_prob(s) + dist.Normal(0.0, s.unsqueeze(-1)).log_prob(params["w"]).sum(-1)

    def __call__(self, data):
        s = pyro.sample("s", dist.HalfNormal(_f64(1.0)))
        # s is `P x 1` under SVI's vectorized particles: its scale broadcasts as `P x 1 x 1`.
        w = pyro.sample("w", dist.Normal(torch.zeros(data.num_features, dtype=torch.float64),
                                         s.unsqueeze(-1)).to_event(1))
        X, c = data.items, data.comparisons
        diff = ((X[c[:, 0]] - X[c[:, 1]]) * w).sum(-1)
        with pyro.plate("comparison", data.num_comparisons):
            pyro.sample("comparisons", comparison_distribution(diff, "logit"), obs=self.observed(data)["comparisons"])

    def observation_distributions(self, params, data):
        X, c = data.items, data.comparisons
        return {"comparisons": comparison_distribution(params["w"] @ (X[c[:, 0]] - X[c[:, 1]]).T, "logit")}

    def utility(self, params, features, *, rater=None):
        return params["w"] @ features.T


def _gamma() -> dist.Gamma:
    return dist.Gamma(_f64(4.0), _f64(2.0))


class GammaRationalityReward(PyroRewardModel):
    """``u(x) = rationality * w . x`` with a Gamma prior on the rationality (not LogNormal)."""

    dims = {"w": ["feature"]}
    link = "logit"

    def priors(self, data):
        return {"rationality": _gamma(),
                "w": dist.Normal(torch.zeros(data.num_features, dtype=torch.float64), 1.0).to_event(1)}

    def __call__(self, data):
        b = pyro.sample("rationality", _gamma())
        w = pyro.sample("w", dist.Normal(torch.zeros(data.num_features, dtype=torch.float64), 1.0).to_event(1))
        X, c = data.items, data.comparisons
        diff = b * ((X[c[:, 0]] - X[c[:, 1]]) * w).sum(-1)  # `m`, or `P x m` under SVI's particles
        with pyro.plate("comparison", data.num_comparisons):
            pyro.sample("comparisons", comparison_distribution(diff, "logit"), obs=self.observed(data)["comparisons"])

    def observation_distributions(self, params, data):
        X, c = data.items, data.comparisons
        diff = params["rationality"].unsqueeze(-1) * (params["w"] @ (X[c[:, 0]] - X[c[:, 1]]).T)
        return {"comparisons": comparison_distribution(diff, "logit")}

    def utility(self, params, features, *, rater=None):
        return params["rationality"].unsqueeze(-1) * (params["w"] @ features.T)


@pytest.fixture(scope="module")
def data() -> PreferenceData:
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    return simulate_comparisons(SimulatedUser([1.5, -0.5], seed=0), items, 60, generator=gen)


def test_custom_model_without_link_is_told_before_fitting(data):
    class NoLink(ScaleMixtureReward):
        link = None

    with pytest.raises(ModelError, match="link"):
        fit(NoLink(), data, seed=0, num_samples=50)
    typo = ScaleMixtureReward()
    typo.link = "Probit"
    with pytest.raises(ModelError, match="link"):
        fit(typo, data, seed=0, num_samples=50)


def test_custom_model_without_link_attribute(data):
    class Bare(ScaleMixtureReward):
        pass

    del ScaleMixtureReward.link  # restored below: a model written without the attribute at all
    try:
        with pytest.raises(ModelError, match="link"):
            fit(Bare(), data, seed=0, num_samples=50)
    finally:
        ScaleMixtureReward.link = "logit"


def test_priors_out_of_the_models_sampling_order_are_refused(data):
    """SVI unpacks its guide (Pyro's sampling order) by ``priors()``' order: a different order mixed the sites
    up without a word (w = [0.11, 1.33] and s = 0.45 for w = [1.33, -0.83] and s = 1.19)."""

    class Swapped(ScaleMixtureReward):
        def priors(self, data):
            p = super().priors(data)
            return {"w": p["w"], "s": p["s"]}

    for method in ("laplace", "svi"):
        with pytest.raises(ModelError, match="order"):
            fit(Swapped(), data, method=method, seed=0, num_samples=50, num_steps=5 if method == "svi" else None)


def test_priors_with_the_wrong_shape_or_support_are_refused(data):
    class WrongShape(ScaleMixtureReward):
        def priors(self, data):
            return {**super().priors(data), "w": dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1)}

    class WrongSupport(ScaleMixtureReward):
        def priors(self, data):
            return {**super().priors(data), "s": dist.Normal(_f64(0.0), 1.0)}

    class MissingSite(ScaleMixtureReward):
        def priors(self, data):
            return {"w": super().priors(data)["w"]}

    with pytest.raises(ModelError, match=r"'w'.*\(2,\).*\(3,\)"):
        fit(WrongShape(), data, seed=0)
    with pytest.raises(ModelError, match="support"):
        fit(WrongSupport(), data, seed=0)
    with pytest.raises(ModelError, match="'s'"):
        fit(MissingSite(), data, seed=0)


def test_custom_model_through_every_method_agrees_with_nuts(data):
    nuts = fit(ScaleMixtureReward(), data, method="nuts", seed=0, num_samples=300, warmup_steps=200,
               progress_bar=False)
    svi = fit(ScaleMixtureReward(), data, method="svi", seed=0, num_samples=1000)
    laplace = fit(ScaleMixtureReward(), data, seed=0, num_samples=1000)
    for post in (svi, laplace):
        assert torch.allclose(post.mean("w"), nuts.mean("w"), atol=0.2)
    updated = laplace.update(data.append(comparisons=[[3, 7]]))
    assert updated.num_draws == 1000


def test_a_learned_rationality_with_a_gamma_prior_fits(data):
    """A site named ``rationality`` is integrated on a grid by Laplace; it needed a LogNormal prior, so a Gamma one
    failed every method (NUTS and SVI start from Laplace) with an InferenceError."""
    laplace = fit(GammaRationalityReward(), data, seed=0, num_samples=2000)
    nuts = fit(GammaRationalityReward(), data, method="nuts", seed=0, num_samples=300, warmup_steps=200,
               progress_bar=False)
    assert abs(float(laplace.mean("rationality") - nuts.mean("rationality"))) < 0.35
    assert torch.allclose(laplace.mean("w"), nuts.mean("w"), atol=0.25)


def test_builtin_models_pass_the_site_check():
    X = torch.randn(8, 2, dtype=torch.float64)
    data = PreferenceData(items=X, comparisons=[[1, 0], [2, 1], [4, 5]], ties=[False, True, False],
                          ratings=[[0, 1], [3, -1]], comparison_rater=[0, 1, 2], rating_rater=[0, 2])
    from papa_bayes import HierarchicalLinearReward

    for model in (LinearReward(ties=True), LinearReward(rationality=2.0, link="probit", ties=True),
                  HierarchicalLinearReward(ties=True, rationality=None)):
        fit(model, data, seed=0, num_samples=20)


def test_a_model_that_does_not_broadcast_over_svi_particles_is_told_how(data):
    """Pyro's 'Model and guide shapes disagree at site' was all a user got from SVI for an ordinary-looking model."""

    class Unbroadcast(ScaleMixtureReward):
        def __call__(self, data):
            s = pyro.sample("s", dist.HalfNormal(_f64(1.0)))
            w = pyro.sample("w", dist.Normal(torch.zeros(data.num_features, dtype=torch.float64), s).to_event(1))
            X, c = data.items, data.comparisons
            diff = ((X[c[:, 0]] - X[c[:, 1]]) * w).sum(-1)
            with pyro.plate("comparison", data.num_comparisons):
                pyro.sample("comparisons", comparison_distribution(diff, "logit"),
                            obs=self.observed(data)["comparisons"])

    fit(Unbroadcast(), data, seed=0, num_samples=20)  # Laplace never runs the Pyro model's particles
    with pytest.raises(ModelError, match=r"vectorized particles.*`P x 1 x d`.*Pyro said"):
        fit(Unbroadcast(), data, method="svi", seed=0, num_samples=20, num_steps=3)
