"""select_queries over pools (all pairs, screening, batches, exploration, ratings),
optimize_queries for continuous features, exposure diversity, bad inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from papa_bayes import LinearReward, fit
from papa_bayes.acquisition import (
    STRATEGIES,
    PairwiseInformationGain,
    ThompsonSampling,
    all_pairs,
    exposure_diversity,
    greedy_dpp,
    greedy_joint_information,
    optimize_queries,
    queries_to_reach,
    run_active_learning,
    select_queries,
)
from papa_bayes.exceptions import InputDataError, PapaBayesWarning
from papa_bayes.users import SimulatedUser, random_unit_vector, simulate_comparisons, simulate_ratings


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    d = 5
    w = random_unit_vector(d, generator=gen)
    pool = torch.randn(120, d, generator=gen, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser(w, seed=1), pool, 15, generator=gen)
    return fit(LinearReward(), data, method="laplace", num_samples=256), pool


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_returns_valid_pairs(setup, strategy):
    post, pool = setup
    sel = select_queries(post, pool, strategy=strategy, k=3, generator=_gen())
    assert sel.indices.shape == (3, 2)
    assert bool((sel.indices[:, 0] != sel.indices[:, 1]).all())
    assert len({tuple(sorted(p)) for p in sel.indices.tolist()}) == 3  # distinct pairs
    assert sel.num_candidates == 120 * 119 // 2
    assert bool((sel.information_bits >= 0).all()) and bool((sel.information_bits <= 1).all())
    assert sel.features(pool).shape == (3, 2, 5)


def test_screened_selection_matches_exhaustive(setup):
    post, pool = setup
    full = select_queries(post, pool, strategy="eig", screen=None)
    fast = select_queries(post, pool, strategy="eig", screen=256)
    assert fast.num_refined == 256 and full.num_refined == full.num_candidates
    # The screened choice is (nearly) the best pair of all, by the Monte Carlo value.
    assert fast.scores[0] >= 0.99 * full.scores[0]
    first, second = all_pairs(120)
    with torch.no_grad():
        brute = PairwiseInformationGain(post)(torch.stack([pool[first], pool[second]], -2))
    assert full.scores[0].item() == pytest.approx(brute.max().item(), rel=1e-9)


@pytest.mark.parametrize("strategy", ["region", "eubo", "argmax"])
def test_screen_close_to_exhaustive_for_other_strategies(setup, strategy):
    post, pool = setup
    full = select_queries(post, pool, strategy=strategy, screen=None)
    fast = select_queries(post, pool, strategy=strategy, screen=512)
    assert fast.scores[0] >= 0.95 * full.scores[0]


def test_eig_selection_beats_random_pairs_in_expected_information(setup):
    post, pool = setup
    best = select_queries(post, pool, strategy="eig").information_bits[0]
    rand = select_queries(post, pool, strategy="random", k=50, generator=_gen()).information_bits
    assert best > rand.max()


def test_joint_batch_information_grows_and_is_subadditive(setup):
    post, pool = setup
    sel = select_queries(post, pool, strategy="eig", k=4)
    joint = sel.details["batch_information_bits"]
    assert bool((joint[1:] > joint[:-1]).all())
    assert joint[-1] <= sel.information_bits.sum() + 1e-9


def test_greedy_joint_information_sampled_configurations():
    gen = _gen(1)
    probs1 = torch.rand(64, 30, 1, generator=gen, dtype=torch.float64)
    probs = torch.cat([probs1, 1 - probs1], -1)
    exact_idx, exact_bits = greedy_joint_information(probs, 6, max_configurations=4096)
    approx_idx, approx_bits = greedy_joint_information(probs, 6, max_configurations=8, generator=gen)
    assert exact_idx[:3].tolist() == approx_idx[:3].tolist()  # exact while configurations fit
    assert approx_bits[-1].item() == pytest.approx(exact_bits[-1].item(), rel=0.15)


def test_dpp_batch_is_diverse(setup):
    post, pool = setup
    top = select_queries(post, pool, strategy="uncertainty", k=5, batch="top")
    dpp = select_queries(post, pool, strategy="uncertainty", k=5, batch="dpp")
    with torch.no_grad():
        u = post.utility(pool)

    def mean_abs_corr(idx):
        diff = u[:, idx[:, 0]] - u[:, idx[:, 1]]
        c = torch.corrcoef(diff.T).abs()
        return (c.sum() - c.diagonal().sum()) / (c.numel() - c.shape[0])

    assert mean_abs_corr(dpp.indices) < mean_abs_corr(top.indices)


def test_exploration_share_and_reproducibility(setup):
    post, pool = setup
    a = select_queries(post, pool, strategy="eig", k=6, exploration=0.5, generator=_gen(3))
    b = select_queries(post, pool, strategy="eig", k=6, exploration=0.5, generator=_gen(3))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.exploratory, b.exploratory)
    allx = select_queries(post, pool, strategy="eig", k=6, exploration=1.0, generator=_gen(3))
    assert bool(allx.exploratory.all())
    assert not select_queries(post, pool, strategy="eig", k=6).exploratory.any()


def test_rating_queries(setup):
    post, pool = setup
    for strategy in ("eig", "region", "uncertainty", "thompson", "random", "argmax"):
        sel = select_queries(post, pool, strategy=strategy, k=3, query_type="rating", generator=_gen())
        assert sel.indices.shape == (3,) and sel.indices.unique().numel() == 3
        assert sel.features(pool).shape == (3, 1, 5)
    with pytest.raises(InputDataError):
        select_queries(post, pool, strategy="eubo", query_type="rating")
    gen = _gen(4)
    user = SimulatedUser(random_unit_vector(5, generator=gen), seed=0)
    rated = fit(LinearReward(), simulate_ratings(user, pool, 20, generator=gen), method="laplace", num_samples=128)
    sel = select_queries(rated, pool, strategy="eig", k=2, query_type="rating")
    assert sel.details["batch_information_bits"].shape == (2,)


def test_bad_inputs_raise_input_data_error(setup):
    post, pool = setup
    with pytest.raises(InputDataError, match="pool_features"):
        select_queries(post, torch.randn(10, 3, dtype=torch.float64))  # another dimension
    with pytest.raises(InputDataError, match="pool_features"):
        select_queries(post, torch.zeros(0, 5, dtype=torch.float64))  # empty pool
    with pytest.raises(InputDataError, match="pool_features"):
        select_queries(post, pool[:1])  # one item: no pair
    with pytest.raises(InputDataError, match="k"):
        select_queries(post, pool[:3], k=4)  # 3 pairs only
    with pytest.raises(InputDataError, match="k"):
        select_queries(post, pool, k=0)
    assert select_queries(post, pool, k=np.int64(2)).indices.shape == (2, 2)  # NumPy integers count
    with pytest.raises(InputDataError, match="strategy"):
        select_queries(post, pool, strategy="clairvoyant")
    with pytest.raises(InputDataError, match="generator"):
        select_queries(post, pool, strategy="random")
    with pytest.raises(InputDataError, match="exploration"):
        select_queries(post, pool, exploration=1.5, generator=_gen())
    with pytest.raises(InputDataError, match="batch"):
        select_queries(post, pool, strategy="eubo", k=2, batch="joint")
    with pytest.raises(InputDataError, match="pool_features"):
        select_queries(post, torch.full((4, 5), float("nan"), dtype=torch.float64))
    for bad in ("0.5", True):
        with pytest.raises(InputDataError, match="exploration"):
            select_queries(post, pool, exploration=bad, generator=_gen())
    for bad in (0, -1, 2.5):  # 0 was read as "the default"
        with pytest.raises(InputDataError, match="chunk_size"):
            select_queries(post, pool[:6], chunk_size=bad, screen=None)
    with pytest.raises(InputDataError, match="strategy"):
        select_queries(post, pool, strategy=["eig"])
    for n in (-1, 2.5, "3"):
        with pytest.raises(InputDataError, match="n"):
            all_pairs(n)
    sel = select_queries(post, pool[:6])
    with pytest.raises(InputDataError, match="pool_features"):
        sel.features(pool[:2])  # the queries index 6 items


def test_optimize_queries_continuous(setup):
    post, pool = setup
    bounds = torch.stack([-2 * torch.ones(5), 2 * torch.ones(5)]).double()
    # Four restarts found one question twice (a - b and its negation: the same question of a linear reward).
    X, values = optimize_queries(post, bounds, strategy="eig", k=2, num_restarts=8, raw_samples=64, seed=0)
    assert X.shape == (2, 2, 5) and values.shape == (2,)
    diffs = X[:, 0] - X[:, 1]
    assert float(torch.minimum((diffs[0] - diffs[1]).abs().max(), (diffs[0] + diffs[1]).abs().max())) > 1e-2
    assert bool((X >= -2 - 1e-9).all() and (X <= 2 + 1e-9).all())
    with torch.no_grad():
        sampled = PairwiseInformationGain(post)(-2 + 4 * torch.rand(64, 2, 5, generator=_gen(), dtype=torch.float64))
    assert values[0] >= sampled.max() - 1e-6  # the optimizer beats random designs
    with pytest.raises(InputDataError):
        optimize_queries(post, bounds[:, :3])
    inf_bounds = bounds.clone()
    inf_bounds[1, 0] = float("inf")
    for kwargs, field in (({"bounds": inf_bounds}, "bounds"), ({"bounds": "box"}, "bounds"),
                          ({"raw_samples": 0}, "raw_samples"), ({"num_restarts": 2.5}, "num_restarts"),
                          ({"seed": -1}, "seed"), ({"seed": "x"}, "seed"), ({"options": "maxiter=5"}, "options")):
        with pytest.raises(InputDataError, match=field):
            optimize_queries(post, **{"bounds": bounds, **kwargs})


def test_exposure_diversity():
    gen = _gen(0)
    ref = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    spread = exposure_diversity(ref, ref, num_cells=8)
    assert spread.coverage == 1.0 and spread.entropy_bits == pytest.approx(spread.reference_entropy_bits)
    narrow = exposure_diversity(ref[:1].expand(20, 3), ref, num_cells=8)
    assert narrow.coverage == pytest.approx(1 / 8) and narrow.entropy_bits == 0.0
    assert 0 < spread.normalized_entropy <= 1
    with pytest.raises(InputDataError):
        exposure_diversity(torch.zeros(3, 2), ref)


def test_run_active_learning_records_curves():
    gen = _gen(7)
    w = random_unit_vector(3, generator=gen)
    pool = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    heldout = (torch.randn(20, 3, generator=gen, dtype=torch.float64),
               torch.randn(20, 3, generator=gen, dtype=torch.float64))
    seen = []
    run = run_active_learning(
        SimulatedUser(w, seed=0), pool, strategy="eig", num_queries=5, num_samples=64, heldout=heldout,
        seed=0, callback=lambda t, post: seen.append(t),
    )
    assert seen == [1, 2, 3, 4, 5]
    for curve in (run.alignment, run.log_loss, run.regret, run.information_bits, run.entropy_bits):
        assert len(curve) == 5
    assert all(-1 <= a <= 1 for a in run.alignment) and all(r >= 0 for r in run.regret)
    assert len(run.queries) == 5 and queries_to_reach([0.1, 0.95, 0.5], 0.9) == 2
    again = run_active_learning(SimulatedUser(w, seed=0), pool, strategy="eig", num_queries=5, num_samples=64, seed=0)
    assert again.queries == run.queries  # reproducible from the seeds
    for kwargs, field in (({"num_queries": 2.5}, "num_queries"), ({"num_initial": True}, "num_initial"),
                          ({"seed": "x"}, "seed"), ({"strategy": "clairvoyant"}, "strategy"),  # before any fit
                          ({"true_weights": torch.ones(5)}, "true_weights"), ({"callback": 5}, "callback"),
                          ({"select_options": 5}, "select_options"), ({"heldout": pool}, "heldout")):
        with pytest.raises(InputDataError, match=field):
            run_active_learning(SimulatedUser(w, seed=0), pool, **{"num_queries": 2, "num_samples": 16, **kwargs})
    with pytest.raises(InputDataError, match="user"):
        run_active_learning("user", pool, num_queries=2)
    for kwargs, field in (({"level": float("nan")}, "level"), ({"level": "0.9"}, "level"),
                          ({"curve": [[0.1, 0.2]]}, "curve")):
        with pytest.raises(InputDataError, match=field):
            queries_to_reach(**{"curve": [0.1, 0.95], "level": 0.9, **kwargs})


def test_run_active_learning_passes_fit_options_to_every_update():
    gen = _gen(8)
    w = random_unit_vector(3, generator=gen)
    pool = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    fits = []
    run_active_learning(
        SimulatedUser(w, seed=0), pool, strategy="eig", num_queries=4, num_samples=64, seed=0,
        fit_options={"refine_steps": 3}, callback=lambda t, post: fits.append(post),
    )
    assert len(fits) == 4
    for post in fits:
        assert post.options["refine_steps"] == 3 and "refine_acceptance" in post.diagnostics
        assert post.num_draws == 64
    # A GP model is fitted by its own default method (the run used to force method="laplace" on it).
    from papa_bayes.models import PreferenceGP

    gp_run = run_active_learning(SimulatedUser(w, seed=0), pool[:12], model=PreferenceGP(), num_queries=2,
                                 num_samples=32)
    assert gp_run.posterior.method == "elbo" and len(gp_run.alignment) == 2
    plain = run_active_learning(SimulatedUser(w, seed=0), pool, strategy="eig", num_queries=2, num_samples=64, seed=0)
    assert "refine_acceptance" not in plain.posterior.diagnostics
    with pytest.raises(InputDataError, match="refine_steps"):
        run_active_learning(SimulatedUser(w, seed=0), pool, num_queries=2, fit_options={"refine_steps": -1})
    # Keys the run sets itself are refused by name instead of being silently overridden.
    with pytest.raises(InputDataError, match=r"fit_options.*num_samples"):
        run_active_learning(SimulatedUser(w, seed=0), pool, num_queries=2, fit_options={"num_samples": 8})
    with pytest.raises(InputDataError, match=r"select_options.*'k'"):
        run_active_learning(SimulatedUser(w, seed=0), pool, num_queries=2, select_options={"k": 2})
    with pytest.raises(InputDataError, match=r"select_options.*pair"):  # was an IndexError after the first fit
        run_active_learning(SimulatedUser(w, seed=0), pool, num_queries=2, select_options={"query_type": "rating"})


def test_run_active_learning_with_botorchs_pairwise_gp():
    """From the third answer on, each PairwiseGPReward update copied a copy of BoTorch's model, which failed."""
    from papa_bayes.models import PairwiseGPReward

    gen = _gen(9)
    w = random_unit_vector(2, generator=gen)
    pool = torch.rand(20, 2, generator=gen, dtype=torch.float64)
    run = run_active_learning(SimulatedUser(w, seed=0), pool, model=PairwiseGPReward(), strategy="eig",
                              num_queries=5, num_samples=32, seed=0)
    assert run.posterior.method == "laplace" and run.posterior.data.num_comparisons == 5
    assert len(run.queries) == 5 and len(run.update_seconds) == 5
    assert all(i != j for i, j in run.queries)


