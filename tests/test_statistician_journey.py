"""A statistician's journey: fit preference models by every method, read them in ArviZ, check the helpers."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import papa_bayes.inference.laplace as laplace_module
from papa_bayes import HierarchicalLinearReward, InferenceError, InputDataError, LinearReward, PreferenceData, fit
from papa_bayes.models import PyroRewardModel
from papa_bayes.models.likelihoods import comparison_distribution

pytestmark = pytest.mark.usefixtures("one_thread")


def _items(n: int = 12, d: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _comparisons() -> PreferenceData:
    pairs = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [0, 3], [5, 2]]
    return PreferenceData(items=_items(), comparisons=pairs)


class _ScaledReward(PyroRewardModel):
    """``u = s * w . x`` with independent priors; ``reverse`` lists ``priors()`` out of sampling order."""

    dims = {"w": ["feature"]}
    link = "logit"

    def __init__(self, reverse: bool = False) -> None:
        self.reverse = reverse

    def priors(self, data):
        p = {"s": dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.5),
             "w": dist.Normal(torch.zeros(data.num_features, dtype=torch.float64), 1.0).to_event(1)}
        return dict(reversed(list(p.items()))) if self.reverse else p

    def __call__(self, data):
        s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.5))
        w = pyro.sample("w", dist.Normal(torch.zeros(data.num_features, dtype=torch.float64), 1.0).to_event(1))
        c = data.comparisons
        diff = ((data.items[c[:, 0]] - data.items[c[:, 1]]) * w).sum(-1) * s
        with pyro.plate("comparison", data.num_comparisons):
            pyro.sample("comparisons", comparison_distribution(diff, "logit"), obs=self.observed(data)["comparisons"])

    def observation_distributions(self, params, data):
        c = data.comparisons
        diff = (params["w"] @ (data.items[c[:, 0]] - data.items[c[:, 1]]).T) * params["s"].unsqueeze(-1)
        return {"comparisons": comparison_distribution(diff, "logit")}

    def utility(self, params, features, *, rater=None):
        return params["s"].unsqueeze(-1) * (params["w"] @ features.T)


def test_svi_reads_its_guide_by_site_name_not_in_priors_order(monkeypatch):
    """SVI's guide lays sites out in sampling order; a priors() in another order (the site-order guard
    switched off) must give the same posterior, not swapped coordinates."""
    data = _comparisons()
    ordered = fit(_ScaledReward(), data, method="svi", num_steps=50, num_samples=200, seed=0)
    monkeypatch.setattr(laplace_module, "check_model_sites", lambda model, data: None)
    reversed_ = fit(_ScaledReward(reverse=True), data, method="svi", num_steps=50, num_samples=200, seed=0)
    for site in ("s", "w"):
        assert torch.allclose(ordered.draws(site), reversed_.draws(site), atol=1e-10), site


@pytest.mark.parametrize("value", [1e-300, 1e-4, 0.0, -1.0, 1e4, 1e300, float("inf"), float("nan")])
@pytest.mark.parametrize("model", [LinearReward, HierarchicalLinearReward])
def test_rationality_out_of_range_is_refused_by_name(model, value):
    with pytest.raises(InputDataError, match=r"^rationality: expected None \(learned\) or a finite number in "
                                             r"\[0\.001, 1000\]"):
        model(rationality=value)


def test_rationality_at_the_range_ends_fits_finitely():
    data = PreferenceData(items=_items(), comparisons=[[0, 1], [2, 3], [4, 5]], ratings=[[0, 1], [3, -1]])
    for value in (1e-3, 1e3):
        for method in ("laplace", "svi"):
            steps = {"num_steps": 20} if method == "svi" else {}
            post = fit(LinearReward(rationality=value), data, method=method, num_samples=50, seed=0, **steps)
            assert torch.isfinite(post.draws("w")).all() and torch.isfinite(post.sample_stats["lp"]).all()


def _docstring_model() -> type:
    """The custom model sketched in PyroRewardModel's docstring, as a user would copy it."""
    import textwrap

    doc = PyroRewardModel.__doc__
    start = doc.index("class MyReward(PyroRewardModel):")
    end = doc.index("What :func:`~papa_bayes.fit` needs")
    namespace = {"PyroRewardModel": PyroRewardModel, "pyro": pyro, "dist": dist, "torch": torch,
                 "comparison_distribution": comparison_distribution}
    exec(textwrap.dedent("        " + doc[start:end]), namespace)  # noqa: S102 - our own docstring
    return namespace["MyReward"]


