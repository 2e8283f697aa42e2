"""Correcting Laplace draws toward the exact posterior: importance weights and resample-move.

``fit(..., method="laplace", refine_steps=k)`` weighs the Gaussian draws by the exact
posterior density (:func:`importance_log_weights`), resamples them and moves each by
``k`` random-walk Metropolis steps (:func:`resample_move`), all draws at once.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from papa_bayes.checks import caller_stacklevel
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InferenceError, PapaBayesWarning
from papa_bayes.inference.laplace import _objective
from papa_bayes.inference.unconstrained import UnconstrainedSpace
from papa_bayes.models.base import PyroRewardModel

__all__ = ["importance_log_weights", "resample_move", "REFINE_MIN_ESS", "REFINE_MIN_DRAWS"]


def importance_log_weights(
    model: PyroRewardModel,
    data: PreferenceData,
    space: UnconstrainedSpace,
    theta: Tensor,
    modes: Tensor,
    hessians: Tensor,
    fixed: dict[str, Tensor] | None = None,
    fixed_at_modes: dict[str, Tensor] | None = None,
) -> Tensor:
    """log p(theta | data) - log q(theta), up to one constant, for draws of Gaussians ``N(mode, H^-1)``.

    Each draw comes from its own Gaussian (a grid component of an
    :class:`IntegratedLaplace`, or the one Laplace Gaussian): with ``f`` the
    negative log posterior of that component (the sites in ``fixed`` held at the
    draw's values), the weight is ``-f(theta) + f(mode) + (theta - mode)' H (theta - mode) / 2``.
    The components' normalizing constants cancel against their Laplace evidence,
    so the same weights also correct the grid's weights.

    Args:
        theta, modes: `N x D` draws and their components' modes (unconstrained).
        hessians: `N x D x D` (or `D x D`, shared) Hessians of ``f`` at the modes.
        fixed: site -> `N` values held fixed per draw (the integrated site).
        fixed_at_modes: the same sites' values at which each mode was found (default
            ``fixed``); they differ for a draw whose site lies off its grid point.

    Returns:
        `N` log weights (-inf where the exact density is zero).
    """
    f = _objective(model, data, space, fixed)
    f_modes = f if fixed_at_modes is None else _objective(model, data, space, fixed_at_modes)
    delta = theta - modes
    quad = (delta.unsqueeze(-2) @ hessians @ delta.unsqueeze(-1)).reshape(-1)
    return -f(theta) + f_modes(modes) + 0.5 * quad


#: Below this effective share of the proposal draws, :func:`resample_move` warns: the
#: refined draws then descend from a handful of proposal draws. Measured: 0.2-0.4% for
#: HierarchicalLinearReward with 5 raters at d=3 and for LinearReward with 30 answers at
#: d=16 (where Laplace is far off); 12-90% for LinearReward at d=6-8 with 5-1,000 answers.
REFINE_MIN_ESS = 0.01
#: ... or below this many effective draws (a quarter of the proposal draws at most): with
#: few draws the share cannot fall below 1% (one draw of 80 is 1.25%).
REFINE_MIN_DRAWS = 20


def resample_move(
    model: PyroRewardModel,
    data: PreferenceData,
    space: UnconstrainedSpace,
    theta: Tensor,
    log_weights: Tensor,
    num_samples: int,
    proposal_cov: Tensor,
    *,
    steps: int,
    generator: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    """Resample-move (Gilks and Berzuini 2001): Laplace draws moved toward the exact posterior.

    The `N` proposal draws are resampled to ``num_samples`` by their importance
    weights (truncated at sqrt(N) times the mean, Ionides 2008; systematic
    resampling, shuffled), then each takes ``steps`` random-walk Metropolis steps on the
    exact posterior with proposal covariance ``2.38^2 / D * proposal_cov``
    (Roberts, Gelman and Gilks 1997), all draws at once.

    Args:
        space: the joint unconstrained space (`D`) of ``theta``.
        theta: `N x D` proposal draws; log_weights: `N` (see :func:`importance_log_weights`).
        proposal_cov: `D x D` (the Laplace covariance).

    Returns:
        (draws `num_samples x D` in random order, reproducible from ``generator``;
        info: ``refine_ess`` the importance sample's effective size as a share of N,
        ``refine_acceptance`` the Metropolis acceptance rate).

    Warns:
        PapaBayesWarning: when ``refine_ess`` is below :data:`REFINE_MIN_ESS`, or the
        effective draws are fewer than :data:`REFINE_MIN_DRAWS` (or than N/4): the
        weights have collapsed onto a few proposal draws, and ``steps`` random-walk
        steps from them need not reach the posterior (on a 5-rater hierarchical
        model the population scale stayed 1.3-1.7 times NUTS's after 20 steps and
        1.2-1.5 times after 100).
    """
    n = theta.shape[0]
    lw = torch.where(torch.isnan(log_weights), torch.full_like(log_weights, -math.inf), log_weights)
    if not torch.isfinite(lw).any():
        raise InferenceError("resample_move: no proposal draw has a finite posterior density "
                             "(check the model's support).")
    w = (lw - lw.max()).exp()
    ess = float(w.sum() ** 2 / (w**2).sum()) / n
    if ess < REFINE_MIN_ESS or ess * n < min(REFINE_MIN_DRAWS, n / 4):
        warnings.warn(
            f"Laplace refinement: the importance weights of the {n} proposal draws collapsed (effective sample "
            f"size {ess:.2%} of them, about {ess * n:.0f} draws): the Gaussian approximation is far from the "
            f"posterior, and {steps} Metropolis steps from so few draws need not reach it; check against "
            "method='nuts'.", PapaBayesWarning, stacklevel=caller_stacklevel())
    w = torch.minimum(w, w.mean() * math.sqrt(n))
    u = torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(num_samples, dtype=torch.float64)
    u = u / num_samples
    idx = torch.searchsorted(torch.cumsum(w / w.sum(), 0), u).clamp(max=n - 1)
    # in random order (as nested_draws): systematic resampling puts each ancestor's copies side by side, and
    # a few Metropolis steps leave them close: ArviZ's ESS over the draw order read that as autocorrelation
    # (213 of 600 draws at d=6 with 12 answers, lag-1 autocorrelation 0.3), and even thinning kept neighbours
    idx = idx[torch.randperm(num_samples, generator=generator)]
    theta = theta[idx]
    f = _objective(model, data, space)
    value = f(theta)
    L = torch.linalg.cholesky(proposal_cov * (2.38**2 / space.dim))
    accepted = 0.0
    for _ in range(steps):
        trial = theta + torch.randn(num_samples, space.dim, generator=generator, dtype=torch.float64) @ L.T
        trial_value = f(trial)
        log_u = torch.rand(num_samples, generator=generator, dtype=torch.float64).log()
        ok = log_u < value - trial_value  # +inf trial values are never accepted
        theta = torch.where(ok.unsqueeze(1), trial, theta)
        value = torch.where(ok, trial_value, value)
        accepted += float(ok.double().mean())
    return theta, {"refine_ess": ess, "refine_acceptance": accepted / max(steps, 1)}
