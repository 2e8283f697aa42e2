"""Queries over free (continuous) features: BoTorch's ``optimize_acqf`` on our acquisition.

Where the features of a query can be chosen freely inside a box (a generator's
latent code, a synthetic stimulus), the pair is optimized jointly as a
`2 x d` design: ``optimize_acqf(acq, bounds, q=2)``, multi-start L-BFGS-B from
Sobol raw samples. Our acquisition functions are differentiable in ``X`` because
``RewardPosterior.utility`` is.
"""

from __future__ import annotations

import warnings

import torch
from botorch.optim import optimize_acqf
from torch import Tensor

from papa_bayes.acquisition.selection import _strategy, make_acquisition
from papa_bayes.checks import caller_stacklevel, check_float, check_int, check_real_tensor
from papa_bayes.exceptions import InputDataError, PapaBayesWarning
from papa_bayes.inference.posterior import RewardPosterior, check_posterior
from papa_bayes.models.linear import HierarchicalLinearReward, LinearReward

__all__ = ["optimize_queries"]

#: Thompson sampling's fresh pairs of draws when both draws' best points coincide.
_THOMPSON_TRIES = 8


def linear_in_features(posterior: RewardPosterior) -> bool:
    """Whether the posterior's utility is linear in the features (``LinearReward``, ``HierarchicalLinearReward``).

    Then u(a) - u(b) = w . (a - b): a pair's answer depends on ``a - b`` alone.
    """
    return isinstance(getattr(posterior, "model", None), (LinearReward, HierarchicalLinearReward))


#: Two designs are one question when no feature differs by more than this fraction of the box's width: the
#: optimizer stops within about 1e-4 of the box's width of a flat optimum, differently from each start.
_SAME_QUESTION = 1e-3


def _distinct(a: Tensor, b: Tensor, width: Tensor, *, linear: bool = False) -> bool:
    """Two `q x d` designs are different questions (``width``: `d`, the box's).

    A pair and its swap are the same question; with ``linear`` (a utility linear in
    the features) so are two pairs whose differences ``a - b`` agree up to sign.
    """
    def gap(x: Tensor, y: Tensor) -> float:  # the largest difference, in box widths
        return float(((x - y).abs() / width).max())

    if a.shape[0] != 2:
        return gap(a, b) > _SAME_QUESTION
    if linear:  # the questions a - b and b - a (one question, swapped)
        return min(gap(a[0] - a[1], b[0] - b[1]), gap(a[0] - a[1], b[1] - b[0])) > _SAME_QUESTION
    return min(gap(a, b), gap(a, b.flip(0))) > _SAME_QUESTION


def _distinct_optima(X: Tensor, values: Tensor, k: int, width: Tensor, *, linear: bool = False) -> list[int]:
    """Up to k of the `r x q x d` optima ``X``, best first: distinct queries, none a pair of two equal points."""
    keep: list[int] = []
    for i in values.argsort(descending=True).tolist():
        if X.shape[-2] == 2 and not _distinct(X[i, :1], X[i, 1:], width):  # a point against itself asks nothing
            continue
        if all(_distinct(X[i], X[j], width, linear=linear) for j in keep):
            keep.append(i)
        if len(keep) == k:
            break
    return keep