def test_k_larger_than_the_screen_still_gives_k_distinct_pairs(setup):
    post, pool = setup
    for batch in ("auto", "top", "dpp"):
        sel = select_queries(post, pool[:10], k=4, screen=2, batch=batch)
        pairs = {tuple(sorted(p)) for p in sel.indices.tolist()}
        assert len(pairs) == 4, batch
        assert sel.details["screen_kept"] == 4


def test_batch_functions_reject_k_outside_the_candidates():
    probs = torch.full((8, 2, 2), 0.5, dtype=torch.float64)
    for k in (0, 3, -1, 1.5):
        with pytest.raises(InputDataError, match="k"):
            greedy_joint_information(probs, k)
        with pytest.raises(InputDataError, match="k"):
            greedy_dpp(torch.ones(2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64), k)
    for kwargs, field in (({"max_configurations": 0}, "max_configurations"), ({"generator": 5}, "generator")):
        with pytest.raises(InputDataError, match=field):
            greedy_joint_information(probs, 2, **kwargs)
    for bad in (probs[..., 0], -probs):
        with pytest.raises(InputDataError, match="probs"):
            greedy_joint_information(bad, 1)
    with pytest.raises(InputDataError, match="vectors"):
        greedy_dpp(torch.ones(2, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64), 1)
    with pytest.raises(InputDataError, match="quality"):
        greedy_dpp(torch.tensor([float("nan"), 1.0], dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64), 1)


