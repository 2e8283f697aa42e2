"""Acquisition at scale: pools' pairs scored in chunks (same results), a clear limit on the number of pairs,
a progress bar for long Monte Carlo scoring, the like threshold's median; BoTorch's ``X_pending=`` in the
constructors; exposure diversity of pair queries' features."""

from __future__ import annotations

import pytest
import torch

from papa_bayes import LinearReward, fit
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
    all_pairs,
    exposure_diversity,
    select_queries,
)
from papa_bayes.acquisition import preferred, selection
from papa_bayes.exceptions import InputDataError
from papa_bayes.users import SimulatedUser, random_unit_vector, simulate_comparisons

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    d = 4
    w = random_unit_vector(d, generator=gen)
    pool = torch.randn(150, d, generator=gen, dtype=torch.float64)
    data = simulate_comparisons(SimulatedUser(w, seed=1), pool, 12, generator=gen)
    return fit(LinearReward(), data, method="laplace", num_samples=128, seed=0), pool


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _same(a, b):
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.information_bits, b.information_bits)


@pytest.mark.parametrize("strategy", ["eig", "region", "eubo", "argmax", "uncertainty", "thompson"])
def test_pairs_scored_in_chunks_give_exactly_the_unchunked_selection(setup, monkeypatch, strategy):
    post, pool = setup  # 11,175 pairs: one chunk by default, 175 chunks of 64 below
    kwargs = dict(strategy=strategy, k=4, screen=300, generator=_gen(3))
    whole = select_queries(post, pool, **kwargs)
    monkeypatch.setattr(selection, "_PAIR_CHUNK", 64)
    chunked = select_queries(post, pool, **dict(kwargs, generator=_gen(3)))
    _same(whole, chunked)


def test_screen_scores_in_chunks_equal_every_pair_at_once(setup, monkeypatch):
    post, pool = setup
    U = post.utility(pool).double()
    first, second = all_pairs(pool.shape[0])
    for strategy in ("eig", "eubo", "region"):
        acq = selection.make_acquisition(strategy, post, pool_utility=U)
        whole = selection._screen_scores(strategy, acq, U, first, second, post.link)
        monkeypatch.setattr(selection, "_PAIR_CHUNK", 1000)  # not a divisor of 11,175: a short last chunk
        chunked = selection._screen_scores(strategy, acq, U, first, second, post.link)
        monkeypatch.undo()
        assert whole.shape == (first.numel(),) and torch.equal(whole, chunked)


def test_pairs_of_large_pools_are_not_kept_in_the_cache():
    # The cache held the pairs of the last 8 pool sizes: 1.6 GB after select_queries on pools of ~5,000 items.
    selection._all_pairs.cache_clear()
    first, second = all_pairs(2600)  # 3.4 million pairs, 54 MB
    assert first.numel() == 2600 * 2599 // 2 and int(second[-1]) == 2599
    assert selection._all_pairs.cache_info().currsize == 0
    small = all_pairs(30)
    assert selection._all_pairs.cache_info().currsize == 1 and all_pairs(30)[0] is small[0]


def test_pool_with_more_pairs_than_the_limit_is_refused_with_its_size_and_memory(setup, monkeypatch):
    post, pool = setup
    monkeypatch.setattr(selection, "MAX_PAIRS", 10_000)
    with pytest.raises(InputDataError, match=r"pool_features: .*at most 141 distinct items.*"
                                             r"got 150 distinct items: 11,175 pairs, about \d+ GB"):
        select_queries(post, pool, k=2)
    dup = torch.cat([pool[:140], pool[:5]])  # copies are one item: 140 distinct, 9,730 pairs
    assert select_queries(post, dup, k=2).num_candidates == 140 * 139 // 2
    assert select_queries(post, pool, k=2, query_type="rating").indices.shape == (2,)  # items only: no limit


def test_the_pair_limit_is_documented_and_sits_at_about_14000_items():
    from papa_bayes.acquisition import MAX_PAIRS

    assert MAX_PAIRS == 100_000_000 and "MAX_PAIRS" in select_queries.__doc__
    selection._check_pair_count(14_142, 14_142)  # 99,991,011 pairs
    with pytest.raises(InputDataError, match=r"at most 14,142 distinct items .* got 20,000 distinct items "
                                             r"\(20,500 rows\): 199,990,000 pairs, about 11 GB"):
        selection._check_pair_count(20_000, 20_500)


