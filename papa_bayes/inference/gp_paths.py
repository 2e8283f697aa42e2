"""Posterior function draws of a GP by pathwise conditioning (Wilson et al. 2020).

A draw is a function, not a vector: ``f_s(x) = g_s(x) + k(x, Z) alpha_s`` with a
prior draw ``g_s`` in random Fourier features (Rahimi & Recht 2007) and
``alpha_s = K_ZZ^{-1} (u_s - g_s(Z))`` for a posterior draw ``u_s`` of the utility at
anchor points ``Z`` (Matheron's rule). Then

- every call of ``draws(X)`` evaluates the *same* `s` functions, so draws are
  consistent across calls, batches and chunks, and smooth in ``x``: the diffusion
  guidance can take their gradient, Thompson sampling can optimize one of them;
- the cost is linear in the number of points (no `n x n` Cholesky at test points);
- it works for any Gaussian belief about ``u(Z)``: the variational ``q(u)`` at the
  inducing points, the Laplace posterior at PairwiseGP's items, NUTS draws.

The prior part is approximate (``num_features`` random features); near the data the
exact conditional term dominates, which is why this "decoupled" form is accurate
where it matters (Wilson et al. 2020, sec. 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from papa_bayes.models.gp import exact_distances, stationary_kernel

__all__ = ["PathwiseDraws", "stationary_kernel", "draw_frequencies", "match_rows"]

DTYPE = torch.float64


def draw_frequencies(num_features: int, d: int, kind: str, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Unit-lengthscale spectral frequencies `F x d` and phases `F` of the kernel.

    RBF: standard normal; Matern-nu: multivariate Student-t with ``2 nu`` degrees of
    freedom (here 5).
    """
    omega = torch.randn(num_features, d, generator=generator, dtype=DTYPE)
    if kind == "matern52":
        dof = 5.0
        # chi^2 with an integer number of degrees of freedom: a sum of that many squared normals
        chi2 = torch.randn(num_features, int(dof), generator=generator, dtype=DTYPE).pow(2).sum(-1)
        omega = omega * torch.sqrt(dof / chi2).unsqueeze(-1)
    phase = 2 * math.pi * torch.rand(num_features, generator=generator, dtype=DTYPE)
    return omega, phase


def match_rows(new: Tensor, old: Tensor) -> Tensor:
    """For each row of ``new`` (`M x d`), the index of an identical row of ``old`` or -1: `M` long."""
    if old.shape[0] == 0 or new.shape[0] == 0:
        return torch.full((new.shape[0],), -1, dtype=torch.long)
    dist, idx = exact_distances(new, old).min(-1)  # exact zeros
    return torch.where(dist == 0, idx, torch.full_like(idx, -1))


def _solve(chol: Tensor, rhs: Tensor) -> Tensor:
    """``K^{-1} rhs`` row-wise for `h x M x M` factors and `s x M` right-hand sides (h in {1, s})."""
    if chol.shape[0] == 1:  # one factor: one multi-column solve, not s broadcast ones
        return torch.cholesky_solve(rhs.T, chol[0]).T
    return torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)