def test_all_exploratory_queries_are_still_scored(setup):
    post, pool = setup
    sel = select_queries(post, pool, strategy="eig", k=3, exploration=1.0, generator=_gen(5))
    assert bool(sel.exploratory.all())
    assert torch.allclose(sel.scores, sel.information_bits)  # EIG's score is the information itself


def test_optimize_queries_counts_a_swapped_pair_once():
    gen = _gen(1)
    w = random_unit_vector(2, generator=gen)
    items = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    post = fit(LinearReward(), simulate_comparisons(SimulatedUser(w, seed=2), items, 25, generator=gen),
               method="laplace", num_samples=128)
    bounds = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    # Four restarts in a square: the optima are corner pairs, found in both orders.
    with pytest.warns(PapaBayesWarning, match="distinct optima"):
        X, values = optimize_queries(post, bounds, strategy="eig", k=4, num_restarts=4, raw_samples=32,
                                     options={"maxiter": 30})
    assert X.shape[0] == values.shape[0] < 4
    for i in range(X.shape[0]):
        for j in range(i):
            assert float(torch.minimum((X[i] - X[j]).abs().max(), (X[i] - X[j].flip(0)).abs().max())) > 1e-4
    with pytest.raises(InputDataError, match="k"):
        optimize_queries(post, bounds, k=1.5, num_restarts=3)


