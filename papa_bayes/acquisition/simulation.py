"""A simulated person answering actively chosen queries: the label-efficiency experiment.

One run: a pool of items, a :class:`~papa_bayes.users.SimulatedUser`, a reward model.
The first ``num_initial`` queries are random pairs (there is no posterior before the
first answer), the same for every strategy under the same seed; then each round
selects a pair by the strategy, asks the user, appends the answer and updates the
posterior online (warm-started). After every answer it records alignment
cos(E[w], w*), held-out log-loss, regret of the recommended item and the expected
information of the query asked. Used by the tests, ``examples/03_active_learning.py``
and ``benchmarks/bench_queries.py`` (APReL's protocol: Biyik et al. 2022).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from papa_bayes.acquisition.selection import _strategy, select_queries
from papa_bayes.checks import check_finite, check_float, check_int, check_real_tensor
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InputDataError
from papa_bayes.inference.posterior import RewardPosterior, check_posterior
from papa_bayes.users import SimulatedUser, random_pairs, winner_first

__all__ = ["ActiveLearningRun", "run_active_learning", "queries_to_reach", "estimated_weights", "weight_entropy_bits"]


@dataclass
class ActiveLearningRun:
    """Curves of one run, entry t after t + 1 answers.

    Attributes:
        strategy: the selection strategy.
        alignment: cos(E[w], w*) (NaN without true weights).
        log_loss: held-out expected log-loss in nats, against the user's true
            answer probabilities (NaN without held-out pairs). When only one of
            the user and the model allows a tie, it is scored on the two strict
            answers: the side with a tie has it cut and the rest renormalized.
        regret: u*(best pool item) - u*(item with the highest posterior mean).
        information_bits: expected information about the reward of each query
            asked (MC BALD under the posterior it was chosen with); NaN for the
            ``num_initial`` random queries, which no posterior chose.
        entropy_bits: entropy of the posterior of the linear part of the utility
            (Gaussian approximation of the draws of ``u(e_j) - u(0)``, noise units);
            its decrease per answer is the information actually gained.
        select_seconds, update_seconds: time per selection (``T - num_initial``
            entries) and per posterior update (``T - num_initial + 1``: the first fit too).
        queries: `T x 2` pool indices as shown (first, second).
        posterior: the last posterior.
    """

    strategy: str
    alignment: list[float] = field(default_factory=list)
    log_loss: list[float] = field(default_factory=list)
    regret: list[float] = field(default_factory=list)
    information_bits: list[float] = field(default_factory=list)
    entropy_bits: list[float] = field(default_factory=list)
    select_seconds: list[float] = field(default_factory=list)
    update_seconds: list[float] = field(default_factory=list)
    queries: list[list[int]] = field(default_factory=list)
    posterior: RewardPosterior | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serializable dict, without the final posterior."""
        return {k: v for k, v in vars(self).items() if k != "posterior"}


def estimated_weights(posterior: RewardPosterior, pool: Tensor) -> Tensor:
    """E[w] for a linear posterior; otherwise the least-squares linear fit of the posterior mean utility: `d`."""
    check_posterior(posterior)
    pool = posterior.check_features(pool, "pool")
    mean = getattr(posterior, "mean", None)
    if callable(mean):
        try:
            w = mean("w")
            if w.dim() == 1 and w.shape[0] == pool.shape[-1]:
                return w
        except Exception:  # noqa: BLE001 - any posterior without a "w" site
            pass
    with torch.no_grad():
        u = posterior.utility(pool).mean(0)
    X = torch.cat([pool, torch.ones(pool.shape[0], 1, dtype=pool.dtype)], -1)
    return torch.linalg.lstsq(X, u.unsqueeze(-1)).solution[:-1, 0]


def weight_entropy_bits(posterior: RewardPosterior) -> float:
    """Gaussian-approximation entropy (bits) of the draws of ``u(e_j) - u(0)``, j = 1..d.

    For a linear reward these are the weights in noise units, ``rationality * w``;
    for any reward, the linear part the answers inform. NaN for a posterior of one draw.
    """
    check_posterior(posterior)
    d = posterior.num_features
    basis = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
    with torch.no_grad():
        u = posterior.utility(basis)
    W = u[:, 1:] - u[:, :1]
    if W.shape[0] < 2:  # one draw has no spread: torch.cov warned and gave NaN anyway
        return math.nan
    cov = torch.atleast_2d(torch.cov(W.T)) + 1e-12 * torch.eye(d, dtype=torch.float64)
    logdet = torch.linalg.slogdet(cov).logabsdet
    return float((0.5 * (d * math.log(2 * math.pi * math.e) + logdet)) / math.log(2.0))


