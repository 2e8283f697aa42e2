"""Acquisition functions: MC BALD against Houlsby's closed form and BoTorch, zero-information
queries, the preferred-region family, EUBO against BoTorch, baselines, shapes."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.acquisition.preference import (
    AnalyticExpectedUtilityOfBestOption,
    PairwiseBayesianActiveLearningByDisagreement,
)
from botorch.models import PairwiseGP
from botorch.sampling.normal import SobolQMCNormalSampler

from papa_bayes import LinearReward, PreferenceData, fit
from papa_bayes.acquisition import (
    ArgmaxInformation,
    ExpectedUtilityOfBestOption,
    HoulsbyInformationGain,
    PairwiseInformationGain,
    PreferredRegionInformation,
    RandomQueries,
    RatingInformationGain,
    ThompsonSampling,
    UtilityDifferenceVariance,
    botorch_qeubo,
    comparison_information_gain,
    grouped_information,
    houlsby_information_gain,
)
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.inference.posterior import RewardPosterior
from papa_bayes.users import SimulatedUser, random_unit_vector, simulate_comparisons, simulate_ratings

SQRT2 = math.sqrt(2.0)


pytestmark = pytest.mark.usefixtures("one_thread")


class GPDrawsPosterior(RewardPosterior):
    """A probit GP posterior seen through the RewardPosterior interface (test-only).

    Joint draws of BoTorch ``PairwiseGP``'s latent utility at any features, with fixed
    quasi-MC base samples, divided by sqrt(2) so that P(a preferred) = Phi(u(a) - u(b))
    matches PairwiseGP's probit likelihood.
    """

    link = "probit"
    method = "laplace"

    def __init__(self, gp: PairwiseGP, data: PreferenceData, num_draws: int = 2048) -> None:
        self.gp, self.data, self._s = gp, data, num_draws

    @property
    def num_draws(self) -> int:
        return self._s

    def utility(self, features, *, rater=None):
        features = self.check_features(features)
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self._s]), seed=0)
        return sampler(self.gp.posterior(features)).squeeze(-1) / SQRT2

    def update(self, data):  # pragma: no cover - not needed here
        raise NotImplementedError

    def to_inference_data(self):  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(scope="module")
def gp_setup():
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(20, 2, generator=gen, dtype=torch.float64)
    f = torch.sin(3 * X[:, 0]) + X[:, 1]
    a = torch.randint(0, 20, (15,), generator=gen)
    b = (a + torch.randint(1, 20, (15,), generator=gen)) % 20
    comp = torch.where((f[a] > f[b]).unsqueeze(-1), torch.stack([a, b], -1), torch.stack([b, a], -1))
    gp = PairwiseGP(X, comp)  # the Laplace posterior is computed at construction
    gp.eval()
    queries = torch.rand(30, 2, 2, generator=gen, dtype=torch.float64)
    return gp, PreferenceData(items=X, comparisons=comp), queries


@pytest.fixture(scope="module")
def linear_post():
    gen = torch.Generator().manual_seed(1)
    w = random_unit_vector(4, generator=gen)
    items = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    user = SimulatedUser(w, seed=2)
    data = simulate_comparisons(user, items, 25, generator=gen)
    return fit(LinearReward(), data, method="laplace", num_samples=512), items


@pytest.fixture(scope="module")
def sharp_post():
    """A posterior sure of the reward's direction (300 answers of a consistent user)."""
    gen = torch.Generator().manual_seed(1)
    w = random_unit_vector(4, generator=gen)
    items = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser(3 * w, seed=2), items, 300, generator=gen)
    return fit(LinearReward(), data, method="laplace", num_samples=512), items


def test_mc_bald_matches_houlsby_closed_form_on_probit_gp(gp_setup):
    gp, data, Q = gp_setup
    with torch.no_grad():
        closed = HoulsbyInformationGain(gp, noise_scale=SQRT2)(Q)
        # (a) on the BoTorch model directly, (b) through the RewardPosterior interface.
        mc_model = PairwiseInformationGain(gp, link="probit", noise_scale=SQRT2, num_samples=2048)(Q)
        mc_post = PairwiseInformationGain(GPDrawsPosterior(gp, data, 2048))(Q)
    assert closed.min() > 0.02  # informative queries, so a relative error means something
    assert ((mc_model - closed).abs() / closed).max() <= 0.05
    assert ((mc_post - closed).abs() / closed).max() <= 0.05