def test_exposure_diversity_on_repeated_reference_and_bad_input():
    gen = _gen(2)
    ref = torch.randn(4, 3, generator=gen, dtype=torch.float64).repeat(10, 1)  # 4 distinct items
    spread = exposure_diversity(ref, ref, num_cells=16)
    assert spread.num_cells == 4 and spread.coverage == 1.0 and spread.normalized_entropy == pytest.approx(1.0)
    bad = ref.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InputDataError, match="shown"):
        exposure_diversity(bad, ref)
    with pytest.raises(InputDataError, match="reference"):
        exposure_diversity(ref, bad)
    with pytest.raises(InputDataError, match="num_cells"):
        exposure_diversity(ref, ref, num_cells=2.5)
    with pytest.raises(InputDataError, match="shown"):
        exposure_diversity("items", ref)
    from papa_bayes.acquisition.diversity import farthest_point_centres

    with pytest.raises(InputDataError, match="num_cells"):
        farthest_point_centres(ref, 0)
    for bad in (ref[:0], ref[0]):
        with pytest.raises(InputDataError, match="reference"):
            farthest_point_centres(bad, 2)


def test_run_active_learning_with_a_reused_user_answers_as_a_fresh_one():
    gen = _gen(9)
    w = random_unit_vector(3, generator=gen)
    pool = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    user = SimulatedUser(w, seed=0)
    first = run_active_learning(user, pool, strategy="random", num_queries=6, num_samples=64, seed=0)
    again = run_active_learning(user, pool, strategy="random", num_queries=6, num_samples=64, seed=0)
    fresh = run_active_learning(SimulatedUser(w, seed=0), pool, strategy="random", num_queries=6, num_samples=64,
                                seed=0)
    # Same answers, so the same posteriors (up to the last bits of floating point); without the reset
    # the second run's answers, and its alignment curve, would differ.
    assert again.alignment == pytest.approx(first.alignment, rel=1e-9)
    assert fresh.alignment == pytest.approx(first.alignment, rel=1e-9)


def test_select_queries_for_one_rater_of_a_hierarchical_posterior():
    """rater= asks about that rater's utility: scores, argmax and bits follow its draws, not the population's."""
    from papa_bayes import HierarchicalLinearReward, PreferenceData
    from papa_bayes.acquisition import ArgmaxInformation, information_from_log_probs, outcome_log_probs

    g = torch.Generator().manual_seed(3)
    d = 3
    X = torch.randn(60, d, generator=g, dtype=torch.float64)
    w0 = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)  # the two raters disagree on feature 0
    parts = [simulate_comparisons(SimulatedUser(w, seed=r), X, 40, generator=g) for r, w in enumerate((w0, -w0))]
    data = PreferenceData(items=X, comparisons=torch.cat([p.comparisons for p in parts]),
                          comparison_rater=torch.arange(2).repeat_interleave(40))
    post = fit(HierarchicalLinearReward(), data, method="laplace", num_samples=128, seed=0)
    pool = X[:25]
    u1 = post.utility(pool, rater=1).double()

    sel = select_queries(post, pool, strategy="eig", k=2, batch="top", screen=None, rater=1)
    i, j = sel.indices[:, 0], sel.indices[:, 1]
    expected = information_from_log_probs(outcome_log_probs(u1[:, i], u1[:, j], link=post.link))
    torch.testing.assert_close(sel.information_bits, expected)
    acq = PairwiseInformationGain(post.as_botorch_model(rater=1))
    assert acq.reward_posterior is post and acq.rater == 1 and acq.link == post.link
    torch.testing.assert_close(acq(pool[sel.indices]).double(), sel.scores, rtol=1e-6, atol=1e-9)

    best = {r: ArgmaxInformation(post.as_botorch_model(rater=r), pool=pool).best_item_probabilities for r in (0, 1)}
    torch.testing.assert_close(best[1], torch.bincount(u1.argmax(-1), minlength=25).double() / u1.shape[0])
    assert float((best[0] - best[1]).abs().sum()) > 1.0  # the raters' best items differ

    thompson = select_queries(post, pool, strategy="thompson", k=3, rater=1, generator=torch.Generator().manual_seed(0))
    assert thompson.indices.shape == (3, 2)
    for bad in (-1, 1.5, "a", True):
        with pytest.raises(InputDataError, match="rater"):
            select_queries(post, pool, rater=bad)


def test_optimize_queries_region_and_argument_forms(setup):
    """The "region" strategy optimizes (its gradient was NaN: BoTorch's OptimizationGradientError);
    k may be a NumPy integer; errors about the reference items name reference_pool."""
    from papa_bayes.exceptions import ModelError

    post, pool = setup
    bounds = torch.stack([-2 * torch.ones(5), 2 * torch.ones(5)]).double()
    small = {"num_restarts": 2, "raw_samples": 16, "options": {"maxiter": 10}}
    X, values = optimize_queries(post, bounds, strategy="region", reference_pool=pool, **small)
    assert X.shape == (1, 2, 5) and torch.isfinite(values).all()
    X, _ = optimize_queries(post, bounds, k=np.int64(2), **small)
    assert X.shape[0] <= 2
    with pytest.raises(ModelError, match="reference_pool"):
        optimize_queries(post, bounds, query_type="rating", **small)
    for strategy in ("region", "argmax"):  # the argument is reference_pool here, not make_acquisition's pool
        with pytest.raises(InputDataError, match="^reference_pool"):
            optimize_queries(post, bounds, strategy=strategy, **small)


