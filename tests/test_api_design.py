"""The public API against DESIGN.md: the names it promises exist, and the central types keep their contract.

DESIGN.md section 1 (public names with explicit ``__all__``, the error classes),
section 2 (``PreferenceData``, ``RewardPosterior``) and section 7 (candidate
sources of the online loop). Deeper tests of each behaviour live beside their module.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import warnings

import arviz as az
import pytest
import torch

import papa_bayes
from papa_bayes import InputDataError, LinearReward, PreferenceData, RewardPosterior, fit
from papa_bayes.sources import FeaturePool

# every module but the ``python -m papa_bayes`` script, which only runs the CLI
MODULES = ["papa_bayes"] + [info.name for info in pkgutil.walk_packages(papa_bayes.__path__, "papa_bayes.")
                            if not info.name.endswith(".__main__")]


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_is_importable_and_listed_once(name):
    module = importlib.import_module(name)
    names = module.__all__
    assert [n for n in names if not hasattr(module, n)] == []
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_package_exports_every_error_and_warning_class():
    # a user who catches papa_bayes.ModelError can catch the store's and inference's errors the same way
    from papa_bayes import exceptions

    assert set(exceptions.__all__) <= set(papa_bayes.__all__)
    for name in exceptions.__all__:
        assert getattr(papa_bayes, name) is getattr(exceptions, name)


def test_the_error_classes_design_names():
    assert issubclass(papa_bayes.InputDataError, papa_bayes.PapaBayesError)
    assert issubclass(papa_bayes.StoreError, papa_bayes.PapaBayesError)
    assert issubclass(papa_bayes.InferenceError, papa_bayes.PapaBayesError)
    assert issubclass(papa_bayes.PapaBayesWarning, Warning)


def test_preference_data_is_a_frozen_dataclass_of_tensors():
    fields = [f.name for f in dataclasses.fields(PreferenceData)]
    # DESIGN's one `rater` field is two here: comparisons (`m`) and ratings (`k`) each carry their ids
    assert fields == ["items", "comparisons", "ties", "ratings", "comparison_rater", "rating_rater", "feature_names"]
    data = PreferenceData(items=torch.randn(4, 2, dtype=torch.float32), comparisons=[[0, 1]], ratings=[[2, -1]])
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.items = torch.zeros(4, 2)
    assert data.items.dtype == torch.float64
    assert data.comparisons.dtype == torch.long and data.comparisons.shape == (1, 2)
    assert data.ties.dtype == torch.bool and data.ties.shape == (1,)
    longer = data.append(comparisons=[[2, 3]])
    assert longer is not data and data.num_comparisons == 1 and longer.num_comparisons == 2
    assert PreferenceData.from_json(longer.to_json()) == longer


def test_a_posterior_keeps_designs_contract():
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    data = PreferenceData(items=items, comparisons=[[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]], ratings=[[10, 1]])
    post = fit(LinearReward(), data, method="laplace", seed=0)
    assert isinstance(post, RewardPosterior)
    X = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    u = post.utility(X)
    assert u.shape == (post.num_draws, 5)  # `s x n`
    assert torch.isfinite(torch.autograd.grad(u.sum(), X)[0]).all()  # guidance needs the gradient
    a, b = torch.randn(2, 4, 3, dtype=torch.float64)
    assert post.preference_probability(a, b).shape == (4,)
    assert isinstance(post.update(data.append(comparisons=[[1, 2]])), RewardPosterior)
    idata = post.to_inference_data()
    assert {"posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data",
            "constant_data"} <= set(idata.groups())
    assert "lp" in idata.sample_stats.data_vars and "diverging" not in idata.sample_stats  # Laplace: no divergences
    assert idata.log_likelihood["comparisons"].dims == ("chain", "draw", "comparison")
    assert idata.constant_data["items"].dims == ("item", "feature")
    with warnings.catch_warnings():  # five comparisons: Pareto k is high, what is tested is that loo runs
        warnings.simplefilter("ignore", UserWarning)
        assert az.loo(idata, var_name="comparisons") is not None
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.models.model import Model

    model = post.as_botorch_model()
    assert isinstance(model, Model)
    assert qLogExpectedImprovement(model, best_f=0.0)(torch.randn(6, 2, 3, dtype=torch.float64)).shape == (6,)


def test_fit_takes_designs_methods():
    from papa_bayes.inference import METHODS

    assert set(METHODS) == {"nuts", "svi", "laplace"}
    assert inspect.signature(fit).parameters["method"].kind is inspect.Parameter.KEYWORD_ONLY


# -- FeaturePool: a CandidateSource as DiffusionCandidates is -------------------------------


def _pool_and_posterior():
    items = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    posterior = fit(LinearReward(), PreferenceData(items=items, comparisons=[[0, 1], [2, 3]]), seed=0)
    return FeaturePool(items), posterior


@pytest.mark.parametrize("n", [-3, 0, 2.5, True, "4"])
def test_feature_pool_refuses_a_bad_number_of_candidates(n):
    pool, posterior = _pool_and_posterior()
    with pytest.raises(InputDataError, match="^n:"):  # -3 gave 8 candidates, 0 an empty pool
        pool.candidates(posterior, n, exploration=0.5, generator=torch.Generator())


@pytest.mark.parametrize("exploration", [-1.0, 1.5, float("nan"), "half"])
def test_feature_pool_refuses_an_exploration_share_outside_0_1(exploration):
    pool, posterior = _pool_and_posterior()
    with pytest.raises(InputDataError, match="^exploration:"):  # 1.5 gave 6 candidates for 4, -1.0 gave 10
        pool.candidates(posterior, 4, exploration=exploration, generator=torch.Generator())


def test_feature_pool_draws_from_the_generator_it_is_given():
    pool, posterior = _pool_and_posterior()
    with pytest.raises(InputDataError, match="^generator:"):  # None drew from torch's global RNG
        pool.candidates(posterior, 4, exploration=0.5, generator=None)
    first = pool.candidates(posterior, 4, exploration=0.5, generator=torch.Generator().manual_seed(3))
    again = pool.candidates(posterior, 4, exploration=0.5, generator=torch.Generator().manual_seed(3))
    assert len(first) == 4 and torch.equal(first.indices, again.indices)


@pytest.mark.parametrize("n", [-1, 0, 11, True, 2.5])
def test_feature_pool_recommends_between_one_and_all_of_its_items(n):
    pool, posterior = _pool_and_posterior()
    with pytest.raises(InputDataError, match="^n:"):  # -1 recommended 9 items, True one
        pool.recommend(posterior, n, generator=torch.Generator())
    assert len(pool.recommend(posterior, 10, generator=torch.Generator())) == 10


def test_feature_pool_copies_its_items():
    items = torch.randn(6, 2, dtype=torch.float64)
    pool = FeaturePool(items)
    digest = pool.config()["items_sha256"]
    items[0, 0] = 99.0  # the caller edits their array after the session began
    assert pool.items[0, 0] != 99.0
    assert pool.config()["items_sha256"] == digest
