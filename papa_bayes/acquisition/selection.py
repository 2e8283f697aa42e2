"""Query selection over a discrete pool: every pair (or item) scored, a diverse batch of k.

The key to speed: the utility draws at the pool are computed once (`s x n`); a
pair's value is a function of two columns of that table. For a 500-item pool and
256 draws:

1. the closed form on the draws' Gaussian moments (mean `n`, covariance `n x n`)
   scores all 124,750 pairs in a few milliseconds (Houlsby's BALD; analytic EUBO;
   the exact variance for uncertainty sampling);
2. the best ``screen`` pairs (default 2,048) are re-scored by Monte Carlo over every
   posterior draw, which is what finally decides; ``screen=None`` scores every pair by
   Monte Carlo (in chunks; about 1.2-1.4 s at this size on one thread, against
   30-55 ms for the screened selection; benchmarks/results/bench_queries.md).

The batch of k is then chosen with diversity (:mod:`papa_bayes.acquisition.batch`),
and an ``exploration`` share of it is drawn uniformly at random.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from papa_bayes.acquisition.base import DrawsAcquisitionFunction, outcome_log_probs
from papa_bayes.acquisition.baselines import RandomQueries, ThompsonSampling, UtilityDifferenceVariance
from papa_bayes.acquisition.batch import pick_batch
from papa_bayes.acquisition.closed_form import (
    _gaussian_expected_max,
    _pair_moments,
    houlsby_information_gain,
    utility_moments,
)
from papa_bayes.acquisition.information import (
    PairwiseInformationGain,
    RatingInformationGain,
    information_from_log_probs,
)
from papa_bayes.acquisition.preferred import (
    ArgmaxInformation,
    ExpectedUtilityOfBestOption,
    PreferredRegionInformation,
    check_pool_utility,
    rating_threshold,
)
from papa_bayes.checks import check_bool, check_float, check_int
from papa_bayes.exceptions import InputDataError, ModelError
from papa_bayes.inference.posterior import RewardPosterior, check_features, check_posterior

__all__ = [
    "STRATEGIES", "MAX_PAIRS", "QuerySelection", "make_acquisition", "select_queries", "rating_threshold", "all_pairs",
]

#: Query-selection strategies. "eig": information about the reward (BALD);
#: "region": information about the preferred region; "argmax": information about
#: the best pool item; "eubo": expected utility of the best option; baselines
#: "uncertainty", "thompson", "random".
STRATEGIES = ("eig", "region", "argmax", "eubo", "uncertainty", "thompson", "random")
_ALIASES = {"bald": "eig", "information": "eig", "variance": "uncertainty"}
_INFORMATION = ("eig", "region", "argmax")
QUERY_TYPES = ("pair", "rating")


@dataclass(frozen=True)
class QuerySelection:
    """The chosen queries.

    Attributes:
        indices: `k x 2` pool indices of the pairs (ask "first or second?"), or `k`
            pool indices of items (like/dislike).
        scores: `k` value of each query under the strategy (bits for the information
            strategies; noise units for EUBO and Thompson; squared noise units for
            uncertainty; uniform draws for random).
        information_bits: `k` expected information about the reward (MC BALD) of
            each query alone: comparable across strategies, at most 1 bit (log2 3
            with ties).
        exploratory: `k` bool, True where the query was drawn at random.
        strategy, query_type: as asked.
        num_candidates: pairs (or items) scored: one pair per two different
            feature vectors of the pool (one item per feature vector); copies of
            a row are represented by its first row.
        num_refined: how many of them were scored by Monte Carlo over every draw.
        seconds: wall time of the selection.
        details: extras (``batch_information_bits`` for joint batches, ...).
    """

    indices: Tensor
    scores: Tensor
    information_bits: Tensor
    exploratory: Tensor
    strategy: str
    query_type: str
    num_candidates: int
    num_refined: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def features(self, pool_features: Tensor) -> Tensor:
        """The queries' features: `k x 2 x d` (pairs) or `k x 1 x d` (items)."""
        idx = self.indices if self.indices.dim() == 2 else self.indices.unsqueeze(-1)
        try:  # a list or array in double, as select_queries read it
            pool = pool_features if isinstance(pool_features, Tensor) else torch.as_tensor(
                pool_features, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise InputDataError("pool_features", "the `n x d` pool the queries index",
                                 type(pool_features).__name__) from None
        if pool.dim() < 1 or (idx.numel() and int(idx.max()) >= pool.shape[0]):
            largest = int(idx.max()) if idx.numel() else 0
            raise InputDataError("pool_features", f"the `n x d` pool the queries index (n > {largest})",
                                 tuple(pool.shape))
        return pool[idx]


#: Largest pool whose pairs are cached (2 million pairs, 32 MB of indices): a cache of 8 pools of 5,000 items
#: held 1.6 GB after select_queries had returned.
_CACHED_PAIRS_MAX_N = 2000


def all_pairs(n: int) -> tuple[Tensor, Tensor]:
    """Every unordered pair i < j of n items: two `n(n-1)/2` long tensors (do not modify).

    16 bytes per pair (int64 indices): 200 MB at n = 5,000.
    """
    n = check_int("n", n, minimum=0)
    if n > _CACHED_PAIRS_MAX_N:
        return _pairs_of(n)
    return _all_pairs(n)


def _pairs_of(n: int) -> tuple[Tensor, Tensor]:
    idx = torch.triu_indices(n, n, offset=1)
    return idx[0], idx[1]


@functools.lru_cache(maxsize=8)
def _all_pairs(n: int) -> tuple[Tensor, Tensor]:
    return _pairs_of(n)


def _distinct_items(pool: Tensor) -> Tensor:
    """The first row of each distinct feature vector of `n x d` ``pool``, ascending: `m` indices (m <= n)."""
    n = pool.shape[0]
    row = torch.unique(pool, dim=0, return_inverse=True)[1]  # one id per distinct feature vector
    num_distinct = int(row.max()) + 1
    if num_distinct == n:  # no duplicates: every row
        return torch.arange(n)
    first = torch.full((num_distinct,), n, dtype=torch.long).scatter_reduce(0, row, torch.arange(n), reduce="amin")
    return first.sort().values


def _distinct_pairs(pool: Tensor) -> tuple[Tensor, Tensor]:
    """One unordered pair i < j of `n x d` ``pool`` rows per pair of different feature vectors: two equally long
    tensors.

    A pair of two equal items asks nothing, yet EUBO and Thompson sampling rank it
    first when the item is the best (``E[max(u_a, u_a)] = E[u_a]``; both draws'
    argmax on the same features): duplicated rows would otherwise be asked against
    each other. And a pair of copies of two items asks what the pair of the items
    themselves asks: kept, one question filled several places of a batch (``"top"``
    took every copy of the best pair). Each feature vector is represented by its first row.
    """
    keep = _distinct_items(pool)
    _check_pair_count(keep.shape[0], pool.shape[0])
    first, second = all_pairs(keep.shape[0])
    if keep.shape[0] == pool.shape[0]:  # no duplicates: every pair
        return first, second
    return keep[first], keep[second]


#: Most pairs :func:`select_queries` scores: 10^8, the pairs of about 14,000 distinct items. Scoring them
#: takes about 40 bytes per pair (indices, closed-form scores, candidate ids) and the `n x n` covariance of the
#: draws: about 6 GB there; beyond, the process would run out of memory (killed, with no error) on most machines.
MAX_PAIRS = 100_000_000
_BYTES_PER_PAIR = 40


def _check_pair_count(num_items: int, num_rows: int) -> None:
    """InputDataError (field ``pool_features``) when the pairs of ``num_items`` distinct items exceed MAX_PAIRS."""
    pairs = num_items * (num_items - 1) // 2
    if pairs > MAX_PAIRS:
        largest = int((1 + math.isqrt(1 + 8 * MAX_PAIRS)) // 2)
        gb = (_BYTES_PER_PAIR * pairs + 8 * num_items**2) / 1e9
        rows = "" if num_rows == num_items else f" ({num_rows:,} rows)"
        raise InputDataError(
            "pool_features",
            f"at most {largest:,} distinct items for pair queries ({MAX_PAIRS:,} pairs, about "
            f"{(_BYTES_PER_PAIR * MAX_PAIRS + 8 * largest**2) / 1e9:.0f} GB to score): subsample the pool "
            "(e.g. a random 5,000 items per round) or ask like/dislike queries (query_type='rating')",
            f"{num_items:,} distinct items{rows}: {pairs:,} pairs, about {gb:.0f} GB",
        )


def _strategy(strategy: str) -> str:
    if not isinstance(strategy, str):
        raise InputDataError("strategy", f"one of {STRATEGIES}", strategy)
    name = _ALIASES.get(strategy, strategy)
    if name not in STRATEGIES:
        raise InputDataError("strategy", f"one of {STRATEGIES}", strategy)
    return name


def check_strategy(strategy: str, query_type: str | None, *, field: str = "strategy") -> str:
    """The strategy's name (aliases resolved), refused for a query type it cannot score.

    Args:
        strategy: one of :data:`STRATEGIES` or an alias.
        query_type: ``"pair"``, ``"rating"``, or None (not known yet: any strategy).
        field: the option named in the errors (e.g. ``"--strategy"`` for the CLI).

    Raises:
        InputDataError: an unknown strategy, or "eubo" for like/dislike queries.
    """
    try:
        name = _strategy(strategy)
    except InputDataError:
        raise InputDataError(field, f"one of {STRATEGIES}", strategy) from None
    if name == "eubo" and query_type == "rating":
        raise InputDataError(field, "a strategy for like/dislike queries (EUBO needs two options)", strategy)
    return name


def make_acquisition(
    strategy: str,
    posterior: RewardPosterior,
    *,
    query_type: str = "pair",
    pool: Tensor | None = None,
    pool_utility: Tensor | None = None,
    region: str | float = "auto",
    generator: torch.Generator | None = None,
    rater: int | None = None,
    membership_softness: float = 0.0,
) -> DrawsAcquisitionFunction:
    """The BoTorch acquisition function behind a strategy.

    Args:
        strategy: one of :data:`STRATEGIES`.
        posterior: the reward posterior.
        query_type: ``"pair"`` (`batch x 2 x d` input) or ``"rating"`` (`batch x 1 x d`).
        pool, pool_utility: reference items (or their `s x n` draws) for "region"
            (its quantile), "argmax" (among which the best is sought) and for the
            like threshold of rating queries without ratings yet.
        region: see :func:`~papa_bayes.acquisition.preferred.region_thresholds`.
        generator: for "random" and "thompson".
        rater: whose utility the queries are about (multi-rater models; default the
            population's). The acquisition then works on
            ``posterior.as_botorch_model(rater=rater)``.
        membership_softness: "region" only: 0 for the step membership, a width for
            a smooth one (see :class:`~papa_bayes.acquisition.PreferredRegionInformation`).
    """
    strategy = _strategy(strategy)
    check_posterior(posterior)
    membership_softness = check_float("membership_softness", membership_softness, minimum=0.0)
    if membership_softness > 0 and strategy != "region":
        raise InputDataError("membership_softness", "0 unless the strategy is 'region'",
                             f"{membership_softness} with strategy {strategy!r}")
    if query_type not in QUERY_TYPES:
        raise InputDataError("query_type", f"one of {QUERY_TYPES}", query_type)
    q = 2 if query_type == "pair" else 1
    rater = _check_rater(rater)
    model = posterior if rater is None else posterior.as_botorch_model(rater=rater)
    if pool_utility is not None:
        pool_utility = check_pool_utility(posterior, pool_utility)
    elif pool is not None:
        pool = posterior.check_features(pool, "pool")
        if pool.shape[0] == 0:  # named here: optimize_queries reports it as its reference_pool
            raise InputDataError("pool", f"a non-empty `n x {posterior.num_features}` pool", "an empty pool")
        with torch.no_grad():
            pool_utility = posterior.utility(pool, rater=rater)
    threshold = None
    if q == 1 and strategy in ("eig", "uncertainty"):
        try:
            threshold = rating_threshold(posterior, pool_utility)
        except ModelError as err:  # no ratings yet and no pool to place a threshold
            raise ModelError(f"{err} Or give reference items (pool= here, reference_pool= in optimize_queries): "
                             "their per-draw median utility is the like threshold then.") from None
    if strategy == "eig":
        return PairwiseInformationGain(model) if q == 2 else RatingInformationGain(model, threshold=threshold)
    if strategy == "region":
        return PreferredRegionInformation(model, region=region, query_size=q, pool_utility=pool_utility,
                                          membership_softness=membership_softness)
    if strategy == "argmax":
        return ArgmaxInformation(model, query_size=q, pool_utility=pool_utility)
    if strategy == "eubo":
        check_strategy(strategy, query_type)  # EUBO compares two options: refused for ratings
        return ExpectedUtilityOfBestOption(model)
    if strategy == "uncertainty":
        return UtilityDifferenceVariance(model, query_size=q, threshold=threshold)
    if strategy == "thompson":
        return ThompsonSampling(model, generator=generator, query_size=q)
    return RandomQueries(model, generator=generator, query_size=q)


def _check_rater(rater: Any) -> int | None:
    """None (the population) or a rater id (a non-negative integer)."""
    if rater is None:
        return None
    return check_int("rater", rater, minimum=0, expected="None or a rater id (an integer >= 0)")


def _check_pool(pool_features: Any, d: int, query_type: str) -> Tensor:
    if pool_features is None:
        raise InputDataError("pool_features", f"an `n x {d}` tensor of candidate items", None)
    # check_features reads lists and arrays in double: through float32, items 1e-9 apart would merge.
    pool = check_features(pool_features, d, "pool_features").detach()
    if pool.shape[0] == 0:
        raise InputDataError("pool_features", f"a non-empty `n x {d}` pool", "an empty pool")
    need = 2 if query_type == "pair" else 1
    if pool.shape[0] < need:
        raise InputDataError("pool_features", f"at least {need} items for {query_type} queries", pool.shape[0])
    return pool


#: Monte Carlo scoring of more candidates than this shows a progress bar by default (about 10 s and more).
_PROGRESS_MIN_CANDIDATES = 1_000_000


def _chunked(fn, first: Tensor, second: Tensor | None, U: Tensor, chunk: int, progress_bar: bool = False) -> Tensor:
    out = []
    starts = range(0, first.shape[0], chunk)
    if progress_bar:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="Scoring queries", unit="chunk")
    for lo in starts:
        f = U.index_select(1, first[lo : lo + chunk])
        out.append(fn(f) if second is None else fn(f, U.index_select(1, second[lo : lo + chunk])))
    return torch.cat(out) if out else U.new_zeros(0)


#: Pairs per chunk of the closed-form scores (screen, exact variance, Thompson): their ~10 temporaries of
#: 8 bytes per pair stay near 80 MB each whatever the pool (unchunked, 1.2 GB at a 5,000-item pool's
#: 12.5 million pairs). A multiple of the SIMD width, so that every pair's value is computed as unchunked.
_PAIR_CHUNK = 1 << 20


def _per_pair(fn, first: Tensor, second: Tensor, like: Tensor) -> Tensor:
    """``fn(first, second)`` over chunks of :data:`_PAIR_CHUNK` pairs (elementwise ``fn``): `P` like ``like``."""
    out = torch.empty(first.shape[0], dtype=like.dtype)
    for lo in range(0, first.shape[0], _PAIR_CHUNK):
        out[lo : lo + _PAIR_CHUNK] = fn(first[lo : lo + _PAIR_CHUNK], second[lo : lo + _PAIR_CHUNK])
    return out


def _screen_scores(
    strategy: str, acq: DrawsAcquisitionFunction, U: Tensor, first: Tensor, second: Tensor, link: str
) -> Tensor:
    """Closed-form value of every pair from the draws' Gaussian moments: `P`."""
    # The draws are checked once (utility_moments); their moments and the pool's pairs need no second pass.
    mean, cov = utility_moments(U)
    hz = None
    if strategy == "region":
        # I(y; z_a, z_b) <= H(z_a) + H(z_b): pairs of items with certain membership score 0.
        z = acq.membership(U).double().mean(0)
        hz = -(torch.special.xlogy(z, z) + torch.special.xlogy(1 - z, 1 - z)) / math.log(2.0)

    def score(f: Tensor, g: Tensor) -> Tensor:
        m, v = _pair_moments(mean, cov, f, g)
        if strategy == "eubo":
            return _gaussian_expected_max(mean[f], mean[g], v)
        bald = houlsby_information_gain(m, v, link=link)
        return bald if hz is None else torch.minimum(bald, hz[f] + hz[g])

    return _per_pair(score, first, second, mean)


def _random_distinct(num: int, k: int, exclude: Tensor, generator: torch.Generator) -> Tensor:
    """k distinct indices in [0, num) not in ``exclude`` (uniform)."""
    perm = torch.randperm(num, generator=generator)
    if exclude.numel():
        perm = perm[~torch.isin(perm, exclude)]
    return perm[:k]


def select_queries(
    posterior: RewardPosterior,
    pool_features: Tensor,
    *,
    strategy: str = "eig",
    k: int = 1,
    query_type: str = "pair",
    exploration: float = 0.0,
    generator: torch.Generator | None = None,
    batch: str = "auto",
    screen: int | None = 2048,
    region: str | float = "auto",
    chunk_size: int | None = None,
    rater: int | None = None,
    progress_bar: bool | None = None,
) -> QuerySelection:
    """Choose the k most useful queries among all pairs (or items) of a pool.

    Args:
        posterior: any :class:`~papa_bayes.RewardPosterior`.
        pool_features: `n x d` candidate items. Rows with equal features are one item:
            no batch asks the same question twice (the first of the rows is returned).
        strategy: one of :data:`STRATEGIES` (``"bald"`` is an alias of ``"eig"``).
        k: number of queries.
        query_type: ``"pair"`` (all n(n-1)/2 pairs) or ``"rating"`` (like/dislike on
            single items).
        exploration: share of the k queries drawn uniformly at random (each slot
            independently with this probability), against echo chambers.
        generator: randomness for "random", "thompson" and exploration (required
            for those; never global state).
        batch: ``"auto"`` (``"joint"`` for "eig", ``"dpp"`` otherwise), ``"joint"``
            (greedy joint information, BatchBALD; "eig" only), ``"dpp"`` (greedy DPP
            on posterior correlation), ``"top"`` (the k best, no diversity).
        screen: pairs kept after the closed-form screen for Monte Carlo scoring;
            None scores every pair by Monte Carlo: some 10 microseconds per pair at
            256 draws on one thread, about 2 minutes for the 12.5 million pairs of a
            5,000-item pool (against seconds screened).
        region: the preferred region for "region" (see
            :func:`~papa_bayes.acquisition.preferred.region_thresholds`).
        chunk_size: pairs per Monte Carlo chunk (default about 2M draws x pairs).
        rater: whose utility the queries should teach about, for a multi-rater
            posterior (e.g. ``HierarchicalLinearReward``); default the population's.
        progress_bar: a tqdm bar over the Monte Carlo scoring. None (default): on
            when it scores more than a million candidates.

    Pool size: the pairs' closed-form scores are computed in chunks, so memory
    grows as about 40 bytes per pair plus the `n x n` covariance of the draws
    (measured peak with 256 draws and d = 64: 1.0 GB at n = 5,000, 12.5 million
    pairs; 2.8 GB at n = 10,000). Pools of more than about 14,000 distinct items
    (:data:`MAX_PAIRS`, 10^8 pairs, about 6 GB) are refused for pair queries
    with an InputDataError: subsample them, or ask like/dislike queries, whose
    cost grows with `s x n` only.

    Returns:
        A :class:`QuerySelection`.

    Raises:
        InputDataError: a pool of another dimension, an empty pool, a pool of fewer
            than 2 distinct items for pairs or of more than :data:`MAX_PAIRS` pairs,
            k larger than the number of pairs of distinct items (of distinct items),
            an unknown strategy, a missing generator.

    Example:
        A batch of 3 diverse pairs from a 50-item pool, after 10 answers:

        >>> import torch
        >>> from papa_bayes import LinearReward, fit
        >>> from papa_bayes.users import SimulatedUser, simulate_comparisons
        >>> gen = torch.Generator().manual_seed(0)
        >>> pool = torch.randn(50, 4, generator=gen, dtype=torch.float64)
        >>> data = simulate_comparisons(SimulatedUser([1.0, 0.0, 0.0, 0.0]), pool, 10, generator=gen)
        >>> post = fit(LinearReward(), data, seed=0)
        >>> from papa_bayes.acquisition import select_queries
        >>> sel = select_queries(post, pool, strategy="eig", k=3)
        >>> sel.indices.shape  # `k x 2` pool indices: ask "first or second?"
        torch.Size([3, 2])
        >>> bool((sel.information_bits > 0).all() and (sel.information_bits <= 1).all())
        True
        >>> ratings = select_queries(post, pool, query_type="rating", k=2)  # like/dislike
        >>> ratings.indices.shape
        torch.Size([2])
    """
    start = time.perf_counter()
    check_posterior(posterior)
    strategy = _strategy(strategy)
    if query_type not in QUERY_TYPES:
        raise InputDataError("query_type", f"one of {QUERY_TYPES}", query_type)
    pool = _check_pool(pool_features, posterior.num_features, query_type)
    n = pool.shape[0]
    if query_type == "pair":
        first, second = _distinct_pairs(pool)  # neither two equal items nor copies of a pair already there
        if first.numel() == 0:
            raise InputDataError("pool_features", "at least 2 items with different features for pair queries",
                                 f"{n} items, all with the same features")
    else:
        first, second = _distinct_items(pool), None  # a copy of an item asks what the item asks
    num_candidates = first.numel()
    k = check_int("k", k, expected="a positive integer")
    if k > num_candidates:
        what = "pairs of items with different features" if query_type == "pair" else "items with different features"
        raise InputDataError("k", f"at most the number of {what} in the pool ({num_candidates})", k)
    exploration = check_float("exploration", exploration, maximum=1.0, inclusive_maximum=True)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    rater = _check_rater(rater)
    progress_bar = check_bool("progress_bar", progress_bar, optional=True)
    if batch not in ("auto", "joint", "dpp", "top"):
        raise InputDataError("batch", "one of ('auto', 'joint', 'dpp', 'top')", batch)
    if batch == "joint" and strategy != "eig":
        raise InputDataError("batch", "'joint' only with strategy 'eig' (use 'dpp')", batch)
    if screen is not None:  # like k: NumPy integers and 0-d integer tensors count, bools do not
        screen = check_int("screen", screen, expected="a positive integer or None")
    if (strategy in ("random", "thompson") or exploration > 0) and not isinstance(generator, torch.Generator):
        raise InputDataError(
            "generator", f"a torch.Generator (strategy {strategy!r} / exploration draw random numbers)",
            type(generator).__name__,
        )

    num_explore = 0
    if exploration > 0:
        num_explore = int((torch.rand(k, generator=generator, dtype=torch.float64) < exploration).sum())
    k_chosen = k - num_explore

    with torch.no_grad():
        U = posterior.utility(pool, rater=rater).detach().to(torch.float64)  # s x n
        s = U.shape[0]
        chunk = chunk_size or max(1, (1 << 21) // s)
        details: dict[str, Any] = {"num_draws": s}
        acq = None
        if k_chosen == 0:
            cand, scores, num_refined = torch.zeros(0, dtype=torch.long), U.new_zeros(0), 0
            if strategy not in ("random", "thompson"):  # to score the exploratory queries below
                acq = make_acquisition(
                    strategy, posterior, query_type=query_type, pool_utility=U, region=region, generator=generator,
                    rater=rater,
                )
        elif strategy == "random":
            cand = _random_distinct(num_candidates, k_chosen, torch.zeros(0, dtype=torch.long), generator)
            scores, num_refined = torch.rand(k_chosen, generator=generator, dtype=torch.float64), 0
        elif strategy == "thompson":
            cand, scores = _thompson(posterior, U, first, second, k_chosen, generator)
            num_refined = num_candidates
        else:
            acq = make_acquisition(
                strategy, posterior, query_type=query_type, pool_utility=U, region=region, generator=generator,
                rater=rater,
            )
            if strategy == "uncertainty" and second is not None:
                mean, cov = utility_moments(U)
                scores = _per_pair(lambda f, g: _pair_moments(mean, cov, f, g)[1], first, second, mean)  # exact
                cand = torch.arange(num_candidates)
            elif second is not None and screen is not None and num_candidates > max(screen, k_chosen):
                screened = _screen_scores(strategy, acq, U, first, second, posterior.link)
                kept = max(screen, k_chosen)  # never fewer candidates than queries asked for
                cand = screened.topk(kept).indices
                scores = _chunked(acq.score_draws, first[cand], second[cand], U, chunk, bool(progress_bar))
                details["screen_kept"] = kept
            else:
                cand = torch.arange(num_candidates)
                show = num_candidates > _PROGRESS_MIN_CANDIDATES if progress_bar is None else progress_bar
                scores = _chunked(acq.score_draws, first, second, U, chunk, show)
            num_refined = num_candidates if strategy == "uncertainty" else cand.numel()
            cand, scores = pick_batch(
                strategy, acq, U, first, second, cand, scores, k_chosen, batch, posterior, generator, details
            )

        if num_explore:
            extra = _random_distinct(num_candidates, num_explore, cand, generator)
            cand = torch.cat([cand, extra])
            if strategy == "random":  # a uniform draw, as for the random strategy's own queries: no draws needed
                filler = torch.rand(num_explore, generator=generator, dtype=torch.float64)
            else:
                args = [U[:, first[extra]]] + ([] if second is None else [U[:, second[extra]]])
                if acq is not None:
                    filler = acq.score_draws(*args)
                else:  # thompson: each query valued under its own pair (or single) of draws, as _thompson's
                    q = 1 if second is None else 2
                    filler = torch.stack([
                        ThompsonSampling(posterior, generator=generator, query_size=q).score_draws(
                            *(a[:, i : i + 1] for a in args)).reshape(())
                        for i in range(num_explore)
                    ])
            scores = torch.cat([scores, filler])
        exploratory = torch.zeros(k, dtype=torch.bool)
        exploratory[k_chosen:] = True

        if second is not None:
            indices = torch.stack([first[cand], second[cand]], -1)
            lp = outcome_log_probs(
                U[:, indices[:, 0]], U[:, indices[:, 1]], link=posterior.link,
                tie_strength=posterior.tie_strength_draws(),
            )
        else:
            indices = first[cand]
            lp = outcome_log_probs(U[:, indices], None, link=posterior.link, threshold=rating_threshold(posterior, U))
        info_bits = information_from_log_probs(lp)
    return QuerySelection(
        indices=indices,
        scores=scores,
        information_bits=info_bits,
        exploratory=exploratory,
        strategy=strategy,
        query_type=query_type,
        num_candidates=num_candidates,
        num_refined=int(num_refined),
        seconds=time.perf_counter() - start,
        details=details,
    )


def _thompson(
    posterior: RewardPosterior, U: Tensor, first: Tensor, second: Tensor | None, k: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """k dueling-Thompson queries, each from its own pair (or single) of posterior draws."""
    chosen: list[int] = []
    values: list[float] = []
    q = 1 if second is None else 2
    for _ in range(k):
        acq = ThompsonSampling(posterior, generator=generator, query_size=q)
        Ud = U[acq.draws]  # only the drawn rows: `q x n`
        if second is None:
            v = Ud[0, first]
        else:
            v = _per_pair(lambda f, g: torch.maximum(Ud[0, f] + Ud[1, g], Ud[0, g] + Ud[1, f]), first, second, Ud)
        if chosen:
            v[torch.tensor(chosen)] = -math.inf
        j = int(v.argmax())
        chosen.append(j)
        values.append(float(v[j]))
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(values, dtype=torch.float64)