@pytest.fixture(scope="module")
def region_setup():
    """A linear posterior (d=4) from 27 noiseless answers, its pool and the box of designs."""
    gen = _gen(0)
    X = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, 40, (30, 2), generator=gen)
    idx = idx[idx[:, 0] != idx[:, 1]]
    u = X @ torch.tensor([1.0, -0.5, 0.3, 0.0], dtype=torch.float64)
    winner_first = torch.where((u[idx[:, 0]] > u[idx[:, 1]]).unsqueeze(-1), idx, idx.flip(-1))
    from papa_bayes import PreferenceData

    post = fit(LinearReward(), PreferenceData(items=X, comparisons=winner_first), method="laplace", seed=0)
    return post, X, torch.tensor([[-2.0] * 4, [2.0] * 4], dtype=torch.float64)


def test_smooth_region_membership_tends_to_the_step(region_setup):
    """The logistic membership's information approaches the step's as its width goes to 0, and one-hot
    soft groups give exactly the hard groups' information."""
    from papa_bayes.acquisition.base import answer_log_probs
    from papa_bayes.acquisition.preferred import (
        PreferredRegionInformation, _grouped_information, _soft_grouped_information)

    post, pool, _ = region_setup
    designs = torch.rand(500, 2, 4, generator=_gen(1), dtype=torch.float64) * 4 - 2
    for size, Q in ((2, designs), (1, designs[:, :1])):
        make = lambda width: PreferredRegionInformation(post, pool=pool, region=0.75, query_size=size,  # noqa: E731
                                                        membership_softness=width)
        step = make(0.0)(Q)
        gaps = [float((make(width)(Q) - step).abs().max()) for width in (0.3, 0.03, 1e-9)]
        assert gaps[0] > 1e-3 and gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6, (size, gaps)
    u = post.utility(designs.reshape(-1, 4)).reshape(-1, 500, 2)
    lp = answer_log_probs(u[..., 0], u[..., 1], link=post.link)
    groups = torch.randint(0, 4, u.shape[:2], generator=_gen(2))
    one_hot = torch.nn.functional.one_hot(groups, 4).double()
    assert torch.allclose(_soft_grouped_information(lp, one_hot), _grouped_information(lp, groups, 4), atol=1e-10)


def test_optimize_queries_region_is_smooth_and_reports_the_step_value(region_setup):
    """With the step membership L-BFGS-B's line search fails (BoTorch warns "ABNORMAL"); the smooth
    membership optimizes without warnings, to designs worth more information about the step membership."""
    from papa_bayes.acquisition import PreferredRegionInformation

    post, pool, bounds = region_setup
    opts = dict(strategy="region", reference_pool=pool, k=3, num_restarts=8, raw_samples=256, seed=0)
    step = PreferredRegionInformation(post, pool=pool, region="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning, BoTorch's RuntimeWarning included, fails the test
        X, values = optimize_queries(post, bounds, **opts)
    assert torch.allclose(values, step(X), atol=1e-12)  # the step's information, best first
    assert bool((values[:-1] >= values[1:]).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, step_values = optimize_queries(post, bounds, region_softness=0.0, **opts)
    assert float(values[0]) > float(step_values[0]) + 0.005, (values, step_values)
    with pytest.raises(InputDataError, match="region_softness"):
        optimize_queries(post, bounds, region_softness=-0.1, **{**opts, "k": 1})
    from papa_bayes.acquisition import make_acquisition

    with pytest.raises(InputDataError, match="membership_softness.*'eig'"):
        make_acquisition("eig", post, membership_softness=0.1)


def test_optimize_queries_over_a_box_where_answers_become_certain():
    """Over a +-100 box most pairs have margins beyond ~37 (sigmoid = 1 exactly); the logit EIG's
    gradient was NaN there and BoTorch raised OptimizationGradientError."""
    gen = _gen(0)
    pool = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser(torch.ones(4, dtype=torch.float64)), pool, 200, generator=gen)
    post = fit(LinearReward(), data, seed=0, num_samples=256)
    bounds = torch.tensor([[-100.0] * 4, [100.0] * 4], dtype=torch.float64)
    # The default 8 restarts from 256 raw samples: some start where every draw is certain.
    X, values = optimize_queries(post, bounds, num_restarts=8, raw_samples=256, seed=0)
    assert X.shape == (1, 2, 4) and bool(torch.isfinite(values).all()) and values.item() > 0


def test_heldout_log_loss_of_a_user_who_ties_with_a_model_that_cannot():
    """The user's tie is cut and its two strict answers renormalized (it crashed: 3 outcomes vs 2)."""
    pool = torch.randn(30, 3, generator=_gen(0), dtype=torch.float64)
    first, second = pool[:10], pool[10:20]
    person = SimulatedUser([1.0, -1.0, 0.5], rationality=3.0, tie_margin=0.5, seed=0)
    posts = []
    run = run_active_learning(person, pool, num_queries=3, num_samples=64, heldout=(first, second),
                              callback=lambda t, post: posts.append(post))
    assert len(run.log_loss) == 3
    truth = person.outcome_probabilities(first, second)  # `10 x 3`: first, second, tie
    assert truth.shape == (10, 3) and float(truth[:, 2].sum()) > 0.1  # the user does tie
    truth = truth[:, :2] / truth[:, :2].sum(-1, keepdim=True)
    with torch.no_grad():
        pred = posts[-1].outcome_probabilities(first, second).mean(0)  # `10 x 2`
    assert run.log_loss[-1] == pytest.approx(float(-(truth * pred.log()).sum(-1).mean()), rel=1e-12)
    # The opposite case (the model ties, the user cannot) keeps its behaviour: the model's tie is cut.
    strict = SimulatedUser([1.0, -1.0, 0.5], rationality=3.0, seed=0)
    tied = run_active_learning(strict, pool, model=LinearReward(ties=True), num_queries=2, num_samples=64,
                               heldout=(first, second))
    assert all(0 < loss < 5 for loss in tied.log_loss)


def test_exposure_diversity_with_a_feature_constant_over_the_reference():
    """A feature constant over the reference is left out: an offset in it moves no shown item to
    another cell (its std clamped to 1e-12 made a 1e-3 offset 1e9 and put every item in one cell)."""
    ref = torch.randn(200, 3, generator=_gen(0), dtype=torch.float64)
    ref[:, 2] = 0.0
    shown = ref[:40].clone()
    before = exposure_diversity(shown, ref, num_cells=8)
    assert before.coverage == 0.875
    for offset in (1e-3, -5.0, 1e6):
        shown[:, 2] = offset
        assert exposure_diversity(shown, ref, num_cells=8) == before
    # A nonzero constant has a rounding-level computed std (~1e-15), not 0: left out as well.
    ref[:, 2], shown[:, 2] = 7.3, 7.3 + 1e-3
    assert exposure_diversity(shown, ref, num_cells=8) == before
    # Every feature constant: one cell, which every shown item is in.
    flat = exposure_diversity(torch.randn(5, 3, generator=_gen(1), dtype=torch.float64),
                              torch.ones(10, 3, dtype=torch.float64))
    assert (flat.num_cells, flat.coverage, flat.num_shown) == (1, 1.0, 5)


def test_select_queries_takes_numpy_and_tensor_numbers_for_screen_and_region(setup):
    post, pool = setup
    plain = select_queries(post, pool, k=2, screen=100)
    assert torch.equal(select_queries(post, pool, k=2, screen=np.int64(100)).indices, plain.indices)
    assert torch.equal(select_queries(post, pool, k=2, screen=torch.tensor(100)).indices, plain.indices)
    region = select_queries(post, pool, strategy="region", region=0.9)
    for value in (np.float64(0.9), torch.tensor(0.9, dtype=torch.float64)):
        assert torch.equal(select_queries(post, pool, strategy="region", region=value).indices, region.indices)
    for value in (np.float32(0.9), torch.tensor(0.9)):  # float32 0.9 is another quantile, but a valid one
        assert select_queries(post, pool, strategy="region", region=value).indices.shape == (1, 2)
    for bad in (0, -3, True, 2.5, "100"):
        with pytest.raises(InputDataError, match="screen"):
            select_queries(post, pool, screen=bad)
    for bad in (1.0, 0, np.float32(1.5), torch.tensor([0.2, 0.9]), "top", True, float("nan")):
        with pytest.raises(InputDataError, match="region"):
            select_queries(post, pool, strategy="region", region=bad)


@pytest.fixture(scope="module")
def duplicated_best():
    """A 3-d pool whose best item (by the posterior mean) appears four times."""
    gen = _gen(11)
    pool = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser([1.0, 0.0, 0.0], rationality=5.0, seed=0), pool, 40, generator=gen)
    post = fit(LinearReward(), data, method="laplace", seed=0, num_samples=64)
    best = int(post.utility(pool).mean(0).argmax())
    return post, torch.cat([pool, pool[best].repeat(3, 1)])


