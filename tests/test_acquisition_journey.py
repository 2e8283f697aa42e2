"""A user's path through acquisition: distinct continuous questions under a linear reward, the posterior's
own link, feature widths of plain BoTorch models, and BoTorch options the draws model cannot honour."""

from __future__ import annotations

import warnings

import pytest
import torch
from botorch.models import PairwiseGP

from papa_bayes import LinearReward, fit
from papa_bayes.acquisition import (
    ExpectedUtilityOfBestOption,
    HoulsbyInformationGain,
    PairwiseInformationGain,
    RatingInformationGain,
    UtilityDifferenceVariance,
    optimize_queries,
)
from papa_bayes.exceptions import InputDataError, ModelError, PapaBayesWarning
from papa_bayes.users import SimulatedUser, simulate_comparisons


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def journey():
    """The reviewer's setting: 12 answers about a 100-item pool, a Laplace fit of a linear reward."""
    pool = torch.randn(100, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser([1.0, -0.5, 0.3]), pool, 12, generator=torch.Generator().manual_seed(0))
    post = fit(LinearReward(), data, method="laplace")
    bounds = torch.tensor([[-2.0] * 3, [2.0] * 3], dtype=torch.float64)
    return pool, data, post, bounds


def _same_question(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    """Under a linear utility a pair asks about a - b: the same difference up to sign is the same question."""
    da, db = a[0] - a[1], b[0] - b[1]
    return min(float((da - db).abs().max()), float((da + db).abs().max())) <= tol


@pytest.mark.parametrize("strategy", ["eig", "argmax"])
def test_optimize_queries_linear_posterior_gives_distinct_questions(journey, strategy):
    """Old code returned the same question three times (same a - b, or its swap) with k=3."""
    pool, _, post, bounds = journey
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, values = optimize_queries(post, bounds, strategy=strategy, k=3, reference_pool=pool)
    k = X.shape[0]
    assert X.shape[1:] == (2, 3) and values.shape == (k,)
    for i in range(k):
        for j in range(i):
            assert not _same_question(X[i], X[j]), (strategy, i, j, (X[:, 0] - X[:, 1]).tolist())
    if k < 3:  # fewer distinct questions exist: said so, naming why
        messages = [str(w.message) for w in caught if issubclass(w.category, PapaBayesWarning)]
        assert any("distinct" in m and "a - b" in m for m in messages), messages


def test_optimize_queries_more_restarts_find_more_linear_questions(journey):
    """With many restarts the k questions are distinct differences, best first."""
    _, _, post, bounds = journey
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PapaBayesWarning)
        X, values = optimize_queries(post, bounds, strategy="uncertainty", k=2, num_restarts=16, raw_samples=256)
    assert X.shape[0] >= 1
    assert bool((values[:-1] >= values[1:]).all())
    if X.shape[0] == 2:
        assert not _same_question(X[0], X[1])


@pytest.mark.parametrize("cls", [PairwiseInformationGain, HoulsbyInformationGain, UtilityDifferenceVariance])
def test_explicit_link_other_than_the_posteriors_is_refused(journey, cls):
    """Old code let link="probit" silently replace the logit posterior's link."""
    post = journey[2]
    assert post.link == "logit"
    with pytest.raises(InputDataError) as err:
        cls(post, link="probit")
    assert err.value.field == "link" and "logit" in str(err.value)
    assert cls(post, link="logit").link == "logit"  # the posterior's own link, said again, is fine
    assert cls(post).link == "logit"


@pytest.mark.parametrize("cls", [PairwiseInformationGain, HoulsbyInformationGain, RatingInformationGain])
def test_explicit_noise_scale_with_a_reward_posterior_is_refused(journey, cls):
    """Old code divided the posterior's utilities (noise units already) by noise_scale."""
    post = journey[2]
    kwargs = {"threshold": 0.0} if cls is RatingInformationGain else {}
    with pytest.raises(InputDataError) as err:
        cls(post, noise_scale=2.0, **kwargs)
    assert err.value.field == "noise_scale"
    assert cls(post, noise_scale=1.0, **kwargs).noise_scale == 1.0


def test_link_and_noise_scale_still_set_a_botorch_model(journey):
    _, data, _, _ = journey
    gp = PairwiseGP(data.items, data.comparisons)
    acq = PairwiseInformationGain(gp, link="logit", noise_scale=2.0, num_samples=64)
    assert (acq.link, acq.noise_scale) == ("logit", 2.0)
    closed = HoulsbyInformationGain(gp, link="logit", noise_scale=2.0)
    assert (closed.link, closed.noise_scale) == ("logit", 2.0)
    assert PairwiseInformationGain(gp, num_samples=64).link == "probit"


@pytest.mark.parametrize(
    "make",
    [
        lambda gp: PairwiseInformationGain(gp, num_samples=64),
        lambda gp: HoulsbyInformationGain(gp),
        lambda gp: ExpectedUtilityOfBestOption(gp, num_samples=64),
    ],
    ids=["PairwiseInformationGain", "HoulsbyInformationGain", "ExpectedUtilityOfBestOption"],
)
def test_botorch_model_wrong_feature_width_is_input_data_error(journey, make):
    """Old code: a bare torch RuntimeError from inside the GP's kernel."""
    _, data, _, _ = journey
    acq = make(PairwiseGP(data.items, data.comparisons))
    assert acq(torch.rand(4, 2, 3, dtype=torch.float64)).shape == (4,)
    with pytest.raises(InputDataError) as err:
        acq(torch.rand(4, 2, 5, dtype=torch.float64))
    assert err.value.field == "X" and "2 x 3" in str(err.value) and "(4, 2, 5)" in str(err.value)
    with pytest.raises(InputDataError) as err:
        acq.set_X_pending(torch.rand(1, 5, dtype=torch.float64))
    assert err.value.field == "X_pending"


def test_draws_model_refuses_observation_noise_true(journey):
    """Old code accepted observation_noise=True and returned the noiseless utility draws."""
    post = journey[2]
    model = post.as_botorch_model()
    X = torch.rand(4, 2, 3, dtype=torch.float64)
    with pytest.raises(ModelError, match="observation_noise"):
        model.posterior(X, observation_noise=True)
    with pytest.raises(ModelError, match="observation_noise"):
        model.posterior(X, observation_noise=torch.ones(4, 2, 1, dtype=torch.float64))
    for flag in (False, None):
        assert model.posterior(X, observation_noise=flag).values.shape == (4, post.num_draws, 2, 1)