def test_mc_bald_matches_botorch_bald(gp_setup):
    gp, _, Q = gp_setup
    torch.manual_seed(0)
    with torch.no_grad():
        # BoTorch's BALD assumes P = Phi(u(a) - u(b)) (std_noise=0) and reports nats.
        theirs = PairwiseBayesianActiveLearningByDisagreement(gp, num_samples=16384)(Q) / math.log(2)
        ours = PairwiseInformationGain(gp, link="probit", noise_scale=1.0, num_samples=2048)(Q)
        closed = HoulsbyInformationGain(gp, noise_scale=1.0)(Q)
    assert ((ours - theirs).abs() / theirs).max() <= 0.05
    assert ((closed - theirs).abs() / theirs).max() <= 0.05


def test_houlsby_is_botorchs_bald_in_bits_where_botorch_has_nats(gp_setup):
    """The docstring said noise_scale=1 "matches" BoTorch's BALD: the values differ by the factor ln 2."""
    gp, _, Q = gp_setup
    torch.manual_seed(0)
    with torch.no_grad():
        nats = PairwiseBayesianActiveLearningByDisagreement(gp, num_samples=16384)(Q)
        bits = HoulsbyInformationGain(gp, noise_scale=1.0)(Q)
    assert bits.min() > 0.02  # informative queries, so a relative error means something
    assert ((nats - math.log(2) * bits).abs() / nats).max() <= 0.05  # BoTorch's = ln 2 x ours
    assert ((nats - bits).abs() / nats).min() >= 0.3  # not the same numbers
    assert "ln 2" in HoulsbyInformationGain.__doc__ and "nats" in HoulsbyInformationGain.__doc__

def test_eubo_matches_botorch(gp_setup, linear_post):
    gp, _, Q = gp_setup
    with torch.no_grad():
        theirs = AnalyticExpectedUtilityOfBestOption(gp)(Q)
        ours = ExpectedUtilityOfBestOption(gp, num_samples=2048)(Q)
    assert (ours - theirs).abs().max() <= 0.01
    post, items = linear_post
    X = items[:20].reshape(10, 2, 4)
    torch.manual_seed(0)
    with torch.no_grad():
        ours = ExpectedUtilityOfBestOption(post)(X)
        theirs = botorch_qeubo(post)(X)  # BoTorch's qEUBO on the same draws, each once (DrawsSampler)
    assert torch.allclose(ours, theirs)


def test_information_zero_for_identical_items_and_certain_pairs(sharp_post):
    post, items = sharp_post
    x = items[:5]
    same = torch.stack([x, x], -2)  # 5 x 2 x d
    with torch.no_grad():
        assert PairwiseInformationGain(post)(same).abs().max() < 1e-12
        w = post.mean("w")
        far = torch.stack([50 * w / w.norm(), -50 * w / w.norm()]).unsqueeze(0)  # the posterior is sure
        assert PairwiseInformationGain(post)(far).item() < 1e-3
        assert PairwiseInformationGain(post)(items[:2].unsqueeze(0)).item() > 1e-3


def test_information_with_ties_and_ratings():
    gen = torch.Generator().manual_seed(3)
    w = random_unit_vector(3, generator=gen)
    items = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    user = SimulatedUser(w, tie_margin=0.5, seed=1)
    data = simulate_comparisons(user, items, 30, generator=gen)
    data = data.append(ratings=simulate_ratings(user, items, 15, generator=gen).ratings)
    post = fit(LinearReward(ties=True), data, method="laplace", num_samples=512)
    assert post.tie_strength_draws() is not None
    X = torch.stack([items[:10], items[10:20]], -2)
    with torch.no_grad():
        eig3 = PairwiseInformationGain(post)(X)
        eig2 = PairwiseInformationGain(post, ties=False)(X)
        same = PairwiseInformationGain(post)(torch.stack([items[:3], items[:3]], -2))
        rating = RatingInformationGain(post)(items[:10].unsqueeze(-2))
    assert eig3.shape == (10,) and bool((eig3 >= 0).all()) and bool((eig3 <= math.log2(3)).all())
    assert not torch.allclose(eig3, eig2)
    # Identical items under ties: the answer law is the same in every draw only if the
    # tie strength is known; its uncertainty leaves a little information.
    assert same.max() < 0.05
    assert rating.shape == (10,) and bool((rating >= 0).all()) and bool((rating <= 1).all())


def test_region_and_argmax_bounded_by_bald(linear_post):
    post, items = linear_post
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 60, (200, 2), generator=gen)
    idx = idx[idx[:, 0] != idx[:, 1]]
    X = items[idx]
    with torch.no_grad():
        bald = PairwiseInformationGain(post)(X)
        region = PreferredRegionInformation(post, pool=items)(X)
        best = ArgmaxInformation(post, pool=items)(X)
    # Data processing: what the answer says about a function of theta <= about theta.
    assert bool((region <= bald + 1e-9).all()) and bool((best <= bald + 1e-9).all())
    assert region.max() > 0.01 and best.max() > 0.01