def test_thompson_and_eubo_never_ask_an_item_against_its_own_duplicate(duplicated_best):
    """Both ranked a pair of two copies of the best item first (E[max(u_a, u_a)] = E[u_a]; both draws' argmax)."""
    post, pool = duplicated_best
    n = pool.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    distinct = ~(pool[i] == pool[j]).all(-1)
    i, j = i[distinct], j[distinct]
    U = post.utility(pool).detach()
    eubo = torch.maximum(U[:, i], U[:, j]).mean(0)
    sel = select_queries(post, pool, strategy="eubo", k=1, screen=None)
    assert sel.indices[0].tolist() == [int(i[eubo.argmax()]), int(j[eubo.argmax()])]  # the next best pair
    assert sel.num_candidates == int(distinct.sum()) - 3 * 29  # the copies' pairs are their original's
    for seed in range(10):
        sel = select_queries(post, pool, strategy="thompson", k=1, generator=_gen(seed))
        a, b = ThompsonSampling(post, generator=_gen(seed)).draws.tolist()  # the same two draws
        value = torch.maximum(U[a, i] + U[b, j], U[a, j] + U[b, i])
        assert sel.indices[0].tolist() == [int(i[value.argmax()]), int(j[value.argmax()])]
        for strategy in ("thompson", "eubo", "random"):
            sel = select_queries(post, pool, strategy=strategy, k=3, generator=_gen(seed))
            assert not bool((pool[sel.indices[:, 0]] == pool[sel.indices[:, 1]]).all(-1).any()), strategy


def test_a_pool_without_two_different_items_has_no_pair_to_ask(duplicated_best):
    post, pool = duplicated_best
    with pytest.raises(InputDataError, match="pool_features.*different features"):
        select_queries(post, pool[:1].repeat(5, 1), strategy="eubo")
    two = torch.cat([pool[:1].repeat(3, 1), pool[1:2].repeat(2, 1)])  # 10 pairs, 6 of them the same question
    sel = select_queries(post, two, strategy="eubo", k=1, batch="top")
    assert sel.num_candidates == 1 and sel.indices.tolist() == [[0, 3]]  # the first row of each item
    with pytest.raises(InputDataError, match=r"k: .*different features in the pool \(1\)"):
        select_queries(post, two, strategy="eubo", k=2)


def test_optimize_queries_thompson_redraws_when_both_draws_like_the_same_point():
    """In a box, a linear reward's draws often share their best corner: the query was that corner twice."""
    gen = _gen(12)
    items = torch.randn(40, 2, generator=gen, dtype=torch.float64)
    bounds = torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    small = dict(k=1, num_restarts=2, raw_samples=16)
    unsure = fit(LinearReward(), simulate_comparisons(SimulatedUser([1.0, 0.0], seed=0), items, 10, generator=gen),
                 method="laplace", seed=0, num_samples=64)
    for seed in range(6):  # seeds 1 and 5 drew two draws with the same best corner
        for strategy in ("thompson", "eubo"):
            X, values = optimize_queries(unsure, bounds, strategy=strategy, seed=seed, **small)
            assert X.shape == (1, 2, 2) and values.shape == (1,)
            assert float((X[0, 0] - X[0, 1]).abs().max()) > 1e-4, (strategy, seed, X)
    sure = fit(LinearReward(), simulate_comparisons(SimulatedUser([1.0, 1.0], rationality=3.0, seed=0), items, 20,
                                                    generator=_gen(12)), method="laplace", seed=0, num_samples=64)
    with pytest.raises(InputDataError, match="strategy: .*disagree on the best point.*'thompson' with 8 pairs"):
        optimize_queries(sure, bounds, strategy="thompson", seed=0, **small)