def queries_to_reach(curve: list[float] | Tensor, level: float) -> int | None:
    """Number of answers after which ``curve`` first reaches ``level`` (None if never)."""
    level = check_float("level", level, minimum=-math.inf)
    values = check_real_tensor("curve", curve, "a sequence of numbers", dtype=None)
    if values.dim() > 1:
        raise InputDataError("curve", "a sequence of numbers (1-D)", tuple(values.shape))
    for t, v in enumerate(values.reshape(-1).tolist()):
        if v >= level:
            return t + 1
    return None


def _fit(model: Any, data: PreferenceData, num_samples: int, seed: int, options: dict[str, Any]) -> RewardPosterior:
    from papa_bayes.inference.fit import fit

    # No method given: fit's default (Laplace for Pyro models, the model's own for GP models).
    return fit(model, data, **{**options, "num_samples": num_samples, "seed": seed})


def _check_reserved(field: str, options: dict[str, Any], reserved: tuple[str, ...]) -> None:
    """Keys that run_active_learning sets itself may not be passed again in an options dict."""
    clash = sorted(set(options) & set(reserved))
    if clash:
        raise InputDataError(field, f"no keys among {reserved} (set them with run_active_learning's own arguments)",
                             clash)


def run_active_learning(
    user: SimulatedUser,
    pool: Tensor,
    *,
    strategy: str = "eig",
    num_queries: int = 20,
    model: Any = None,
    num_samples: int = 256,
    num_initial: int = 1,
    true_weights: Tensor | None = None,
    heldout: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    select_options: dict[str, Any] | None = None,
    fit_options: dict[str, Any] | None = None,
    callback: Callable[[int, RewardPosterior], None] | None = None,
) -> ActiveLearningRun:
    """Ask ``num_queries`` pairwise queries of a simulated user, chosen by ``strategy``.

    Args:
        user: the simulated person (its own seed fixes its answers' noise; it is
            reset first, so a reused user answers as a fresh one).
        pool: `n x d` candidate items; every pair is a possible query.
        strategy: see :data:`~papa_bayes.acquisition.STRATEGIES`.
        num_queries: answers in total, the random initial ones included.
        model: reward model (default ``LinearReward()``), fitted by Laplace (a GP
            model by its own default method) and updated online.
        num_samples: posterior draws.
        num_initial: random pairs before the first selection (>= 1).
        true_weights: `d` w* for alignment; default ``user.weights``.
        heldout: (first `h x d`, second `h x d`) held-out pairs for log-loss. If
            the user can tie (``tie_margin > 0``) and the model cannot, or the
            reverse, the log-loss is over the strict answers (first, second)
            only, each side's probabilities of those two renormalized to sum to 1.
        seed: seeds the initial pairs and the strategy's randomness.
        select_options: extra keyword arguments of :func:`select_queries` (not
            ``strategy``, ``k`` or ``generator``, which the run sets).
        fit_options: extra keyword arguments of :func:`~papa_bayes.fit` (default
            method Laplace; a GP model's own default for GP models), e.g.
            ``{"refine_steps": 20}``; kept by the updates.
            Not ``num_samples`` or ``seed``: use the arguments of those names.
        callback: called as ``callback(num_answers, posterior)`` after every
            posterior update (for task-specific metrics).

    Returns:
        An :class:`ActiveLearningRun`.
    """
    from papa_bayes.models.linear import LinearReward

    if not isinstance(user, SimulatedUser):
        raise InputDataError("user", "a SimulatedUser", type(user).__name__)
    _strategy(strategy)
    pool = check_real_tensor("pool", pool, "`n x d` candidate items")
    if pool.dim() < 2:
        raise InputDataError("pool", "`n x d` candidate items", tuple(pool.shape))
    n = pool.shape[0]
    if n < 2:
        raise InputDataError("pool", "at least 2 items", n)
    # Checked here, so that the error names the pool passed rather than the user's argument ``x``.
    check_finite("pool", pool, "`n x d` candidate items")
    if user.weights is not None and (pool.dim() != 2 or pool.shape[-1] != user.weights.shape[0]):
        d = user.weights.shape[0]
        raise InputDataError("pool", f"`n x {d}` candidate items (the user's {d} weights)", tuple(pool.shape))
    num_queries = check_int("num_queries", num_queries)
    num_initial = check_int("num_initial", num_initial, maximum=num_queries,
                            expected=f"between 1 and num_queries ({num_queries})")
    seed = check_int("seed", seed, minimum=0)
    for name, value in (("select_options", select_options), ("fit_options", fit_options)):
        if value is not None and not isinstance(value, dict):
            raise InputDataError(name, "a dict of keyword arguments or None", type(value).__name__)
    if callback is not None and not callable(callback):
        raise InputDataError("callback", "a callable (num_answers, posterior) or None", type(callback).__name__)
    if heldout is not None and (not isinstance(heldout, (tuple, list)) or len(heldout) != 2):
        raise InputDataError("heldout", "a (first `h x d`, second `h x d`) pair of tensors", type(heldout).__name__)
    opts, fit_opts = dict(select_options or {}), dict(fit_options or {})
    _check_reserved("select_options", opts, ("strategy", "k", "generator"))
    _check_reserved("fit_options", fit_opts, ("num_samples", "seed"))
    if opts.get("query_type", "pair") != "pair":
        raise InputDataError("select_options", "query_type 'pair' (run_active_learning asks pairwise queries)",
                             opts["query_type"])
    model = LinearReward() if model is None else model
    user.reset()  # the same seed gives the same answers, however often the user was asked before
    w_true = user.weights
    if true_weights is not None:
        w_true = check_real_tensor("true_weights", true_weights, f"a `{pool.shape[-1]}` weight vector")
        if w_true.shape != (pool.shape[-1],):
            raise InputDataError("true_weights", f"a `{pool.shape[-1]}` weight vector (the pool's features)",
                                 tuple(w_true.shape))
    u_pool = user.utility(pool)
    best = float(u_pool.max())
    gen = torch.Generator().manual_seed(seed)
    truth_probs = user.outcome_probabilities(*heldout) if heldout is not None else None
    run = ActiveLearningRun(strategy=strategy)

    shown = random_pairs(n, num_initial, generator=gen)
    won, tie = user.compare(pool[shown[:, 0]], pool[shown[:, 1]])
    data = PreferenceData(items=pool, comparisons=winner_first(shown, won), ties=tie)
    t0 = time.perf_counter()
    post = _fit(model, data, num_samples, seed, fit_opts)
    run.update_seconds.append(time.perf_counter() - t0)
    run.queries.extend(shown.tolist())
    run.information_bits.extend([math.nan] * num_initial)
    # Curves start after the initial answers; earlier points repeat the first posterior.
    for t in range(num_initial):
        _record(run, post, pool, w_true, u_pool, best, heldout, truth_probs)
        if callback is not None:
            callback(t + 1, post)

    for _ in range(num_queries - num_initial):
        t0 = time.perf_counter()
        sel = select_queries(post, pool, strategy=strategy, k=1, generator=gen, **opts)
        run.select_seconds.append(time.perf_counter() - t0)
        pair = sel.indices[0]
        won, tie = user.compare(pool[pair[0]].unsqueeze(0), pool[pair[1]].unsqueeze(0))
        data = data.append(comparisons=winner_first(pair.unsqueeze(0), won), ties=tie)
        t0 = time.perf_counter()
        post = post.update(data)
        run.update_seconds.append(time.perf_counter() - t0)
        run.queries.append(pair.tolist())
        run.information_bits.append(float(sel.information_bits[0]))
        _record(run, post, pool, w_true, u_pool, best, heldout, truth_probs)
        if callback is not None:
            callback(len(run.queries), post)
    run.posterior = post
    return run


