"""Laplace approximation: Newton's method on the log posterior in unconstrained space.

The online workhorse: from a warm start one new answer needs two or three Newton
steps on a `D x D` Hessian (D = number of parameters), a few milliseconds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from papa_bayes.checks import caller_stacklevel
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InferenceError, ModelError, PapaBayesWarning
from papa_bayes.inference.unconstrained import UnconstrainedSpace
from papa_bayes.models.base import PyroRewardModel, check_model_sites

__all__ = [
    "laplace_mode", "laplace_draws", "IntegratedLaplace", "integrated_laplace", "mixture_moments",
]


def _objective(model: PyroRewardModel, data: PreferenceData, space: UnconstrainedSpace,
               fixed: dict[str, Tensor] | None = None):
    """`K x D` unconstrained points -> `K` negative log posteriors (+inf outside the domain).

    ``fixed`` holds sites at given values (site -> `K` values, one per point): the
    conditional posterior of the others, whose space excludes them.
    """
    def neg_log_post(theta: Tensor) -> Tensor:
        params, logdet = space.unpack(theta)
        if fixed:
            params.update(fixed)
        try:
            out = -(model.log_joint(params, data) + logdet)
        except ValueError:
            # A trial point outside the distributions' domain (e.g. a scale that
            # underflowed to 0 during a line search): infinitely unlikely.
            return theta.sum(-1) * 0 + torch.inf
        return torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))

    return neg_log_post


#: Largest points x observations x parameters whose Hessian rows come from one
#: vectorized backward pass. Small problems are overhead-bound and gain from it; large
#: ones are memory-bound and lose, even in chunks of rows (one thread, 11 grid points,
#: d=32: m=1,000 18 ms an update against 21 row by row; m=10,000 230 against 196).
HESSIAN_BATCH_BUDGET = 500_000


def batch_hessian_rows(points: int, observations: int, dim: int) -> bool:
    """Whether :func:`_newton` takes all Hessian rows in one backward pass (see HESSIAN_BATCH_BUDGET)."""
    return points * max(1, observations) * dim <= HESSIAN_BATCH_BUDGET


def _hessian_rows(grad: Tensor, x: Tensor, batched: bool = True) -> Tensor:
    """`K x D x D` Hessian blocks from the `K x D` gradient (built with ``create_graph``) at `K x D` ``x``.

    ``batched``: one vectorized backward pass over the D unit vectors
    (``is_grads_batched``); else, and where an operation has no batching rule, one
    pass per row.
    """
    K, D = x.shape
    if D == 0:
        return x.new_zeros(K, 0, 0)
    if batched and D > 1:
        try:
            units = torch.eye(D, dtype=grad.dtype).unsqueeze(1).expand(D, K, D)
            (rows,) = torch.autograd.grad(grad, x, grad_outputs=units, is_grads_batched=True, retain_graph=True)
            return rows.transpose(0, 1)
        except RuntimeError:
            pass
    return torch.stack([torch.autograd.grad(grad[:, i].sum(), x, retain_graph=i < D - 1)[0] for i in range(D)], 1)


def _newton(f, theta: Tensor, *, max_steps: int = 100, tol: float = 1e-5,
            polish: float = 1e-3, batched_hessian: bool = True,
            hessian=None) -> tuple[Tensor, Tensor, Tensor, int]:
    """Damped Newton with Armijo backtracking on K independent problems at once.

    ``f`` maps `K x D` to `K` values, row k depending on point k only, so one batched
    evaluation gives all K gradients and the Hessians come as K blocks from the same
    backward passes: K problems cost about as much as one.

    ``batched_hessian``: all Hessian rows from one backward pass (see
    :func:`batch_hessian_rows`), else one pass per row. ``hessian``: a function
    ``(grad, x) -> K x D x D`` in place of :func:`_hessian_rows` (e.g. one that knows the
    Hessian's sparsity).

    Returns:
        (points `K x D`, Hessians `K x D x D` (regularized where not positive definite),
        values `K`, Newton steps).
    """
    K, D = theta.shape
    theta = theta.detach().to(torch.float64)
    eye = torch.eye(D, dtype=torch.float64)
    active = torch.ones(K, dtype=torch.bool)
    for steps in range(max_steps + 1):
        x = theta.requires_grad_(True)
        value = f(x)
        if not bool(torch.isfinite(value).all()):
            raise InferenceError(f"The log posterior is not finite at the starting point ({value.tolist()}).")
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=True)
        H = _hessian_rows(grad, x, batched_hessian) if hessian is None else hessian(grad, x)
        H, grad, value, theta = 0.5 * (H + H.transpose(1, 2)).detach(), grad.detach(), value.detach(), theta.detach()
        damping = torch.zeros(K, dtype=torch.float64)
        for _ in range(30):  # Levenberg damping, per problem, until each system is positive definite
            L, info = torch.linalg.cholesky_ex(H + damping.view(K, 1, 1) * eye)
            bad = info != 0
            if not bad.any():
                break
            damping = torch.where(bad, torch.clamp(10 * damping, min=1e-6), damping)
        else:
            raise InferenceError("Newton's method could not make the Hessian positive definite.")
        step = torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
        size = step.abs().amax(1)
        active = active & ~((damping == 0) & (size < tol))
        if not active.any():
            break  # converged; H is the Hessian at theta
        if bool(((damping == 0) & (size < polish))[active].all()):
            # Within the quadratic basin the full step lands at the mode to O(size^2);
            # the Hessian (and the value) move by O(size), far below the posterior's spread.
            theta = theta - active.to(torch.float64).unsqueeze(1) * step
            break
        if steps == max_steps:
            warnings.warn(f"Laplace: Newton's method did not converge in {max_steps} steps.", PapaBayesWarning,
                          stacklevel=caller_stacklevel())
            break
        t = torch.ones(K, dtype=torch.float64)
        accepted = ~active
        with torch.no_grad():
            for _ in range(40):  # backtracking, every problem on its own
                trial = f(theta - t.unsqueeze(1) * step)
                accepted = accepted | (torch.isfinite(trial) & (trial <= value - 1e-4 * t * (grad * step).sum(1)))
                if accepted.all():
                    break
                t = torch.where(accepted, t, 0.5 * t)
        theta = theta - (active.to(torch.float64) * t).unsqueeze(1) * step
    _, info = torch.linalg.cholesky_ex(H)
    if (info != 0).any():  # a saddle or flat direction: regularize so the approximation stays proper
        shift = (1e-6 - torch.linalg.eigvalsh(H).amin(1)).clamp(min=0) * (info != 0)
        H = H + shift.view(K, 1, 1) * eye
    return theta.detach(), H, value, steps


def laplace_mode(
    model: PyroRewardModel,
    data: PreferenceData,
    *,
    init: Tensor | None = None,
    max_steps: int = 100,
    tol: float = 1e-5,
    polish: float = 1e-3,
) -> tuple[Tensor, Tensor, UnconstrainedSpace, dict[str, Any]]:
    """Find the posterior mode and the Hessian there (damped Newton with line search).

    Args:
        init: `D` starting point (warm start); default the priors' centres.
        tol: stop when no coordinate of the Newton step exceeds ``tol``.
        polish: a step smaller than this (unconstrained units) is taken in full and
            ends the search without another Hessian.

    Returns:
        (mode `D`, Hessian of the negative log posterior `D x D`, space, info).
    """
    check_model_sites(model, data)  # its priors must be laid out as the Pyro model samples (SVI reads them so)
    space = UnconstrainedSpace(model.priors(data))
    theta = (space.initial() if init is None else init.clone()).to(torch.float64)
    mode, H, value, steps = _newton(_objective(model, data, space), theta.unsqueeze(0),
                                    max_steps=max_steps, tol=tol, polish=polish,
                                    batched_hessian=batch_hessian_rows(1, data.num_observations, space.dim))
    return mode[0], H[0], space, {"newton_steps": steps, "neg_log_posterior": float(value[0])}


def laplace_draws(
    mode: Tensor, hessian: Tensor, space: UnconstrainedSpace, num_samples: int, *, generator: torch.Generator
) -> tuple[dict[str, Tensor], Tensor]:
    """Draws from N(mode, H^-1) mapped to constrained space: (site -> `s x shape`, `s x D` raw)."""
    L = torch.linalg.cholesky(hessian)
    eps = torch.randn(num_samples, space.dim, generator=generator, dtype=torch.float64)
    # theta = mode + L^-T eps has covariance (L L^T)^-1 = H^-1.
    raw = mode + torch.linalg.solve_triangular(L.T, eps.T, upper=True).T
    params, _ = space.unpack(raw)
    return params, raw


# --------------------------------------------------------------------------
# A scale parameter integrated on a grid (nested Laplace)
# --------------------------------------------------------------------------
@dataclass
class IntegratedLaplace:
    """A Laplace posterior with one positive scalar site integrated on a grid.

    The joint Laplace approximation over the weights and a learned rationality
    collapses: the prior of the weights given the rationality beta,
    ``N(0, beta^2 I)`` in d dimensions, carries a factor ``beta^-d`` that drags the
    joint mode toward beta -> 0 (a funnel; rationality 0.02 and alignment 0.2-0.5
    at d=16 from 30-50 answers, where NUTS finds 0.5-0.7 and 0.3-0.8). Here the
    conditional posterior of the other sites given ``eta = log beta`` is Laplace-
    approximated at each point of a grid in ``eta``, and the grid points are weighted by
    the Laplace estimate of ``p(data, eta)`` (as INLA does: Rue, Martino and Chopin
    2009): a Gaussian mixture that keeps the rationality's real uncertainty.

    Attributes:
        site: the integrated site.
        grid: `K` values of log(site).
        log_weights: `K` normalized log weights.
        modes, hessians: per grid point, the conditional mode (`D'`) and Hessian.
        space: the unconstrained space of the other sites.
        center, scale: the Gaussian fitted to log p(data, eta) (placing the grid;
            warm start of the next update).
        info: Newton steps and evaluations.
    """

    site: str
    grid: Tensor
    log_weights: Tensor
    modes: list[Tensor]
    hessians: list[Tensor]
    space: UnconstrainedSpace
    center: float
    scale: float
    info: dict[str, Any]

    @property
    def spacing(self) -> float:
        """The grid's step in log(site) (0 for a one-point grid): the width of each grid cell."""
        return float(self.grid[1] - self.grid[0]) if self.grid.numel() > 1 else 0.0

    def draws(self, num_samples: int, *, generator: torch.Generator) -> dict[str, Tensor]:
        """`num_samples` draws of every site (the integrated one included): site -> `s x shape`."""
        return self.params(*self.component_draws(num_samples, generator=generator))

    def component_draws(self, num_samples: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Grid components `s`, unconstrained draws `s x D'` of the other sites, and log(site) `s`.

        A draw of component k takes its log(site) uniformly in the grid cell around
        ``grid[k]`` (width :attr:`spacing`) and the other sites from that point's
        Gaussian: the mixture is a histogram of the site's posterior, not the
        ``K`` atoms of the grid itself (whose ranks a simulation-based calibration
        rejects), and stays a proper density for :meth:`importance_log_weights`.
        The cell offsets are drawn after the other sites, so those are the same
        draws as without them.
        """
        k = torch.multinomial(self.log_weights.exp(), num_samples, replacement=True, generator=generator)
        eps = torch.randn(num_samples, self.space.dim, generator=generator, dtype=torch.float64)
        raw = torch.empty_like(eps)
        for j in k.unique().tolist():
            rows = k == j
            L = torch.linalg.cholesky(self.hessians[j])
            raw[rows] = self.modes[j] + torch.linalg.solve_triangular(L.T, eps[rows].T, upper=True).T
        offset = torch.rand(num_samples, generator=generator, dtype=torch.float64) - 0.5
        return k, raw, self.grid[k] + self.spacing * offset

    def params(self, k: Tensor, raw: Tensor, eta: Tensor) -> dict[str, Tensor]:
        """Constrained values of every site from :meth:`component_draws`' output."""
        params, _ = self.space.unpack(raw)
        params[self.site] = eta.exp()
        return params

    def importance_log_weights(self, model: PyroRewardModel, data: PreferenceData, k: Tensor, raw: Tensor,
                               eta: Tensor) -> Tensor:
        """log p(eta, theta | data) - log q(eta, theta) up to one constant, for :meth:`component_draws`' output.

        ``q`` is the histogram mixture: cell k has mass ``exp(log_weights[k])``, its
        log(site) uniform over the cell and the other sites ``N(modes[k], H_k^-1)``.
        With the cell's weight written as its Laplace evidence, the weight is
        ``-f_eta(theta) + f_k(mode_k) + (theta - mode_k)' H_k (theta - mode_k) / 2 + eta - grid[k]``,
        ``f_eta`` the negative log posterior of the other sites with the site at
        ``exp(eta)`` and ``eta - grid[k]`` the Jacobian of the log (the grid
        weights carry it at the grid point). Returns `s` log weights.
        """
        from papa_bayes.inference.refine import importance_log_weights  # refine builds on this module

        modes, hessians = torch.stack(self.modes)[k], torch.stack(self.hessians)[k]
        at_grid = self.grid[k]
        return importance_log_weights(model, data, self.space, raw, modes, hessians,
                                      fixed={self.site: eta.exp()},
                                      fixed_at_modes={self.site: at_grid.exp()}) + eta - at_grid


def mixture_moments(fit: IntegratedLaplace, full: UnconstrainedSpace) -> tuple[Tensor, Tensor]:
    """Mean `D` and covariance `D x D` of the grid mixture in the joint unconstrained space ``full``.

    (The integrated site's coordinate is its log, the grid's own coordinate, uniform
    over each grid cell as :meth:`IntegratedLaplace.component_draws` draws it.)
    """
    K, w = len(fit.modes), fit.log_weights.exp()
    offsets, i = {}, 0
    for name in full.names:
        offsets[name] = (i, i + full.sizes[name])
        i += full.sizes[name]
    other_idx = torch.cat([torch.arange(*offsets[n]) for n in fit.space.names]) if fit.space.names else \
        torch.zeros(0, dtype=torch.long)
    site_idx = offsets[fit.site][0]
    means = torch.zeros(K, full.dim, dtype=torch.float64)
    means[:, other_idx] = torch.stack(fit.modes)
    means[:, site_idx] = fit.grid
    covs = torch.zeros(K, full.dim, full.dim, dtype=torch.float64)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(torch.stack(fit.hessians)))
    covs[:, other_idx.unsqueeze(1), other_idx.unsqueeze(0)] = inv
    covs[:, site_idx, site_idx] = fit.spacing**2 / 12  # uniform over each grid cell
    mean = (w.unsqueeze(1) * means).sum(0)
    centred = means - mean
    cov = (w.view(K, 1, 1) * (covs + centred.unsqueeze(2) * centred.unsqueeze(1))).sum(0)
    return mean, cov


def laplace_log_evidence(value: Tensor, H: Tensor) -> Tensor:
    """Laplace's estimate `K` of log p(data, fixed sites) from `K` conditional modes: ``-f(mode) + D/2 log 2 pi
    - 1/2 log|H|`` (``value`` = f at the modes, ``H`` their `K x D x D` Hessians, f the negative log joint)."""
    half_logdet = torch.linalg.cholesky(H).diagonal(dim1=1, dim2=2).log().sum(1)
    return -value + 0.5 * H.shape[-1] * math.log(2 * math.pi) - half_logdet


def _log_prior_moments(site: str, prior: Any) -> tuple[float, float]:
    """Mean and sd of log(site) under its prior (placing the grid's first scan): a LogNormal's own; else matched
    to the prior's mean and variance, (0, 1) where they are not finite (e.g. a HalfCauchy)."""
    if isinstance(prior, dist.LogNormal):
        return float(prior.loc), float(prior.scale)
    probe = torch.tensor([1e-300, 1.0, 1e300, -1.0], dtype=torch.float64)
    if (not isinstance(prior, torch.distributions.Distribution) or tuple(prior.batch_shape + prior.event_shape)
            or prior.support.check(probe).tolist() != [True, True, True, False]):
        raise ModelError(f"A site named {site!r} is integrated on a grid of its log by Laplace: its prior must be a "
                         f"scalar with a positive support (e.g. LogNormal or Gamma), got {prior!r}.")
    try:
        mean, var = float(prior.mean), float(prior.variance)
    except (NotImplementedError, RuntimeError, ValueError):
        mean, var = math.nan, math.nan
    if not (math.isfinite(mean) and math.isfinite(var) and mean > 0 and var > 0):
        return 0.0, 1.0
    sd2 = math.log1p(var / mean**2)
    return math.log(mean) - sd2 / 2, math.sqrt(sd2)


def integrated_laplace(
    model: PyroRewardModel,
    data: PreferenceData,
    site: str = "rationality",
    *,
    warm: IntegratedLaplace | None = None,
    init: dict[str, Tensor] | None = None,
    num_points: int = 11,
    width: float = 3.0,
) -> IntegratedLaplace:
    """Nested Laplace with ``site`` (a positive scalar) integrated on a grid of its log.

    Without ``warm``: a scan of 15 points over the prior's +-4 sd, a Gaussian fitted to
    log p(data, eta) around the best, then ``num_points`` grid points over its
    +-``width`` sd. With ``warm`` (an online update): the previous grid is solved again
    from its modes and reweighted, and re-placed only when the weight has moved to its
    edge or concentrated on one point.

    Args:
        model, data: the model and data.
        site: the integrated site, a positive scalar (LogNormal prior, or any other whose log-moments
            the grid's first scan is placed by).
        warm: the previous fit (warm start of every conditional mode and of the grid).
        init: constrained starting values of the other sites.
        num_points: grid points K (odd keeps the centre on the grid).
        width: half-width of the grid in sds of the fitted Gaussian.
    """
    check_model_sites(model, data)
    priors = model.priors(data)
    mu, sd = _log_prior_moments(site, priors.get(site))
    others = UnconstrainedSpace({k: v for k, v in priors.items() if k != site})
    newton = 0

    def solve(eta: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Conditional modes and Hessians at `K` values of eta, and log p(data, eta) `K`."""
        nonlocal newton
        modes, H, value, n = _newton(_objective(model, data, others, {site: eta.exp()}), start,
                                     batched_hessian=batch_hessian_rows(len(eta), data.num_observations, others.dim))
        newton += n
        return modes, H, laplace_log_evidence(value, H) + eta  # + eta: d beta / d eta

    if warm is not None:
        if warm.space.dim == others.dim:
            start = torch.stack(warm.modes)
        else:  # sites appeared (e.g. a threshold): carry the values over, the new ones at their prior centre
            previous, _ = warm.space.unpack(torch.stack(warm.modes))
            start = torch.stack([others.initial({k: v[j] for k, v in previous.items()}) for j in range(len(warm.modes))])
        grid = warm.grid.clone()
        modes, H, logev = solve(grid, start)
        w = (logev - torch.logsumexp(logev, 0)).exp()
        edge = float(w[0] + w[-1])
        center, scale = warm.center, warm.scale
        if edge < 0.02 and float(w.max()) < 0.6:
            return _finish(site, grid, logev, modes, H, others, center, scale, newton)
        init_modes = modes
    else:
        init_modes = None
    # place the grid: scan, fit a Gaussian to log p(data, eta) around the best points
    scan = torch.linspace(mu - 4 * sd, mu + 4 * sd, 15, dtype=torch.float64)
    if init_modes is not None:
        scan = torch.cat([scan, warm.grid])
        scan_start = torch.cat([init_modes[:1].expand(15, -1), init_modes])
    else:
        scan_start = others.initial(init).expand(scan.numel(), -1).clone()
    smodes, _, slogev = solve(scan, scan_start)
    best = scan[slogev.argmax()]
    near = torch.argsort((scan - best).abs())[:5]  # a quadratic through the best and its neighbours
    X = torch.stack([torch.ones(5, dtype=torch.float64), scan[near] - best, (scan[near] - best) ** 2], 1)
    coef = torch.linalg.lstsq(X, slogev[near].unsqueeze(1)).solution.squeeze(1)
    if float(coef[2]) < 0:
        center = float(best - coef[1] / (2 * coef[2]))
        scale = math.sqrt(-1 / (2 * float(coef[2])))
    else:
        center, scale = float(best), sd
    center = min(max(center, float(best) - 2 * sd), float(best) + 2 * sd)
    scale = min(max(scale, 0.02), 2 * sd)
    grid = center + scale * torch.linspace(-width, width, num_points, dtype=torch.float64)
    nearest = torch.argmin((grid.unsqueeze(1) - scan.unsqueeze(0)).abs(), 1)
    modes, H, logev = solve(grid, smodes[nearest])
    return _finish(site, grid, logev, modes, H, others, center, scale, newton)


def _finish(site, grid, logev, modes, H, space, center, scale, newton) -> IntegratedLaplace:
    logw = logev - torch.logsumexp(logev, 0)
    return IntegratedLaplace(
        site=site, grid=grid, log_weights=logw, modes=list(modes.unbind(0)), hessians=list(H.unbind(0)),
        space=space, center=center, scale=scale,
        info={"newton_steps": newton, "rationality_grid": grid.exp().tolist()},
    )