def test_the_docstring_custom_model_fits_few_answers_by_every_method():
    """The sketch had s ~ HalfNormal over w ~ N(0, s^2): a funnel whose joint mode is s = 0, so with 8 answers
    Laplace did not converge and failed with torch's ValueError (SVI and NUTS, started from it, failed too)."""
    model = _docstring_model()()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Newton's method did not converge"
        post = fit(model, _comparisons(), method="laplace", num_samples=200, seed=0)
    assert torch.isfinite(post.draws("w")).all() and 0.05 < float(post.mean("s")) < 5
    svi = fit(model, _comparisons(), method="svi", num_steps=30, num_samples=200, seed=0)
    assert torch.isfinite(svi.draws("w")).all()
    idata = post.to_inference_data()
    assert idata.posterior["w"].dims == ("chain", "draw", "feature")
    assert idata.log_likelihood["comparisons"].shape == (1, 200, 8)


class _LinearComparisons(PyroRewardModel):
    """``u = w . x`` under a logit link: the observation part of the two custom models below."""

    dims = {"w": ["feature"]}
    link = "logit"

    def observe(self, data, w):
        c = data.comparisons
        diff = ((data.items[c[:, 0]] - data.items[c[:, 1]]) * w).sum(-1)
        with pyro.plate("comparison", data.num_comparisons):
            pyro.sample("comparisons", comparison_distribution(diff, "logit"), obs=self.observed(data)["comparisons"])

    def observation_distributions(self, params, data):
        c = data.comparisons
        return {"comparisons": comparison_distribution(params["w"] @ (data.items[c[:, 0]] - data.items[c[:, 1]]).T,
                                                       "logit")}

    def utility(self, params, features, *, rater=None):
        return params["w"] @ features.T


class _Funnel(_LinearComparisons):
    """``s ~ HalfNormal(1)``, ``w ~ N(0, s^2 I)``: the joint mode is at s = 0 with few answers."""

    def priors(self, data):
        return {"s": dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)),
                "w": dist.Normal(torch.zeros(data.num_features, dtype=torch.float64), 1.0).to_event(1)}

    def log_prior(self, params, data):
        s = params["s"]
        return (dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)).log_prob(s)
                + dist.Normal(0.0, s.unsqueeze(-1)).log_prob(params["w"]).sum(-1))

    def __call__(self, data):
        s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
        w = pyro.sample("w", dist.Normal(torch.zeros(data.num_features, dtype=torch.float64),
                                         s.unsqueeze(-1)).to_event(1))
        self.observe(data, w)


def test_laplace_draws_a_user_model_cannot_score_raise_inference_error_with_a_hint():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Newton's method did not converge
        with pytest.raises(InferenceError, match=r"_Funnel.log_joint failed at the Laplace draws \(ValueError: "
                                                 r"Expected parameter scale.*funnel.*method='nuts'") as info:
            fit(_Funnel(), _comparisons(), method="laplace", num_samples=200, seed=0)
    assert "\n" not in str(info.value)  # torch's printout of every invalid value left out


@pytest.mark.parametrize("ids", [["alice", "bob"], np.array(["alice", "bob"]), ("0", "1")])
def test_text_rater_ids_are_refused_with_the_way_to_map_them(ids):
    X = _items(4)
    expected = r"expected integer rater ids \(map text ids to 0\.\.R-1 first.*factorize.*got '(alice|0)'"
    with pytest.raises(InputDataError, match=r"^comparison_rater: " + expected):
        PreferenceData(items=X, comparisons=[[0, 1], [2, 3]], comparison_rater=ids)
    with pytest.raises(InputDataError, match=r"^rating_rater: " + expected):
        PreferenceData(items=X, ratings=[[0, 1], [2, -1]], rating_rater=ids)
    data = PreferenceData(items=X, comparisons=[[0, 1]], comparison_rater=[0])
    with pytest.raises(InputDataError, match=r"^comparison_rater: expected integer rater ids .* got 'carol'"):
        data.append(comparisons=[[2, 3]], comparison_rater="carol")
    assert data.append(comparisons=[[2, 3]], comparison_rater=1).comparison_rater.tolist() == [0, 1]