def test_dpp_batch_larger_than_the_dimension_stays_diverse():
    """With k > d the chosen directions span the space after d picks; the rest used to go by quality alone."""
    gen = _gen(13)
    # 40 candidates in 2 directions' span: the 20 best all near 0 degrees, the 20 others near 90 degrees.
    angle = torch.cat([0.05 * torch.randn(20, generator=gen), math.pi / 2 + 0.05 * torch.randn(20, generator=gen)])
    directions = torch.stack([angle.cos(), angle.sin()]).double()  # 2 x M
    vectors = torch.randn(64, 2, generator=gen, dtype=torch.float64) @ directions  # s x M, rank 2
    quality = torch.cat([torch.linspace(2.0, 1.5, 20), torch.linspace(1.0, 0.5, 20)]).double()
    pick = greedy_dpp(quality, vectors, 6)
    assert len(set(pick.tolist())) == 6
    near_zero = (pick < 20).tolist()
    assert near_zero == [True, False] * 3  # rounds of two: one of each direction
    # Through select_queries: each round of d = 2 picks is far from collinear, and less so than the top k.
    w = random_unit_vector(2, generator=gen)
    pool = torch.randn(60, 2, generator=gen, dtype=torch.float64)
    post = fit(LinearReward(), simulate_comparisons(SimulatedUser(w, seed=0), pool, 10, generator=gen),
               method="laplace", seed=0, num_samples=128)
    u = post.utility(pool).detach()

    def abs_corr(idx):
        return torch.corrcoef((u[:, idx[:, 0]] - u[:, idx[:, 1]]).T).abs()

    dpp = select_queries(post, pool, strategy="uncertainty", k=6, batch="dpp")
    top = select_queries(post, pool, strategy="uncertainty", k=6, batch="top")
    assert len({tuple(p) for p in dpp.indices.tolist()}) == 6
    corr = abs_corr(dpp.indices)
    assert all(float(corr[i, i + 1]) < 0.5 for i in (0, 2, 4)), corr
    assert float(corr.mean()) < float(abs_corr(top.indices).mean())


def test_optimize_queries_needs_a_raw_sample_per_restart(setup):
    """Fewer raw samples than restarts was torch.multinomial's RuntimeError from inside optimize_acqf."""
    post, _ = setup
    bounds = torch.tensor([[-1.0] * 5, [1.0] * 5], dtype=torch.float64)
    with pytest.raises(InputDataError, match=r"^raw_samples: expected an integer >= num_restarts \(4\), got 3\.$"):
        optimize_queries(post, bounds, num_restarts=4, raw_samples=3)
    X, values = optimize_queries(post, bounds, num_restarts=2, raw_samples=2, options={"maxiter": 5})
    assert X.shape == (1, 2, 5) and values.shape == (1,)


def test_a_pool_given_as_lists_of_floats_is_read_in_double(setup):
    """A list pool was parsed in float32: two items 1e-9 apart became one, and the only pair was refused."""
    post, pool = setup
    near = [[1.0, 0.0, 0.0, 0.0, 0.0], [1.0 + 1e-9, 0.0, 0.0, 0.0, 0.0]]
    sel = select_queries(post, near)
    assert sel.indices.tolist() == [[0, 1]]
    assert sel.features(near).dtype == torch.float64
    assert torch.equal(sel.features(near), torch.tensor(near, dtype=torch.float64)[sel.indices])
    listed = select_queries(post, pool.tolist(), k=2)
    assert torch.equal(listed.indices, select_queries(post, pool, k=2).indices)


def test_optimize_queries_names_an_empty_reference_pool_and_bad_bounds(setup):
    """An empty reference pool was reported as ``pool_utility``; NaN or swapped bounds as a wrong shape."""
    post, _ = setup
    bounds = torch.tensor([[-1.0] * 5, [1.0] * 5], dtype=torch.float64)
    with pytest.raises(InputDataError, match=r"^reference_pool: expected a non-empty `n x 5` pool"):
        optimize_queries(post, bounds, strategy="region", reference_pool=torch.zeros(0, 5, dtype=torch.float64))
    with pytest.raises(InputDataError, match=r"^bounds: expected finite lower and upper bounds, got \[\[nan"):
        optimize_queries(post, torch.full((2, 5), math.nan, dtype=torch.float64))
    with pytest.raises(InputDataError, match=r"^bounds: expected lower < upper in every feature, got lower \[1\.0"):
        optimize_queries(post, bounds.flip(0))
    with pytest.raises(InputDataError, match=r"^bounds: expected shape `2 x 5` lower and upper bounds, got \(2, 4\)"):
        optimize_queries(post, bounds[:, :4])