def test_monte_carlo_over_every_pair_shows_a_progress_bar(setup, capsys):
    post, pool = setup
    shown = select_queries(post, pool[:40], k=2, screen=None, chunk_size=100, progress_bar=True)
    err = capsys.readouterr().err
    assert "Scoring queries" in err and "8/8" in err  # 780 pairs in chunks of 100
    quiet = select_queries(post, pool[:40], k=2, screen=None, chunk_size=100)  # default: off below 1e6
    assert "Scoring queries" not in capsys.readouterr().err
    assert torch.equal(shown.indices, quiet.indices)
    with pytest.raises(InputDataError, match="progress_bar"):
        select_queries(post, pool[:40], k=2, progress_bar="yes")


@pytest.mark.parametrize("n", [1, 2, 7, 8, 1001, 1000])
@pytest.mark.parametrize("block", [None, 2500])
def test_like_threshold_median_is_torch_quantile_bit_for_bit(n, block, monkeypatch):
    if block is not None:
        monkeypatch.setattr(preferred, "_MEDIAN_BLOCK", block)  # blocks of 1-2500 rows
    gen = _gen(n)
    values = torch.randn(33, n, generator=gen, dtype=torch.float64)
    for v in (values, values.round(), (values * 2).round() / 2):  # with ties too
        assert torch.equal(preferred._row_median(v), torch.quantile(v, 0.5, dim=-1))


def _pending_cases(post, pool):
    anchor = pool[:1]
    return [
        (PairwiseInformationGain, {}, anchor),
        (HoulsbyInformationGain, {}, anchor),
        (UtilityDifferenceVariance, {}, anchor),
        (ExpectedUtilityOfBestOption, {}, anchor),
        (ExpectedUtilityOfBestOption, {"q": 3}, pool[:2]),
        (ThompsonSampling, {"draws": [0, 5]}, anchor),
        (PreferredRegionInformation, {"pool": pool}, anchor),
        (ArgmaxInformation, {"pool": pool}, anchor),
    ]


def test_x_pending_in_the_constructor_is_set_x_pending(setup):
    post, pool = setup
    X = pool[10:30].unsqueeze(-2)  # 20 x 1 x d: each valued against the pending item(s)
    for cls, kwargs, pending in _pending_cases(post, pool):
        acq = cls(post, X_pending=pending, **kwargs)
        later = cls(post, **kwargs)
        later.set_X_pending(pending)
        assert torch.equal(acq.X_pending, pending), cls.__name__
        values = acq(X)
        assert values.shape == (20,) and torch.equal(values, later(X)), cls.__name__
    rnd = RandomQueries(post, generator=_gen(1), X_pending=pool[:1])
    assert rnd(X).shape == (20,) and torch.equal(rnd.X_pending, pool[:1])
    assert PairwiseInformationGain(post, X_pending=None).X_pending is None


def test_x_pending_in_the_constructor_is_checked_as_set_x_pending(setup):
    post, pool = setup
    with pytest.raises(InputDataError, match="X_pending"):  # a pair has room for one pending item
        PairwiseInformationGain(post, X_pending=pool[:2])
    with pytest.raises(InputDataError, match="X_pending"):  # wrong width
        HoulsbyInformationGain(post, X_pending=pool[:1, :2])
    with pytest.raises(InputDataError, match="X_pending"):  # a like/dislike query holds one item
        RatingInformationGain(post, threshold=0.0, X_pending=pool[:1])
    with pytest.raises(InputDataError, match="X_pending"):  # checked against the instance's query size
        UtilityDifferenceVariance(post, query_size=1, threshold=0.0, X_pending=pool[:1])


def test_exposure_diversity_of_pair_queries_features_counts_both_items(setup):
    post, pool = setup
    sel = select_queries(post, pool, k=6)
    feats = sel.features(pool)  # 6 x 2 x d
    figures = exposure_diversity(feats, pool, num_cells=8)
    assert figures == exposure_diversity(feats.reshape(-1, pool.shape[1]), pool, num_cells=8)
    assert figures.num_shown == 12
    items = select_queries(post, pool, k=3, query_type="rating")
    assert exposure_diversity(items.features(pool), pool, num_cells=8).num_shown == 3
    with pytest.raises(InputDataError, match=r"shown: expected shape `m x 4` \(items\) or `k x q x 4`"):
        exposure_diversity(feats[..., :3], pool)