def test_region_information_ignores_two_surely_liked_items(sharp_post):
    post, items = sharp_post
    w = post.mean("w")
    w = w / w.norm()
    perp = torch.linalg.svd(w.unsqueeze(0)).Vh[1]  # a direction orthogonal to E[w]
    a, b = 6 * w + 4 * perp, 6 * w - 4 * perp  # both far above the pool's top quarter
    X = torch.stack([a, b]).unsqueeze(0)
    with torch.no_grad():
        bald = PairwiseInformationGain(post)(X).item()
        region = PreferredRegionInformation(post, pool=items)(X).item()
    assert bald > 0.05  # the answer would still teach about the reward along `perp` ...
    assert region < 1e-3 * bald  # ... but both items are surely in the preferred region


def test_rating_region_information_uses_like_threshold():
    gen = torch.Generator().manual_seed(5)
    w = random_unit_vector(3, generator=gen)
    items = torch.randn(80, 3, generator=gen, dtype=torch.float64)
    user = SimulatedUser(w, seed=0)
    data = simulate_ratings(user, items, 30, generator=gen)
    post = fit(LinearReward(), data, method="laplace", num_samples=256)
    with torch.no_grad():
        val = PreferredRegionInformation(post, region="like", query_size=1)(items[:7].unsqueeze(-2))
        bald = RatingInformationGain(post)(items[:7].unsqueeze(-2))
    assert val.shape == (7,) and bool((val <= bald + 1e-9).all())


def test_baselines(linear_post):
    post, items = linear_post
    X = items[:20].reshape(10, 2, 4)
    gen = torch.Generator().manual_seed(0)
    r1 = RandomQueries(post, generator=torch.Generator().manual_seed(1))(X)
    r2 = RandomQueries(post, generator=torch.Generator().manual_seed(1))(X)
    assert torch.equal(r1, r2) and r1.shape == (10,)
    with torch.no_grad():
        var = UtilityDifferenceVariance(post)(X)
        u = post.utility(items[:20])
        assert torch.allclose(var, (u[:, 0::2] - u[:, 1::2]).var(0))
        ts = ThompsonSampling(post, generator=gen)
        i, j = ts.draws.tolist()
        expected = torch.maximum(u[i, 0::2] + u[j, 1::2], u[i, 1::2] + u[j, 0::2])
        assert torch.allclose(ts(X), expected)
    with pytest.raises(InputDataError):
        RandomQueries(post, generator=None)


def test_houlsby_closed_form_limits():
    m = torch.tensor([0.0, 0.0, 30.0])
    v = torch.tensor([0.0, 100.0, 0.01])
    val = houlsby_information_gain(m, v)
    assert val[0].abs() < 1e-12  # no uncertainty: no information
    assert 0.5 < val[1] <= 1.0  # a coin whose bias is unknown: close to 1 bit
    assert val[2] < 1e-6  # a sure answer


def test_forward_shapes_and_errors(linear_post):
    post, items = linear_post
    acq = PairwiseInformationGain(post)
    with torch.no_grad():
        assert acq(items[:12].reshape(2, 3, 2, 4)).shape == (2, 3)
        assert acq(items[:2]).shape == (1,)
    with pytest.raises(InputDataError):
        acq(items[:3].unsqueeze(0))  # q = 3
    with pytest.raises(InputDataError):
        acq(torch.zeros(4, 2, 5, dtype=torch.float64))  # wrong d
    # Differentiable in X, as optimize_acqf needs.
    X = items[:4].reshape(2, 2, 4).clone().requires_grad_(True)
    acq(X).sum().backward()
    assert X.grad is not None and torch.isfinite(X.grad).all()
    # Like/dislike information on a posterior fitted without ratings: the error says what to pass.
    with pytest.raises(ModelError, match=r"threshold=.*quantile"):
        RatingInformationGain(post)
    median = torch.quantile(post.utility(items), 0.5, dim=-1)
    assert RatingInformationGain(post, threshold=median)(items[:3].unsqueeze(-2)).shape == (3,)


def test_functional_form_matches_module(linear_post):
    post, items = linear_post
    u = post.utility(items[:10]).detach()
    direct = comparison_information_gain(u[:, :5], u[:, 5:], link=post.link)
    with torch.no_grad():
        module = PairwiseInformationGain(post)(torch.stack([items[:5], items[5:10]], -2))
    assert torch.allclose(direct, module)


