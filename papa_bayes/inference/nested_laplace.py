"""A vector of positive scales integrated out by a nested Laplace approximation (INLA).

The joint Laplace fit of :class:`~papa_bayes.models.HierarchicalLinearReward`
overstates ``population_scale``: its mode in the non-centred coordinates
(``w_r = mean + scale * offset_r``) ignores how the volume of the per-rater offsets
that fit the data changes with the scale (about ``scale^-R`` per feature). Here the
scale is integrated out as INLA does (Rue, Martino and Chopin 2009): for a value
``s`` of log(scale), the other sites' conditional posterior is Laplace-approximated
(Newton, all values of ``s`` in one batch), which gives the Laplace estimate of the
marginal ``log p(data, s)``; its mode and curvature in ``s`` (finite differences,
`d` small) place a Gaussian, skewed along each principal axis where the marginal
is (INLA's asymmetric Gaussian, Martins et al. 2013); draws of ``s`` from it are
weighted by the marginal, resampled, and each takes the other sites from its own
conditional Laplace Gaussian.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from papa_bayes.checks import caller_stacklevel
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InferenceError, PapaBayesWarning
from papa_bayes.inference.laplace import _newton, _objective, batch_hessian_rows, laplace_log_evidence
from papa_bayes.inference.unconstrained import UnconstrainedSpace
from papa_bayes.models.base import PyroRewardModel

__all__ = ["NestedLaplace", "nested_laplace", "nested_draws"]

#: Finite-difference step in log(scale) for the marginal's gradient and curvature.
FD_STEP = 0.05
#: Distance (in sds of the Gaussian) at which the marginal is probed along each
#: principal axis for its skew; INLA probes at 2 sds too.
SKEW_PROBE = 2.0
#: Most proposals of the scale, each with its own conditional fit (their cost; the
#: draws of the other sites are fresh per draw whatever their number).
NUM_PROPOSALS = 256
#: Share of the proposals drawn from the split normal widened :data:`DEFENSIVE_WIDTH` times (defensive
#: importance sampling, Hesterberg 1995: the weights stay below 1 / (1 - share) times the core's).
DEFENSIVE_SHARE = 0.25
DEFENSIVE_WIDTH = 3.0


@dataclass
class NestedLaplace:
    """``site`` (a positive `d`-vector) integrated out by a nested Laplace approximation.

    Attributes:
        site: the integrated site (e.g. ``"population_scale"``).
        center: `d` mode of the Laplace marginal ``log p(data, s)`` over ``s = log(site)``.
        axes: `d x d` principal axes (columns) of its Gaussian approximation.
        sd_neg, sd_pos: `d` sds along each axis below and above the mode (equal
            where the marginal is symmetric).
        space: the unconstrained space of the other sites.
        conditional_mode: `D'` conditional mode of the other sites at ``center``
            (the warm start of the draws' solves and of the next update).
        sensitivity: `D' x d` derivative of the conditional mode in ``s`` at ``center``.
        info: outer and inner iterations, the effective sample size of the weights.
    """

    site: str
    center: Tensor
    axes: Tensor
    sd_neg: Tensor
    sd_pos: Tensor
    space: UnconstrainedSpace
    conditional_mode: Tensor
    sensitivity: Tensor
    info: dict[str, Any]

    def predicted_mode(self, s: Tensor) -> Tensor:
        """Linear prediction `K x D'` of the conditional modes at `K x d` ``s`` (the solves' starts)."""
        return self.conditional_mode + (s - self.center) @ self.sensitivity.T

    def proposal(self, num: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`num` draws `num x d` of ``s`` and their log densities `num`: the skewed Gaussian, defensively mixed.

        A share :data:`DEFENSIVE_SHARE` of the draws comes from the same split normal
        with :data:`DEFENSIVE_WIDTH` times its sds (Hesterberg 1995), so that the
        importance weights stay bounded where the marginal's tails are heavier than a
        Gaussian's: with little information about the scale, log(scale)'s posterior
        is close to its prior's, whose tail toward 0 falls off only exponentially
        (HalfNormal(0.5), two answers: the skewed Gaussian alone gave a mean of 0.51
        for the prior's 0.40).
        """
        d = self.center.numel()
        z = torch.randn(num, d, generator=generator, dtype=torch.float64)
        wide = torch.rand(num, generator=generator, dtype=torch.float64) < DEFENSIVE_SHARE
        z = torch.where(wide.unsqueeze(1), z * DEFENSIVE_WIDTH, z)
        s = self.center + (z * torch.where(z > 0, self.sd_pos, self.sd_neg)) @ self.axes.T
        return s, self.log_density(s)

    def log_density(self, s: Tensor) -> Tensor:
        """Log density `K` of :meth:`proposal` at `K x d` values of ``s``."""
        u = (s - self.center) @ self.axes  # coordinates along the principal axes
        parts = []
        for share, width in ((1 - DEFENSIVE_SHARE, 1.0), (DEFENSIVE_SHARE, DEFENSIVE_WIDTH)):
            sd = width * torch.where(u > 0, self.sd_pos, self.sd_neg)
            # along each axis half of the draws on either side, each side a half normal of its own sd:
            # density exp(-(u / sd)^2 / 2) / (sqrt(2 pi) sd). (Until 2026-12-04 the normalizer was a split
            # normal's, 2 / (sqrt(2 pi) (sd_neg + sd_pos)), whose sides hold sd_side / (sd_neg + sd_pos) of the
            # mass, not half: the weights favoured the narrow side; HalfNormal(0.5) with two answers, a mean
            # of 0.51 for the prior's 0.40.)
            log_q = (-0.5 * (u / sd) ** 2 - 0.5 * math.log(2 * math.pi) - sd.log()).sum(1)
            parts.append(math.log(share) + log_q)
        return torch.logsumexp(torch.stack(parts), 0)


def _block_hessian(space: UnconstrainedSpace, block: str):
    """A Hessian function for :func:`_newton` when ``block``'s rows (`R x k`) do not interact.

    Where each observation depends on one row of ``block`` (one rater's offsets) and
    the rows' priors are independent, the Hessian's ``block`` part is block-diagonal
    across rows, so one Hessian-vector product with the sum of column j of every row
    gives column j of all R diagonal blocks at once (the colouring of Curtis, Powell
    and Reid 1974): ``k`` products for the block, one per other coordinate, instead
    of ``R k``; the entries between the block and the rest follow by symmetry.
    """
    start = 0
    for name in space.names:
        if name == block:
            break
        start += space.sizes[name]
    R, k = space.shapes[block]
    D = space.dim
    rows = torch.arange(start, start + R * k).reshape(R, k)
    rest = torch.cat([torch.arange(0, start), torch.arange(start + R * k, D)])
    probes = torch.zeros(len(rest) + k, D, dtype=torch.float64)
    probes[torch.arange(len(rest)), rest] = 1.0
    for j in range(k):
        probes[len(rest) + j, rows[:, j]] = 1.0
    # same[a, b]: rows a and b of the block share a row r (a block-diagonal entry)
    rater = torch.arange(R).repeat_interleave(k)
    same = rater.unsqueeze(1) == rater.unsqueeze(0)
    flat = rows.reshape(-1)
    colour = torch.arange(k).repeat(R)

    def hessian(grad: Tensor, x: Tensor) -> Tensor:
        K = x.shape[0]
        hvp = torch.stack([torch.autograd.grad(grad, x, grad_outputs=p.expand(K, D), retain_graph=True)[0]
                           for p in probes], 1)  # K x P x D: row p is H @ probe p
        H = x.new_zeros(K, D, D)
        H[:, rest, :] = hvp[:, : len(rest)]
        H[:, :, rest] = hvp[:, : len(rest)].transpose(1, 2)
        # block entries: H[a, b] for a, b in the block, read from b's colour probe at row a
        inner = hvp[:, len(rest) + colour][:, :, flat]  # K x (R k) x (R k): [b, a] = sum over b's colour at a
        H[:, flat.unsqueeze(1), flat.unsqueeze(0)] = inner.transpose(1, 2) * same
        return H

    return hessian


class _Marginal:
    """Laplace estimates of ``log p(data, s)`` at batches of ``s``, with their conditional fits."""

    def __init__(self, model: PyroRewardModel, data: PreferenceData, site: str, others: UnconstrainedSpace) -> None:
        self.model, self.data, self.site, self.others = model, data, site, others
        self.newton_steps = 0
        # HierarchicalLinearReward's offsets: one row per rater, each answer one rater's
        self.hessian = _block_hessian(others, "rater_offset") if "rater_offset" in others.names \
            and len(others.shapes["rater_offset"]) == 2 else None

    def __call__(self, s: Tensor, start: Tensor, *, tol: float = 1e-7,
                 polish: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
        """`K x d` values of ``s``, `K x D'` starts -> (modes `K x D'`, Hessians, log marginals `K`).

        ``tol`` and ``polish`` as in :func:`~papa_bayes.inference.laplace.laplace_mode`: the finite
        differences need tight modes (an error e in a mode moves the value by about e^2), draws do not.
        """
        f = _objective(self.model, self.data, self.others, {self.site: s.exp()})
        with warnings.catch_warnings():
            # A conditional mode that has not met the tight tolerance is still a usable one.
            warnings.simplefilter("ignore", PapaBayesWarning)
            modes, H, value, n = _newton(f, start, tol=tol, polish=polish, max_steps=50,
                                         batched_hessian=batch_hessian_rows(len(s), self.data.num_observations,
                                                                            self.others.dim),
                                         hessian=self.hessian)
        self.newton_steps += n
        return modes, H, laplace_log_evidence(value, H) + s.sum(1)  # + sum(s): d scale / d s


def nested_laplace(
    model: PyroRewardModel,
    data: PreferenceData,
    site: str = "population_scale",
    *,
    warm: NestedLaplace | None = None,
    init: dict[str, Tensor] | None = None,
    max_steps: int = 30,
) -> NestedLaplace:
    """Find the mode and the (skewed) Gaussian of the Laplace marginal of ``log(site)``.

    Newton's method on ``s = log(site)`` with a finite-difference gradient and
    diagonal curvature (``2d + 1`` conditional fits per step, in one batch), then the
    full curvature at the mode (``d(d-1)/2`` more) and two probes along each of its
    principal axes for the skew.

    Args:
        model, data: the model and data.
        site: a `d`-vector site with positive support (a HalfNormal prior, say).
        warm: the previous fit (an online update): its centre and conditional mode
            start the search.
        init: constrained starting values of every site (e.g. a joint Laplace mode).
        max_steps: outer Newton steps.
    """
    priors = model.priors(data)
    if site not in priors:
        raise InferenceError(f"nested_laplace: the model has no site {site!r}.")
    others = UnconstrainedSpace({k: v for k, v in priors.items() if k != site})
    full = UnconstrainedSpace(priors)
    d = full.sizes[site]
    marginal = _Marginal(model, data, site, others)
    if warm is not None and warm.center.numel() == d:
        s = warm.center.clone()
        previous, _ = warm.space.unpack(warm.conditional_mode.unsqueeze(0))
        theta = others.initial({k: v[0] for k, v in previous.items()})
    else:
        start, _ = full.unpack(full.initial(init).unsqueeze(0))
        s = start[site][0].clamp(min=1e-3).log()
        theta = others.initial({k: v[0] for k, v in start.items()})
    eye = torch.eye(d, dtype=torch.float64)
    h = FD_STEP
    value, s_prev = None, s
    trust = torch.tensor(1.0, dtype=torch.float64)
    for step in range(max_steps + 1):
        points = torch.cat([s.unsqueeze(0), s + h * eye, s - h * eye])
        modes, _, logev = marginal(points, theta.expand(len(points), -1))
        if value is not None and float(logev[0]) < value - 1e-6 and float(trust) > 1e-3:
            # overshot: back off toward the previous point and shrink the trust region
            trust = trust / 4
            s = s_prev + (s - s_prev) / 4
            continue
        value, s_prev, theta = float(logev[0]), s, modes[0]
        grad = (logev[1 : d + 1] - logev[d + 1 :]) / (2 * h)
        curv = (logev[1 : d + 1] - 2 * logev[0] + logev[d + 1 :]) / h**2
        # Newton on each coordinate where the marginal is concave, a gradient step elsewhere.
        delta = torch.where(curv < -1e-3, -grad / curv.clamp(max=-1e-3), grad.sign())
        delta = delta.clamp(-float(trust), float(trust))
        if float(delta.abs().max()) < 1e-3:
            break
        s = s + delta
        trust = torch.clamp(trust * 2, max=1.0)
    else:
        warnings.warn(f"Nested Laplace: the mode of log {site} did not converge in {max_steps} steps.",
                      PapaBayesWarning, stacklevel=caller_stacklevel())
    s = s_prev
    # full curvature at the mode: L(s + h e_i + h e_j) for i < j, with the 2d + 1 points above
    i, j = torch.triu_indices(d, d, 1)
    if d > 1:
        cross = s + h * (eye[i] + eye[j])
        _, _, lcross = marginal(cross, theta.expand(len(cross), -1))
    points = torch.cat([s.unsqueeze(0), s + h * eye, s - h * eye])
    modes, _, logev = marginal(points, theta.expand(len(points), -1))
    theta, value = modes[0], logev[0]
    # d mode / d s by central differences: the draws' solves start from the linear prediction
    sensitivity = ((modes[1 : d + 1] - modes[d + 1 :]) / (2 * h)).T
    plus = logev[1 : d + 1]
    hess = torch.diag((plus - 2 * value + logev[d + 1 :]) / h**2)
    if d > 1:
        off = (lcross - plus[i] - plus[j] + value) / h**2
        hess[i, j] = off
        hess[j, i] = off
    evals, axes = torch.linalg.eigh(-hess)
    if float(evals.min()) <= 0:
        warnings.warn(f"Nested Laplace: the marginal of log {site} is not concave at its mode (curvature "
                      f"{evals.min():.3g}); flat directions get unit sds.", PapaBayesWarning,
                      stacklevel=caller_stacklevel())
    sd = torch.where(evals > 1e-6, evals.clamp(min=1e-6).rsqrt(), torch.ones_like(evals))
    # skew: the drop of the marginal at +-2 sds along each axis against the Gaussian's 2
    probes = torch.cat([s + SKEW_PROBE * (axes * sd).T, s - SKEW_PROBE * (axes * sd).T])
    _, _, lprobe = marginal(probes, theta.expand(len(probes), -1))
    drop = (value - lprobe).clamp(min=0.05 * SKEW_PROBE**2 / 2)
    corr = (SKEW_PROBE**2 / 2 / drop).sqrt().clamp(max=3.0)
    info = {"outer_steps": step, "newton_steps": marginal.newton_steps, "log_marginal": float(value)}
    return NestedLaplace(site=site, center=s, axes=axes, sd_neg=sd * corr[d:], sd_pos=sd * corr[:d], space=others,
                         conditional_mode=theta, sensitivity=sensitivity, info=info)


def nested_draws(
    model: PyroRewardModel, data: PreferenceData, fitted: NestedLaplace, num_samples: int, *,
    generator: torch.Generator, num_proposals: int | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Draws of every site: ``s`` from the skewed Gaussian weighted by the Laplace marginal, the rest given ``s``.

    ``num_proposals`` draws of ``s`` (default ``min(num_samples, NUM_PROPOSALS)``)
    each get their conditional Laplace fit (one batch, started from the linear
    prediction of the mode) and the weight ``log p(data, s) - log q(s)``;
    ``num_samples`` draws resample them (systematic resampling, in random order), and each draws the
    other sites from its proposal's conditional Gaussian: the scale's draws repeat
    ``num_samples / num_proposals`` times on average, the other sites' do not.

    Returns:
        (site -> `num_samples x shape`, diagnostics with ``scale_ess``: the weights'
        effective share of the proposals).
    """
    K = min(num_samples, NUM_PROPOSALS) if num_proposals is None else num_proposals
    s, log_q = fitted.proposal(K, generator=generator)
    marginal = _Marginal(model, data, fitted.site, fitted.space)
    modes, H, logev = marginal(s, fitted.predicted_mode(s), tol=1e-4, polish=1e-2)
    logw = logev - log_q
    logw = torch.where(torch.isfinite(logw), logw, torch.full_like(logw, -math.inf))
    w = (logw - torch.logsumexp(logw, 0)).exp()
    ess = float(1 / (w**2).sum()) / K
    # systematic resampling: each proposal kept floor or ceil of num_samples * w times
    u = (torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(num_samples, dtype=torch.float64))
    idx = torch.searchsorted(torch.cumsum(w, 0) * num_samples, u).clamp(max=K - 1)
    # in random order: systematic resampling puts each proposal's copies side by side, which an ArviZ trace
    # shows as steps (ESS 20-60 of 1,000) and a user's first k draws would be a biased subset
    idx = idx[torch.randperm(num_samples, generator=generator)]
    eps = torch.randn(num_samples, fitted.space.dim, generator=generator, dtype=torch.float64)
    L = torch.linalg.cholesky(H[idx])
    raw = modes[idx] + torch.linalg.solve_triangular(L.transpose(1, 2), eps.unsqueeze(-1), upper=True).squeeze(-1)
    params, _ = fitted.space.unpack(raw)
    params[fitted.site] = s[idx].exp()
    return params, {"scale_ess": ess, "newton_steps": fitted.info["newton_steps"] + marginal.newton_steps}