def test_svi_names_a_draw_out_of_support_not_a_broadcasting_mistake():
    """SVI's first step on the funnel drew a scale of 0 (its Laplace start is degenerate): the error blamed the
    model's broadcasting over particles, which was fine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Newton's method did not converge
        with pytest.raises(InferenceError, match=r"failed at SVI's first step: a draw of its guide left a site's "
                                                 r"support .*funnel") as info:
            fit(_Funnel(), _comparisons(), method="svi", num_steps=5, num_samples=10, seed=0)
    assert "particle dim" not in str(info.value) and "\n" not in str(info.value)


class _SimplexWeights(_LinearComparisons):
    """``u = w . x`` with ``w ~ Dirichlet(1, ..., 1)``: a site of `d` values with `d - 1` unconstrained coordinates."""

    def priors(self, data):
        return {"w": dist.Dirichlet(torch.ones(data.num_features, dtype=torch.float64))}

    def __call__(self, data):
        w = pyro.sample("w", dist.Dirichlet(torch.ones(data.num_features, dtype=torch.float64)))
        self.observe(data, w)


def test_a_simplex_site_fits_by_laplace_and_svi():
    """A Dirichlet site's unconstrained coordinates are one fewer than its values (stick-breaking): the flat
    parameter vector was laid out by the constrained shape, so every fit failed with torch's "shape '[3]' is
    invalid for input of size 2"."""
    data = PreferenceData(items=_items(12, 3), comparisons=[[0, 1], [2, 3], [4, 5], [6, 7]])
    post = fit(_SimplexWeights(), data, method="laplace", refine_steps=20, seed=0)
    assert torch.allclose(post.draws("w").sum(-1), torch.ones(1000, dtype=torch.float64))
    # NUTS (2 chains x 300 draws, seed 0) gave the posterior mean (0.308, 0.395, 0.298).
    assert torch.allclose(post.mean("w"), torch.tensor([0.308, 0.395, 0.298], dtype=torch.float64), atol=0.02)
    svi = fit(_SimplexWeights(), data, method="svi", num_steps=30, num_samples=100, seed=0)
    assert torch.allclose(svi.draws("w").sum(-1), torch.ones(100, dtype=torch.float64))
    idata = svi.to_inference_data()
    assert idata.posterior["w"].dims == ("chain", "draw", "feature") and idata.posterior["w"].shape == (1, 100, 3)
    updated = post.update(data.append(comparisons=[[8, 9]]))
    assert torch.isfinite(updated.draws("w")).all()


def test_arviz_contract_of_flat_and_hierarchical_fits():
    """Every dim has a coordinate, every log-likelihood has its twin in observed_data, LOO counts the answers."""
    X = _items(12, 2)
    data = PreferenceData(items=X, comparisons=[[0, 1], [3, 2], [4, 5], [7, 6], [8, 9]],
                          ties=[False, True, False, False, False], ratings=[[1, 1], [2, -1], [10, 1]],
                          comparison_rater=[0, 2, 0, 2, 1], rating_rater=[1, 2, 0], feature_names=["hue", "size"])
    fits = {name: fit(model, data, seed=0, num_samples=200).to_inference_data()
            for name, model in (("flat", LinearReward(ties=True)), ("raters", HierarchicalLinearReward(ties=True)))}
    for name, idata in fits.items():
        for group in idata.groups():
            ds = idata[group]
            for var in ds.data_vars:
                assert all(dim in ds.coords for dim in ds[var].dims), (name, group, var)
        assert list(idata.posterior["w"].coords["feature"].values) == ["hue", "size"]
        for var in ("comparisons", "ratings"):
            assert idata.log_likelihood[var].dims[2:] == idata.observed_data[var].dims
            assert idata.posterior_predictive[var].dims[2:] == idata.observed_data[var].dims
        assert az.loo(idata, var_name="comparisons").n_data_points == 5
        assert az.waic(idata, var_name="ratings").n_data_points == 3
    assert fits["raters"].posterior["w"].dims == ("chain", "draw", "rater", "feature")
    assert fits["raters"].posterior["w"].coords["rater"].values.tolist() == [0, 1, 2]
    # Oriented by item index: [3, 2] is a tie (2), [7, 6] was won by the second of the sorted pair (1).
    assert fits["flat"].observed_data["comparisons"].values.tolist() == [0, 2, 0, 1, 0]
    table = az.compare(fits, var_name="comparisons")
    assert sorted(table.index) == ["flat", "raters"] and np.isfinite(table["elpd_loo"]).all()