def test_on_the_packages_gp_posterior():
    """The GP engineer's PairwiseGP wrapper, through the RewardPosterior interface only."""
    gp_pairwise = pytest.importorskip("papa_bayes.models.gp_pairwise")
    from papa_bayes.acquisition import select_queries

    gen = torch.Generator().manual_seed(0)
    user = SimulatedUser.from_gp_draw(2, lengthscale=0.5, seed=3, rationality=2.0)
    pool = torch.rand(80, 2, generator=gen, dtype=torch.float64)
    post = fit(gp_pairwise.PairwiseGPReward(), simulate_comparisons(user, pool, 20, generator=gen))
    sel = select_queries(post, pool, strategy="eig", k=2)
    X = pool[sel.indices]
    with torch.no_grad():
        mc = PairwiseInformationGain(post)(X)
        closed = HoulsbyInformationGain(post)(X)  # on the draws' moments
    assert torch.allclose(mc, sel.information_bits)
    assert ((mc - closed).abs() / mc).max() <= 0.05


def test_uncertainty_of_a_rating_uses_the_posteriors_like_threshold():
    gen = torch.Generator().manual_seed(5)
    items = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    user = SimulatedUser(random_unit_vector(3, generator=gen), seed=1, threshold=0.3)
    post = fit(LinearReward(), simulate_ratings(user, items, 30, generator=gen), method="laplace", num_samples=256)
    X = items[:6].unsqueeze(-2)
    with torch.no_grad():
        var = UtilityDifferenceVariance(post, query_size=1)(X)
        u = post.utility(items[:6])
    expected = (u - post.like_threshold_draws().unsqueeze(-1)).var(0)
    assert torch.allclose(var, expected)
    assert not torch.allclose(var, u.var(0), rtol=0.05)  # the threshold's draws matter


def test_acquisition_settings_are_checked(linear_post):
    post, items = linear_post
    s = post.num_draws
    for bad in (-1.0, float("nan"), [0.5, 0.5, 0.5]):
        with pytest.raises(InputDataError, match="tie_strength"):
            PairwiseInformationGain(post, tie_strength=bad)
    assert PairwiseInformationGain(post, tie_strength=torch.full((s,), 0.5)).tie_strength.shape == (s,)
    with pytest.raises(InputDataError, match="threshold"):
        RatingInformationGain(post, threshold=float("nan"))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(InputDataError, match="noise_scale"):
            HoulsbyInformationGain(post, noise_scale=bad)
        with pytest.raises(InputDataError, match="noise_scale"):
            houlsby_information_gain(torch.tensor([0.5]), torch.tensor([1.0]), noise_scale=bad)
    with pytest.raises(InputDataError, match="num_samples"):
        PairwiseInformationGain(post, num_samples=0)
    with pytest.raises(InputDataError, match="draws"):
        ThompsonSampling(post, draws=[0, s])
    with pytest.raises(InputDataError, match="query_size"):
        ThompsonSampling(post, generator=torch.Generator(), query_size=3)
    with pytest.raises(InputDataError, match="query_size"):
        UtilityDifferenceVariance(post, query_size=0)
    X = items[:4].reshape(2, 2, 4)
    with torch.no_grad():  # a nested list is read as a tensor
        assert torch.allclose(HoulsbyInformationGain(post)(X.tolist()), HoulsbyInformationGain(post)(X))
    for bad in (-1, 1.5, "0"):
        with pytest.raises(InputDataError, match="seed"):
            PairwiseInformationGain(post, seed=bad)
    with pytest.raises(InputDataError, match="tie_strength"):
        PairwiseInformationGain(post, tie_strength="0.5")
    with pytest.raises(InputDataError, match="ties"):  # "no" is truthy
        PairwiseInformationGain(post, ties="no")
    with pytest.raises(InputDataError, match="threshold"):
        RatingInformationGain(post, threshold="0")
    with pytest.raises(InputDataError, match="X"):
        PairwiseInformationGain(post)("pairs")
    with pytest.raises(InputDataError, match="X"):
        PairwiseInformationGain(post)(X.bool())
    for bad in (0, 3, True, 2.0):
        with pytest.raises(InputDataError, match="query_size"):
            RandomQueries(post, generator=torch.Generator(), query_size=bad)
        with pytest.raises(InputDataError, match="query_size"):
            PreferredRegionInformation(post, pool=items, query_size=bad)
        with pytest.raises(InputDataError, match="query_size"):
            ArgmaxInformation(post, pool=items, query_size=bad)
    for bad in ([0.5, 1.5], [True, False], "ab"):  # float indices are not truncated
        with pytest.raises(InputDataError, match="draws"):
            ThompsonSampling(post, draws=bad)
    for bad in (1.5, True, "2"):
        with pytest.raises(InputDataError, match="q"):
            ExpectedUtilityOfBestOption(post, q=bad)
    with pytest.raises(InputDataError, match="model"):
        HoulsbyInformationGain("not a model")
    with pytest.raises(InputDataError, match="var_diff"):  # no silent broadcast
        houlsby_information_gain(torch.zeros(2), torch.ones(3))
    with pytest.raises(InputDataError, match="u_second"):
        comparison_information_gain(torch.zeros(4, 2), torch.zeros(5, 2), link="logit")
    for pool_utility in (torch.zeros(7, 5, dtype=torch.float64), torch.zeros(s, dtype=torch.float64)):  # not `s x n`
        with pytest.raises(InputDataError, match="pool_utility"):
            ArgmaxInformation(post, pool_utility=pool_utility)
        with pytest.raises(InputDataError, match="pool_utility"):
            PreferredRegionInformation(post, pool_utility=pool_utility, region=0.5)
    with pytest.raises(InputDataError, match="pool"):
        ArgmaxInformation(post, pool=items[:0])