def _record(run, post, pool, w_true, u_pool, best, heldout, truth_probs) -> None:
    run.entropy_bits.append(weight_entropy_bits(post))
    with torch.no_grad():
        mean_u = post.utility(pool).mean(0)
        run.regret.append(best - float(u_pool[int(mean_u.argmax())]))
        if w_true is not None:
            w = estimated_weights(post, pool)
            run.alignment.append(float(w @ w_true / (w.norm() * w_true.norm()).clamp(min=1e-300)))
        else:
            run.alignment.append(math.nan)
        if heldout is not None:
            pred = post.outcome_probabilities(*heldout).mean(0)
            # Outcomes are (first, second[, tie]); a log-loss needs the same outcomes on
            # both sides, so a tie only one side allows is cut from that side.
            shared = min(pred.shape[-1], truth_probs.shape[-1])
            pred, truth = _renormalized(pred, shared), _renormalized(truth_probs, shared)
            run.log_loss.append(float(-(truth * pred.clamp(min=1e-12).log()).sum(-1).mean()))
        else:
            run.log_loss.append(math.nan)


def _renormalized(probs: Tensor, num_outcomes: int) -> Tensor:
    """The first ``num_outcomes`` answer probabilities of `h x o` ``probs``, rescaled to sum to 1.

    Returns:
        `h x num_outcomes`.
    """
    kept = probs[..., :num_outcomes]
    # A pair whose every kept outcome has probability 0 (a certain tie) scores 0, not 0/0.
    return kept / kept.sum(-1, keepdim=True).clamp(min=torch.finfo(kept.dtype).tiny)