def test_batch_helpers_take_numpy_integers_and_refuse_non_finite_vectors():
    """k as a NumPy integer was refused (check_int takes it everywhere else); NaN similarity vectors were used."""
    gen = torch.Generator().manual_seed(0)
    quality = torch.rand(6, generator=gen, dtype=torch.float64)
    vectors = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    assert torch.equal(greedy_dpp(quality, vectors, np.int64(3)), greedy_dpp(quality, vectors, 3))
    assert torch.equal(greedy_dpp(quality, vectors, torch.tensor(3)), greedy_dpp(quality, vectors, 3))
    probs = torch.rand(16, 6, 1, generator=gen, dtype=torch.float64)
    probs = torch.cat([probs, 1 - probs], -1)
    assert torch.equal(greedy_joint_information(probs, np.int64(2))[0], greedy_joint_information(probs, 2)[0])
    for bad in (True, 2.0, 0, 7):
        with pytest.raises(InputDataError, match="^k: "):
            greedy_dpp(quality, vectors, bad)
    vectors[3, 2] = math.nan
    with pytest.raises(InputDataError, match=r"^vectors: expected finite real per-draw values, got NaN"):
        greedy_dpp(quality, vectors, 2)
    quality[1] = math.inf
    with pytest.raises(InputDataError, match=r"^quality: expected finite real qualities, got NaN"):
        greedy_dpp(quality, vectors.nan_to_num(), 2)


def test_exposure_diversity_reports_no_negative_zero():
    """All shown items in one cell gave entropy_bits = -0.0 (and normalized_entropy -0.0) in reports."""
    ref = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for shown, reference in ((ref[:1].expand(4, 2), ref), (ref[:3], ref[:1])):
        figures = exposure_diversity(shown, reference)
        for name in ("entropy_bits", "normalized_entropy", "reference_entropy_bits"):
            value = getattr(figures, name)
            assert math.copysign(1.0, value) == 1.0, (name, value)


def test_run_active_learning_names_a_non_finite_pool(setup):
    """A NaN in the pool, or a pool of another width than the user's weights, was reported by the user as
    field ``x``, not the ``pool`` passed."""
    pool = torch.randn(6, 5, generator=_gen(), dtype=torch.float64)
    pool[2, 1] = math.nan
    with pytest.raises(InputDataError, match=r"^pool: expected finite"):
        run_active_learning(SimulatedUser(torch.ones(5, dtype=torch.float64)), pool, num_queries=2)
    with pytest.raises(InputDataError, match=r"^pool: expected `n x 3` candidate items \(the user's 3 weights\)"):
        run_active_learning(SimulatedUser(torch.ones(3, dtype=torch.float64)), pool.nan_to_num(), num_queries=2)


@pytest.mark.parametrize("query_type", ["pair", "rating"])
@pytest.mark.parametrize("strategy", ["random", "thompson"])
def test_exploratory_queries_of_random_and_thompson_are_scored(setup, strategy, query_type):
    """Their exploratory queries' scores were NaN, against "`k` value of each query under the strategy"."""
    post, pool = setup
    for exploration in (0.5, 1.0):
        sel = select_queries(post, pool, strategy=strategy, query_type=query_type, k=6, exploration=exploration,
                             generator=_gen(3))
        assert bool(sel.exploratory.any())
        assert bool(torch.isfinite(sel.scores).all()), sel.scores
        if strategy == "random":
            assert bool(((sel.scores >= 0) & (sel.scores < 1)).all())
        again = select_queries(post, pool, strategy=strategy, query_type=query_type, k=6, exploration=exploration,
                               generator=_gen(3))
        assert torch.equal(sel.indices, again.indices) and torch.equal(sel.scores, again.scores)


def _questions(pool, indices):
    """Each query as the (unordered) feature values it asks about."""
    rows = [tuple(tuple(pool[i].tolist()) for i in (q if isinstance(q, list) else [q])) for q in indices.tolist()]
    return [tuple(sorted(r)) for r in rows]


@pytest.mark.parametrize("batch", ["top", "dpp", "joint"])
def test_a_batch_never_asks_the_same_question_twice_through_duplicated_rows(setup, batch):
    """Pairs of copies of two items were distinct candidates: "top" (and "joint") filled the batch with one
    question asked several times, by pool indices (0, 4), (1, 3), (1, 4)."""
    post, pool = setup
    dup = torch.cat([pool[:1].repeat(3, 1), pool[1:2].repeat(2, 1), pool[2:3], pool[3:4]])  # 4 distinct items
    sel = select_queries(post, dup, strategy="eig", k=3, batch=batch)
    assert len(set(_questions(dup, sel.indices))) == 3, sel.indices.tolist()
    assert sel.num_candidates == 6  # 4 distinct items: 6 questions
    assert set(sel.indices.reshape(-1).tolist()) <= {0, 3, 5, 6}  # each item by its first row


@pytest.mark.parametrize(("strategy", "query_type"), [("random", "pair"), ("random", "rating"), ("eubo", "pair"),
                                                      ("thompson", "pair"), ("thompson", "rating")])
def test_exploration_and_every_strategy_keep_duplicated_rows_to_one_question(setup, strategy, query_type):
    """Exploratory and random queries could also draw copies of a question already in the batch."""
    post, pool = setup
    dup = torch.cat([pool[:4]] * 3)
    k = 6 if query_type == "pair" else 4
    for seed in range(5):
        sel = select_queries(post, dup, strategy=strategy, k=k, query_type=query_type, exploration=0.5,
                             generator=_gen(seed), batch="top")
        assert len(set(_questions(dup, sel.indices))) == k, (seed, sel.indices.tolist())
    with pytest.raises(InputDataError, match=r"^k: expected at most the number of items with different features"):
        select_queries(post, dup, strategy="random", k=5, query_type="rating", generator=_gen())



def test_joint_information_of_float32_probabilities_stays_finite():
    """A configuration's probability (a product over the chosen queries) underflowed in float32 after ~130
    picks: importance weights 1/0 gave inf, then NaN bits; the picks match those of the same numbers in double."""
    gen = _gen(0)
    p = torch.rand(8, 160, 1, generator=gen) * 0.5 + 0.25
    probs = torch.cat([p, 1 - p], -1)  # float32
    picks, bits = greedy_joint_information(probs, 150, max_configurations=256, generator=_gen(1))
    assert bool(torch.isfinite(bits).all())
    picks64, bits64 = greedy_joint_information(probs.double(), 150, max_configurations=256, generator=_gen(1))
    assert torch.equal(picks, picks64) and torch.equal(bits, bits64)