def test_grouped_information_rejects_groups_outside_the_range():
    lp = torch.full((8, 3, 2), math.log(0.5), dtype=torch.float64)
    ok = grouped_information(lp, torch.zeros(8, dtype=torch.long), 1)
    assert torch.allclose(ok, torch.zeros(3, dtype=torch.float64))  # one group: nothing to learn
    for groups in (torch.full((8,), 2), torch.full((8, 3), -1), torch.zeros(8), torch.zeros(7, dtype=torch.long)):
        with pytest.raises(InputDataError, match="groups"):
            grouped_information(lp, groups, 2)


def test_a_botorch_models_query_value_does_not_depend_on_its_batch(gp_setup):
    """Base samples are shared across the batch, so a query scores the same alone or among 11,000."""
    gp, _, _ = gp_setup
    X = torch.rand(11_000, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    acq = PairwiseInformationGain(gp, link="probit", num_samples=64)
    with torch.no_grad():
        alone, among = acq(X[:5]), acq(X)[:5]
    assert torch.allclose(alone, among, rtol=1e-10, atol=1e-12)


def test_houlsby_logit_closed_form_tracks_monte_carlo_logit_bald():
    """The logit closed form (probit approximation of the sigmoid) that screens pairs, against MC BALD."""
    from torch.quasirandom import SobolEngine

    m = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    v = torch.tensor([0.5, 1.0, 2.0, 1.0, 4.0, 2.0, 9.0, 0.25, 4.0], dtype=torch.float64)
    u = SobolEngine(1, scramble=True, seed=0).draw(2**16, dtype=torch.float64).clamp(1e-9, 1 - 1e-9)
    delta = m + v.sqrt() * torch.distributions.Normal(0.0, 1.0).icdf(u)  # draws of u(a) - u(b)
    mc = comparison_information_gain(delta, torch.zeros_like(delta), link="logit")
    closed = houlsby_information_gain(m, v, link="logit")
    assert (closed - mc).abs().max() <= 0.05
    assert ((closed - mc).abs() / mc).max() <= 0.25


def test_three_outcome_information_worked_by_hand():
    """Two equally likely draws: one says first/second 50:50, the other says tie.
    H[E p] = H(1/4, 1/4, 1/2) = 1.5 bits, E H[p] = 0.5 bits: 1 bit."""
    from papa_bayes.acquisition import information_from_log_probs

    probs = torch.tensor([[[0.5, 0.5, 0.0]], [[0.0, 0.0, 1.0]]], dtype=torch.float64)
    assert information_from_log_probs(probs.log()).item() == pytest.approx(1.0, abs=1e-9)


def test_region_information_has_finite_gradients(linear_post):
    """An empty (draws x membership) group must not turn the gradient into NaN (0 * log 0)."""
    post, items = linear_post
    acq = PreferredRegionInformation(post, pool=items)
    X = torch.stack([items[:3], items[3:6]], -2)
    X = torch.cat([X, torch.stack([items[6], items[6]]).unsqueeze(0)]).clone().requires_grad_(True)  # + identical items
    acq(X).sum().backward()
    assert torch.isfinite(X.grad).all()
    eps = 1e-6
    step = torch.zeros_like(X)
    step[0, 0, 0] = eps
    with torch.no_grad():
        fd = (acq(X + step) - acq(X - step))[0] / (2 * eps)
    assert X.grad[0, 0, 0].item() == pytest.approx(fd.item(), rel=1e-4, abs=1e-8)


def test_pending_items_complete_the_query_as_in_botorch(linear_post):
    """``set_X_pending`` fixes items of the query (BoTorch's ``concatenate_pending_points``),
    so ``optimize_acqf_discrete`` and a fixed anchor work; BoTorch reads ``X_pending`` first."""
    from botorch.optim import optimize_acqf_discrete

    post, items = linear_post
    anchor = items[:1]
    others = items[1:9].unsqueeze(-2)  # 8 x 1 x d
    for acq in (PairwiseInformationGain(post), ExpectedUtilityOfBestOption(post), HoulsbyInformationGain(post)):
        assert acq.X_pending is None
        with torch.no_grad():
            full = acq(torch.cat([others, anchor.expand(8, 1, 4)], -2))
        acq.set_X_pending(anchor)
        with torch.no_grad():
            assert torch.allclose(acq(others), full)
        X, value = optimize_acqf_discrete(acq, q=1, choices=items[1:9])
        assert torch.equal(X, items[1 + int(full.argmax())].unsqueeze(0))
        with pytest.raises(InputDataError, match="pending"):
            acq(torch.cat([others, others], -2))  # 2 + 1 pending items: not a pair
        for bad in (items[:2], torch.zeros(1, 5, dtype=torch.float64)):
            with pytest.raises(InputDataError, match="X_pending"):
                acq.set_X_pending(bad)
        acq.set_X_pending(None)
        with pytest.raises(InputDataError, match="set_X_pending"):  # BoTorch's greedy q=2 starts with single items
            optimize_acqf_discrete(acq, q=2, choices=items[1:9])


def test_botorch_model_view_supports_or_refuses_botorch_features_clearly(linear_post):
    from botorch.acquisition.objective import ScalarizedPosteriorTransform

    post, items = linear_post
    model = post.as_botorch_model()
    X = items[:6].reshape(3, 2, 4)
    assert model.subset_output([0]) is model
    with pytest.raises(InputDataError, match="idcs"):
        model.subset_output([1])
    values = model.posterior(X).values
    transform = ScalarizedPosteriorTransform(weights=torch.tensor([-2.0], dtype=torch.float64), offset=1.0)
    assert torch.allclose(model.posterior(X, posterior_transform=transform).values, 1.0 - 2.0 * values)
    with pytest.raises(InputDataError, match="weights"):
        model.posterior(X, posterior_transform=ScalarizedPosteriorTransform(weights=torch.ones(2, dtype=torch.float64)))
    with pytest.raises(ModelError, match="update"):
        model.condition_on_observations(X[0], torch.zeros(2, 1, dtype=torch.float64))
    with pytest.raises(ModelError, match="update"):
        model.fantasize(X[0])
    with pytest.raises(InputDataError, match="^X: expected finite"):
        model.posterior(torch.full((1, 2, 4), float("nan"), dtype=torch.float64))
    # Gaussian-only BoTorch acquisitions say what to use instead.
    for acq in (AnalyticExpectedUtilityOfBestOption(pref_model=model),
                PairwiseBayesianActiveLearningByDisagreement(pref_model=model)):
        with pytest.raises(ModelError, match="HoulsbyInformationGain"):
            acq(X)


def test_botorch_acquisitions_reading_the_gaussian_distribution_say_what_to_use(linear_post):
    """qMaxValueEntropy reads posterior.distribution: a bare AttributeError 'distribution' on our draws."""
    from botorch.acquisition.max_value_entropy_search import qMaxValueEntropy

    post, items = linear_post
    model = post.as_botorch_model()
    acq = qMaxValueEntropy(model, candidate_set=items[:20])
    # it asks for observation_noise=True first, which the draws model refuses with the same advice
    with pytest.raises(ModelError, match="no (distribution|observation_noise).*HoulsbyInformationGain"):
        acq(items[:3].unsqueeze(-2))
    assert not hasattr(model.posterior(items[:3].unsqueeze(-2)), "distribution")  # still an AttributeError too

def test_botorch_mc_acquisitions_average_every_draw_whatever_the_batch(linear_post):
    """BoTorch's IndexSampler would resample the draws, independently per query of a batch:
    a query's value then depends on its batch. On our model every draw counts once."""
    from botorch.acquisition import qUpperConfidenceBound
    from botorch.acquisition.preference import qExpectedUtilityOfBestOption

    post, items = linear_post
    X = items[:20].reshape(10, 2, 4)
    with torch.no_grad():
        ours = ExpectedUtilityOfBestOption(post)(X)
        for acq in (botorch_qeubo(post), qExpectedUtilityOfBestOption(pref_model=post.as_botorch_model())):
            assert torch.allclose(acq(X), ours)
            assert torch.allclose(acq(X[3:4]), ours[3:4])
        ucb = qUpperConfidenceBound(post.as_botorch_model(), beta=1.0)
        assert torch.allclose(ucb(X)[3:4], ucb(X[3:4]))
        assert torch.allclose(botorch_qeubo(post.as_botorch_model())(X), ours)
    with pytest.raises(InputDataError, match="posterior"):
        botorch_qeubo(items)


def test_a_botorch_model_must_be_one_utility_without_a_model_batch():
    """A two-output model gave `batch x 2` values (wrong shape, silently); a batched one a deep RuntimeError."""
    from botorch.models import SingleTaskGP

    X = torch.rand(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    two_outputs = SingleTaskGP(X, torch.randn(8, 2, dtype=torch.float64))
    batched = SingleTaskGP(X.expand(3, 8, 3), torch.randn(3, 8, 1, dtype=torch.float64))
    for model, what in ((two_outputs, "num_outputs=2"), (batched, r"batch_shape=\(3,\)")):
        for make in (PairwiseInformationGain, ExpectedUtilityOfBestOption, HoulsbyInformationGain):
            with pytest.raises(InputDataError, match=what):
                make(model)


def test_houlsby_on_the_botorch_view_uses_the_posteriors_link(linear_post):
    """``post.as_botorch_model()`` (or one rater's view) keeps the posterior's link, as for MC BALD."""
    post, items = linear_post
    assert post.link == "logit"
    X = items[:8].reshape(4, 2, 4)
    with torch.no_grad():
        assert torch.allclose(HoulsbyInformationGain(post.as_botorch_model())(X), HoulsbyInformationGain(post)(X))
    with pytest.raises(InputDataError, match="X"):
        HoulsbyInformationGain(post.as_botorch_model())(torch.zeros(3, 2, 5, dtype=torch.float64))


def test_acquisitions_resolve_a_posterior_its_view_and_a_botorch_model_alike(linear_post, gp_setup):
    """One resolve_model for DrawsAcquisitionFunction, HoulsbyInformationGain and botorch_qeubo (each had its
    own copy of the branch): the same model, posterior and rater from each input, the same messages."""
    from papa_bayes.acquisition.base import resolve_model
    from papa_bayes.inference.posterior import PosteriorDrawsModel

    post, items = linear_post
    gp = gp_setup[0]
    model, reward_posterior, rater = resolve_model(post)
    assert isinstance(model, PosteriorDrawsModel) and model.reward_posterior is post
    assert reward_posterior is post and rater is None
    view = post.as_botorch_model(rater=2)
    model, reward_posterior, rater = resolve_model(view)
    assert model is view and reward_posterior is post and rater == 2
    model, reward_posterior, rater = resolve_model(gp)
    assert model is gp and reward_posterior is None and rater is None
    for acq in (PairwiseInformationGain(view), ExpectedUtilityOfBestOption(view)):
        assert acq.model is view and acq.reward_posterior is post and acq.rater == 2 and acq.link == post.link
    houlsby = HoulsbyInformationGain(view)
    assert houlsby.model is view and houlsby.link == post.link
    with pytest.raises(InputDataError, match="X"):  # the posterior's width, taken from the view
        houlsby(items[:2, :3].unsqueeze(0))
    assert HoulsbyInformationGain(gp).link == "probit"
    wrong = str(InputDataError("model", "a RewardPosterior or a BoTorch Model", "str"))
    for make in (PairwiseInformationGain, ExpectedUtilityOfBestOption, HoulsbyInformationGain):
        with pytest.raises(InputDataError) as err:
            make("a model")
        assert str(err.value) == wrong
    with pytest.raises(InputDataError) as err:
        botorch_qeubo(gp)
    expected = InputDataError("posterior", "a RewardPosterior or its as_botorch_model()", "PairwiseGP")
    assert str(err.value) == str(expected)


@pytest.mark.parametrize("acquisition", ["pair", "rating"])
def test_logit_information_has_zero_gradient_where_the_answer_is_certain(sharp_post, acquisition):
    """Items 1e3 apart along the reward make every draw's sigmoid round to 1: the information is 0
    and so is its gradient (xlogy(1 - p, 1 - p) gave -inf x sigmoid'(x) = 0 x -inf = NaN there)."""
    post, _ = sharp_post
    w = post.mean("w")
    X = (1e3 * torch.stack([w, -w]) / w.norm()).unsqueeze(0)  # `1 x 2 x 4`
    if acquisition == "pair":
        acq = PairwiseInformationGain(post)
    else:
        acq, X = RatingInformationGain(post, threshold=0.0), X[:, :1]
    X.requires_grad_(True)
    bits = acq(X)
    (grad,) = torch.autograd.grad(bits.sum(), X)
    assert bits.abs().max().item() < 1e-12
    assert torch.equal(grad, torch.zeros_like(grad))


def test_non_finite_pool_utility_is_refused(linear_post):
    """NaN draws at the reference pool were taken: the region's quantile and the argmax became meaningless (0 bits)."""
    post, items = linear_post
    U = post.utility(items).detach().clone()
    U[3, 5] = math.nan
    for make in (lambda: PreferredRegionInformation(post, pool_utility=U),
                 lambda: ArgmaxInformation(post, pool_utility=U)):
        with pytest.raises(InputDataError, match=r"^pool_utility: expected finite real utility draws at the pool"):
            make()


def test_a_one_draw_posterior_has_zero_not_nan_variance(linear_post):
    """With one draw the sample variance (s - 1 = 0) was NaN in forward, 0 in select_queries."""
    post, items = linear_post
    one = fit(LinearReward(), post.data, method="laplace", num_samples=1)
    pairs = items[:8].reshape(4, 2, 4)
    assert torch.isfinite(HoulsbyInformationGain(one)(pairs)).all()
    assert torch.equal(UtilityDifferenceVariance(one)(pairs), torch.zeros(4, dtype=torch.float64))
    rated = UtilityDifferenceVariance(one, query_size=1, threshold=0.0)(pairs[:, :1])
    assert torch.equal(rated, torch.zeros(4, dtype=torch.float64))


def test_thompson_draws_of_a_botorch_model_are_checked(gp_setup):
    """On a BoTorch model the draw indices were not checked: 5000 of 1024 was an IndexError, -1 wrapped round."""
    gp, _, Q = gp_setup
    for bad in ([0, 5000], [0, -1], [0, 1024]):
        with pytest.raises(InputDataError, match=r"^draws: expected draw indices in \[0, 1024\)"):
            ThompsonSampling(gp, draws=bad)
    assert ThompsonSampling(gp, draws=[0, 1023])(Q).shape == (30,)


def test_houlsby_information_gain_refuses_non_finite_moments():
    """A NaN mean or variance gave NaN bits, silently."""
    for mean, var, field in (([math.nan, 0.0], [1.0, 1.0], "mean_diff"), ([0.0, 0.0], [1.0, math.inf], "var_diff")):
        with pytest.raises(InputDataError, match=rf"^{field}: expected finite"):
            houlsby_information_gain(torch.tensor(mean), torch.tensor(var))


@pytest.mark.parametrize("mean", [9.0, 40.0, -40.0])
def test_houlsby_gradient_is_finite_where_the_answer_is_certain(mean):
    """Past |m| / sqrt(1 + v) ~ 8.3 Phi rounds to 1: xlogy(1 - p, 1 - p)'s -inf gradient times Phi's tiny (or
    underflowed) derivative made the gradient inf or NaN, which stops BoTorch's optimizer; the value is 0."""
    m = torch.tensor([mean, 0.5], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.01, 0.3], dtype=torch.float64, requires_grad=True)
    bits = houlsby_information_gain(m, v)
    grad_m, grad_v = torch.autograd.grad(bits.sum(), (m, v))
    assert bits[0].item() == 0.0 and bits[1].item() > 0.0
    assert torch.isfinite(grad_m).all() and torch.isfinite(grad_v).all()
    assert grad_m[0].item() == 0.0 and grad_v[0].item() == 0.0
    p = torch.special.ndtr(torch.tensor(0.5 / math.sqrt(1.3), dtype=torch.float64))  # values as before
    h = -(p * p.log2() + (1 - p) * (1 - p).log2())
    c = math.sqrt(math.pi * math.log(2.0) / 2.0)
    expected = h - c / math.sqrt(0.3 + c**2) * math.exp(-0.25 / (2 * (0.3 + c**2)))
    assert bits[1].item() == pytest.approx(float(expected), abs=1e-12)


def test_random_queries_answer_in_the_dtype_of_x(linear_post):
    """forward returned float64 for float32 queries, unlike every other acquisition (BoTorch: X's dtype)."""
    post, items = linear_post
    X = items[:8].reshape(4, 2, 4)
    values = RandomQueries(post, generator=torch.Generator().manual_seed(0))(X.float())
    assert values.dtype == torch.float32 and values.shape == (4,)
    again = RandomQueries(post, generator=torch.Generator().manual_seed(0))(X)
    assert again.dtype == torch.float64 and torch.equal(values, again.float())
