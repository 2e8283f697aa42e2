"""Laplace approximation: Newton's method on the log posterior in unconstrained space.

The online workhorse: from a warm start one new answer needs two or three Newton
steps on a `D x D` Hessian (D = number of parameters), a few milliseconds.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import InferenceError, PapaBayesWarning
from papa_bayes.inference.unconstrained import UnconstrainedSpace
from papa_bayes.models.base import PyroRewardModel

__all__ = ["laplace_mode", "laplace_draws"]


def _objective(model: PyroRewardModel, data: PreferenceData, space: UnconstrainedSpace):
    def neg_log_post(theta: Tensor) -> Tensor:
        params, logdet = space.unpack(theta.unsqueeze(0))
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
    space = UnconstrainedSpace(model.priors(data))
    f = _objective(model, data, space)
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