@dataclass
class PathwiseDraws:
    """`s` posterior function draws of a GP in standardized feature space.

    Attributes:
        anchors: `M x d` points where the posterior draws were conditioned.
        lengthscale: `h x 1 x d` with ``h`` 1 (shared hyperparameters) or `s`.
        outputscale: `h`.
        omega: `F x d` unit frequencies; phase: `F`.
        weights: `s x F` standard-normal prior weights.
        alpha: `s x M` conditional weights ``K_ZZ^{-1} (u_s - g_s(Z))``.
        mean_alpha: `h x M`, ``K_ZZ^{-1} E[u(Z)]`` per hyperparameter draw, for the
            exact posterior mean (None: average the draws).
        kind: ``"rbf"`` or ``"matern52"``.
    """

    anchors: Tensor
    lengthscale: Tensor
    outputscale: Tensor
    omega: Tensor
    phase: Tensor
    weights: Tensor
    alpha: Tensor
    mean_alpha: Tensor | None
    kind: str
    chunk_size: int = 8192
    prior_at_anchors: Tensor | None = None

    def same_prior(self, other: PathwiseDraws) -> bool:
        """True when both hold the same prior functions (random features and hyperparameters)."""
        return (
            self.kind == other.kind and self.omega is other.omega and self.weights is other.weights
            and torch.equal(self.lengthscale, other.lengthscale) and torch.equal(self.outputscale, other.outputscale)
        )

    @property
    def num_draws(self) -> int:
        """`s`: function draws."""
        return self.weights.shape[0]

    @classmethod
    def from_anchor_draws(
        cls,
        anchors: Tensor,
        anchor_draws: Tensor,
        anchor_chol: Tensor,
        *,
        lengthscale: Tensor,
        outputscale: Tensor,
        kind: str,
        omega: Tensor,
        phase: Tensor,
        weights: Tensor,
        anchor_mean: Tensor | None = None,
        previous: PathwiseDraws | None = None,
    ) -> PathwiseDraws:
        """Condition prior function draws on posterior draws at the anchors.

        Args:
            anchors: `M x d`.
            anchor_draws: `s x M` posterior draws of ``u(Z)``.
            anchor_chol: `h x M x M` Cholesky factors of ``K_ZZ`` (with jitter).
            lengthscale: `h x 1 x d`; outputscale: `h`.
            omega, phase, weights: the random features (see :func:`draw_frequencies`).
            anchor_mean: `h x M` posterior means of ``u(Z)`` (for the exact mean).
            previous: draws of an earlier posterior with the same prior functions; its
                prior values at shared leading anchors are reused (online updates).
        """
        out = cls(anchors, lengthscale, outputscale, omega, phase, weights, torch.empty(0), None, kind)
        if previous is not None and previous.prior_at_anchors is not None and previous.same_prior(out):
            match = match_rows(anchors, previous.anchors)
            g_z = previous.prior_at_anchors[:, match.clamp_min(0)]
            new = match < 0
            if bool(new.any()):
                g_z[:, new] = out.prior(anchors[new])
            out.prior_at_anchors = g_z
        else:
            out.prior_at_anchors = out.prior(anchors)  # s x M
        out.alpha = _solve(anchor_chol, anchor_draws - out.prior_at_anchors)
        if anchor_mean is not None:
            out.mean_alpha = _solve(anchor_chol, anchor_mean)
        return out

    def _features(self, x: Tensor) -> Tensor:
        """`h x n x F` random features ``cos(omega (x / l) + b)``."""
        return torch.cos((x.unsqueeze(0) / self.lengthscale) @ self.omega.T + self.phase)

    def prior(self, x: Tensor) -> Tensor:
        """Prior function draws ``g_s(x)``: `s x n`."""
        feats = self._features(x)  # h x n x F
        scale = torch.sqrt(2 * self.outputscale / self.omega.shape[0])  # h
        if feats.shape[0] == 1:
            return scale[0] * (self.weights @ feats[0].T)
        return scale.unsqueeze(-1) * torch.einsum("snf,sf->sn", feats, self.weights)

    def _cross(self, x: Tensor) -> Tensor:
        return stationary_kernel(x.unsqueeze(0), self.anchors.unsqueeze(0), self.lengthscale, self.outputscale, self.kind)

    def _conditional(self, x: Tensor, alpha: Tensor) -> Tensor:
        K = self._cross(x)  # h x n x M
        if K.shape[0] == 1:
            return alpha @ K[0].T
        return torch.einsum("snm,sm->sn", K, alpha)

    def __call__(self, x: Tensor) -> Tensor:
        """The draws at `n x d` standardized features: `s x n` (differentiable in ``x``)."""
        x = x.to(DTYPE)
        parts = [self.prior(c) + self._conditional(c, self.alpha) for c in x.split(self.chunk_size)]
        return torch.cat(parts, dim=-1) if parts else x.new_zeros(self.num_draws, 0)

    def mean(self, x: Tensor) -> Tensor:
        """Posterior mean at `n x d` standardized features: `n` (exact when ``mean_alpha`` is set)."""
        x = x.to(DTYPE)
        if self.mean_alpha is None:
            return self(x).mean(0)
        parts = []
        for c in x.split(self.chunk_size):
            parts.append(self._conditional(c, self.mean_alpha).mean(0))
        return torch.cat(parts)