def optimize_queries(
    posterior: RewardPosterior,
    bounds: Tensor,
    *,
    strategy: str = "eig",
    k: int = 1,
    query_type: str = "pair",
    reference_pool: Tensor | None = None,
    num_restarts: int = 8,
    raw_samples: int = 256,
    seed: int = 0,
    options: dict | None = None,
    region_softness: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Optimize query features in a box.

    Args:
        posterior: the reward posterior.
        bounds: `2 x d` lower and upper bounds of every feature.
        strategy: "eig", "region", "argmax", "eubo", "uncertainty" or "thompson".
        k: number of queries: the k best distinct local optima of the multi-start
            optimization (``k <= num_restarts``); a pair and its swap are the same
            query, and under a utility linear in the features (``LinearReward``,
            ``HierarchicalLinearReward``) so are two pairs with the same
            difference ``a - b`` up to sign (the answer depends on it alone);
            designs within 0.1% of the box's width in every feature are one
            query; a pair of two equal points is no query (EUBO and Thompson
            sampling can end there; Thompson sampling then takes another pair of
            posterior draws, up to 8 pairs). Fewer, with a
            :class:`~papa_bayes.exceptions.PapaBayesWarning`, when the restarts
            found fewer distinct optima.
        query_type: ``"pair"`` (`2 x d` designs) or ``"rating"`` (`1 x d`).
        reference_pool: `n x d` items for "region" / "argmax" (and the like threshold
            of rating queries without ratings yet).
        num_restarts, raw_samples, options: passed to ``optimize_acqf``
            (``raw_samples >= num_restarts``: each restart starts from a raw sample).
        seed: seeds the raw samples (the global RNG is restored afterwards).
        region_softness: "region" only: the width (noise units) of the smooth
            region membership that is optimized; its step makes L-BFGS-B's line
            search fail ("ABNORMAL"). The returned values are the step's. 0 optimizes
            the step itself.

    Returns:
        (`k' x q x d` query features, `k'` acquisition values), k' <= k distinct
        queries, best first.

    Raises:
        InputDataError: bad arguments; (field ``num_restarts``) every restart
            ended at a pair of two equal points; (field ``strategy``) Thompson
            sampling's pairs of draws all liked the same point best.
    """
    strategy = _strategy(strategy)
    if strategy == "random":
        raise InputDataError("strategy", "an optimizable strategy (draw random features yourself)", strategy)
    check_posterior(posterior)
    d = posterior.num_features
    bounds = check_real_tensor("bounds", bounds, f"`2 x {d}` lower and upper bounds")
    # Shape, then finiteness, then order: a NaN fails ``lower < upper`` too and was reported as a wrong shape.
    if bounds.shape != (2, d):
        raise InputDataError("bounds", f"shape `2 x {d}` lower and upper bounds", tuple(bounds.shape))
    if not bool(torch.isfinite(bounds).all()):
        raise InputDataError("bounds", "finite lower and upper bounds", bounds.tolist())
    if not bool((bounds[1] > bounds[0]).all()):
        raise InputDataError("bounds", "lower < upper in every feature",
                             f"lower {bounds[0].tolist()}, upper {bounds[1].tolist()}")
    num_restarts = check_int("num_restarts", num_restarts)
    # optimize_acqf starts each restart from a distinct raw sample (fewer: a RuntimeError of torch.multinomial)
    raw_samples = check_int("raw_samples", raw_samples, minimum=num_restarts,
                            expected=f"an integer >= num_restarts ({num_restarts})")
    seed = check_int("seed", seed, minimum=0)
    if options is not None and not isinstance(options, dict):
        raise InputDataError("options", "a dict of optimize_acqf options or None", type(options).__name__)
    k = check_int("k", k, maximum=num_restarts, expected=f"an integer between 1 and num_restarts ({num_restarts})")
    region_softness = check_float("region_softness", region_softness, minimum=0.0)
    gen = torch.Generator().manual_seed(seed)
    try:
        acq = make_acquisition(strategy, posterior, query_type=query_type, pool=reference_pool, generator=gen,
                               membership_softness=region_softness if strategy == "region" else 0.0)
    except InputDataError as err:  # make_acquisition's argument is called pool; ours reference_pool
        if err.field != "pool":
            raise
        raise InputDataError("reference_pool", err.expected, err.actual) from None
    q = 2 if query_type == "pair" else 1
    linear = q == 2 and linear_in_features(posterior)
    tries = _THOMPSON_TRIES if strategy == "thompson" and q == 2 else 1
    for attempt in range(tries):
        if attempt:  # both draws liked the same point best: another pair of draws
            acq = make_acquisition(strategy, posterior, query_type=query_type, pool=reference_pool, generator=gen)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            X, values = optimize_acqf(
                acq, bounds=bounds, q=q, num_restarts=num_restarts, raw_samples=raw_samples,
                return_best_only=False, options=options or {"maxiter": 100},
            )
        keep = _distinct_optima(X, values, k, bounds[1] - bounds[0], linear=linear)
        if keep:
            break
    if not keep and tries > 1:
        raise InputDataError(
            "strategy", "posterior draws that disagree on the best point in the box (Thompson sampling asks the best "
            "point of one against that of another)", f"'thompson' with {tries} pairs of draws, each pair liking the "
            "same point best: the posterior is sure of it; ask by 'eig' or 'eubo'",
        )
    if not keep:
        raise InputDataError("num_restarts", "restarts that reach a pair of two different points (raise num_restarts "
                             "or raw_samples)", f"{num_restarts} restarts, each ending at two equal points")
    if len(keep) < k:
        why = (" (the posterior's utility is linear in the features, so a pair asks only about a - b: pairs with "
               "the same difference, up to sign, are the same question)") if linear else ""
        warnings.warn(
            f"optimize_queries: the {num_restarts} restarts found {len(keep)} distinct optima, fewer than k={k}"
            f"{why}; raise num_restarts or raw_samples, or pick k questions from a pool with "
            f"select_queries(posterior, pool, k={k}).",
            PapaBayesWarning,
            stacklevel=caller_stacklevel(),
        )
    idx = torch.tensor(keep, dtype=torch.long)
    X, values = X[idx].detach(), values[idx].detach()
    if strategy == "region" and region_softness > 0:  # report the information about the step membership
        acq.membership_softness = 0.0
        with torch.no_grad():
            values = acq(X)
        order = values.argsort(descending=True)
        X, values = X[order], values[order]
    return X, values
