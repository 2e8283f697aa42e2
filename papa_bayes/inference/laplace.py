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

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InferenceError, PapaBayesWarning
from papa_bayes.inference.unconstrained import UnconstrainedSpace
from papa_bayes.models.base import PyroRewardModel

__all__ = ["laplace_mode", "laplace_draws", "IntegratedLaplace", "integrated_laplace", "mixture_moments"]


def _objective(model: PyroRewardModel, data: PreferenceData, space: UnconstrainedSpace,
               fixed: dict[str, Tensor] | None = None):
    def neg_log_post(theta: Tensor) -> Tensor:
        params, logdet = space.unpack(theta.unsqueeze(0))
        if fixed:
            params = {**params, **{k: v.reshape(1, *v.shape) for k, v in fixed.items()}}
        try:
            return -(model.log_joint(params, data) + logdet)[0]
        except ValueError:
            # A trial point outside the distributions' domain (e.g. a scale that
            # underflowed to 0 during a line search): infinitely unlikely.
            return theta.sum() * 0 + torch.inf

    return neg_log_post


def _value_grad_hessian(f, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """f, its gradient and Hessian at ``theta`` from one graph (D + 1 backward passes)."""
    x = theta.detach().requires_grad_(True)
    value = f(x)
    (grad,) = torch.autograd.grad(value, x, create_graph=True)
    rows = [torch.autograd.grad(grad[i], x, retain_graph=i < x.numel() - 1)[0] for i in range(x.numel())]
    H = torch.stack(rows) if rows else x.new_zeros(0, 0)
    return value.detach(), grad.detach(), 0.5 * (H + H.T).detach()


def laplace_mode(
    model: PyroRewardModel,
    data: PreferenceData,
    *,
    init: Tensor | None = None,
    max_steps: int = 100,
    tol: float = 1e-5,
    polish: float = 1e-3,
    fixed: dict[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor, UnconstrainedSpace, dict[str, Any]]:
    """Find the posterior mode and the Hessian there (damped Newton with line search).

    Args:
        fixed: sites held at the given (constrained) values: the mode of the
            conditional posterior of the others (their space excludes them).
        init: `D` starting point (warm start); default the priors' centres.
        tol: stop when no coordinate of the Newton step exceeds ``tol``.
        polish: a step smaller than this (unconstrained units) is taken in full and
            ends the search without another Hessian.

    Returns:
        (mode `D`, Hessian of the negative log posterior `D x D`, space, info).
    """
    priors = model.priors(data)
    space = UnconstrainedSpace({k: v for k, v in priors.items() if not fixed or k not in fixed})
    f = _objective(model, data, space, fixed)
    theta = (space.initial() if init is None else init.clone()).to(torch.float64)
    eye = torch.eye(space.dim, dtype=torch.float64)
    for steps in range(max_steps + 1):
        value, grad, H = _value_grad_hessian(f, theta)
        if not torch.isfinite(value):
            raise InferenceError(f"The log posterior is not finite at the starting point ({value.item()}).")
        step, damping = None, 0.0
        for _ in range(30):  # Levenberg damping until the system is positive definite
            L, info = torch.linalg.cholesky_ex(H + damping * eye)
            if info == 0:
                step = torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
                break
            damping = max(1e-6, 10 * damping)
        if step is None:
            raise InferenceError("Newton's method could not make the Hessian positive definite.")
        size = float(step.abs().max())
        if damping == 0.0 and size < tol:
            break  # converged; H is the Hessian at this theta
        if damping == 0.0 and size < polish:
            # Within the quadratic basin the full step lands at the mode to O(size^2);
            # the Hessian moves by O(size), far below the posterior's own spread.
            theta = (theta - step).detach()
            break
        if steps == max_steps:
            warnings.warn(f"Laplace: Newton's method did not converge in {max_steps} steps.", PapaBayesWarning, stacklevel=3)
            break
        t = 1.0
        with torch.no_grad():
            for _ in range(40):  # backtracking line search (Armijo)
                new_value = f(theta - t * step)
                if torch.isfinite(new_value) and new_value <= value - 1e-4 * t * (grad @ step):
                    break
                t *= 0.5
        theta = (theta - t * step).detach()
    L, info = torch.linalg.cholesky_ex(H)
    if info != 0:  # a saddle or flat direction: regularize so the approximation stays proper
        H = H + (1e-6 - torch.linalg.eigvalsh(H).min()).clamp(min=0) * eye
    return theta, H, space, {"newton_steps": steps, "neg_log_posterior": float(value)}


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

    def draws(self, num_samples: int, *, generator: torch.Generator) -> dict[str, Tensor]:
        """`num_samples` draws of every site (the integrated one included): site -> `s x shape`."""
        k = torch.multinomial(self.log_weights.exp(), num_samples, replacement=True, generator=generator)
        eps = torch.randn(num_samples, self.space.dim, generator=generator, dtype=torch.float64)
        raw = torch.empty_like(eps)
        for j in k.unique().tolist():
            rows = k == j
            L = torch.linalg.cholesky(self.hessians[j])
            raw[rows] = self.modes[j] + torch.linalg.solve_triangular(L.T, eps[rows].T, upper=True).T
        params, _ = self.space.unpack(raw)
        params[self.site] = self.grid[k].exp()
        return params


def mixture_moments(fit: IntegratedLaplace, full: UnconstrainedSpace) -> tuple[Tensor, Tensor]:
    """Mean `D` and covariance `D x D` of the grid mixture in the joint unconstrained space ``full``.

    (The integrated site's coordinate is its log, the grid's own coordinate.)
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
    mean = (w.unsqueeze(1) * means).sum(0)
    centred = means - mean
    cov = (w.view(K, 1, 1) * (covs + centred.unsqueeze(2) * centred.unsqueeze(1))).sum(0)
    return mean, cov


def _batched_newton(
    model: PyroRewardModel, data: PreferenceData, space: UnconstrainedSpace, site: str, eta: Tensor, init: Tensor,
    *, max_steps: int = 100, tol: float = 1e-5, polish: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Conditional modes of the other sites at K values of ``eta = log(site)``, solved together.

    The K problems are independent, so one batched objective gives all K gradients
    and the Hessians come as K blocks from D backward passes: K grid points cost
    about as much as one.

    Returns:
        (modes `K x D`, Hessians `K x D x D`, log p(data, eta) estimates `K`, Newton steps).
    """
    K, D = init.shape
    beta = eta.exp()

    def f(theta: Tensor) -> Tensor:
        params, logdet = space.unpack(theta)
        params[site] = beta
        out = -(model.log_joint(params, data) + logdet)
        return torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))

    theta = init.clone().to(torch.float64)
    eye = torch.eye(D, dtype=torch.float64)
    active = torch.ones(K, dtype=torch.bool)
    steps = 0
    for steps in range(max_steps + 1):
        x = theta.detach().requires_grad_(True)
        value = f(x)
        (grad,) = torch.autograd.grad(value.sum(), x, create_graph=True)
        H = torch.stack([torch.autograd.grad(grad[:, i].sum(), x, retain_graph=i < D - 1)[0] for i in range(D)], 1)
        H, grad, value = 0.5 * (H + H.transpose(1, 2)).detach(), grad.detach(), value.detach()
        damping = torch.zeros(K, dtype=torch.float64)
        for _ in range(30):
            L, info = torch.linalg.cholesky_ex(H + damping.view(K, 1, 1) * eye)
            bad = info != 0
            if not bad.any():
                break
            damping = torch.where(bad, torch.clamp(10 * damping, min=1e-6), damping)
        step = torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
        size = step.abs().amax(1)
        active = active & ~((damping == 0) & (size < tol))
        if not active.any() or steps == max_steps:
            break
        if bool(((damping == 0) & (size < polish))[active].all()):
            # every remaining step is inside the quadratic basin: take it in full (as laplace_mode does)
            theta = (theta - active.to(torch.float64).unsqueeze(1) * step).detach()
            with torch.no_grad():
                value = f(theta)
            break
        t = torch.ones(K, dtype=torch.float64)
        accepted = ~active
        with torch.no_grad():
            for _ in range(40):  # backtracking, every problem on its own
                trial = f(theta - t.unsqueeze(1) * step)
                ok = torch.isfinite(trial) & (trial <= value - 1e-4 * t * (grad * step).sum(1))
                accepted = accepted | ok
                if accepted.all():
                    break
                t = torch.where(accepted, t, 0.5 * t)
        move = active.to(torch.float64) * t
        theta = (theta - move.unsqueeze(1) * step).detach()
    if steps == max_steps:
        warnings.warn(f"Laplace: Newton's method did not converge in {max_steps} steps.", PapaBayesWarning, stacklevel=3)
    L, info = torch.linalg.cholesky_ex(H)
    if (info != 0).any():  # regularize saddles so every approximation stays proper
        shift = (1e-6 - torch.linalg.eigvalsh(H).amin(1)).clamp(min=0)
        H = H + shift.view(K, 1, 1) * eye
        L = torch.linalg.cholesky(H)
    log_evidence = -value + 0.5 * D * math.log(2 * math.pi) - L.diagonal(dim1=1, dim2=2).log().sum(1) + eta
    return theta, H, log_evidence, steps


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
        site: the integrated site; its prior must be a LogNormal.
        warm: the previous fit (warm start of every conditional mode and of the grid).
        init: constrained starting values of the other sites.
        num_points: grid points K (odd keeps the centre on the grid).
        width: half-width of the grid in sds of the fitted Gaussian.
    """
    priors = model.priors(data)
    prior = priors.get(site)
    if not isinstance(prior, dist.LogNormal):
        raise InferenceError(f"integrated_laplace needs a LogNormal prior on {site!r}, got {type(prior).__name__}.")
    mu, sd = float(prior.loc), float(prior.scale)
    others = UnconstrainedSpace({k: v for k, v in priors.items() if k != site})
    newton = 0

    def solve(eta: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nonlocal newton
        modes, H, logev, n = _batched_newton(model, data, others, site, eta, start)
        newton += n
        return modes, H, logev

    def starts(K: int, source: Tensor | None) -> Tensor:
        if source is None:
            return others.initial(init).expand(K, -1).clone() if init is not None else others.initial().expand(K, -1).clone()
        return source

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
        scan_start = starts(scan.numel(), None)
    smodes, _, slogev = solve(scan, scan_start)
    order = torch.argsort(slogev, descending=True)
    best = scan[order[0]]
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
