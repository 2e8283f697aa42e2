"""Fully Bayesian GP preferences: NUTS over the kernel hyperparameters and the utilities.

The target is the exact posterior of :class:`~papa_bayes.models.PreferenceGP`'s
model (no variational or Laplace approximation): kernel lengthscales and
outputscale (and the tie strength / like threshold when modelled) under their
priors, jointly with the utilities ``u = L z`` of the distinct observed items
(``L L^T = K``, ``z ~ N(0, I)``: the whitened, non-centred form that keeps NUTS
away from the funnel between outputscale and utilities). Cubic in the number of
items, so for small data (<= ``MAX_NUTS_ITEMS`` distinct items).

Chains start at the type-II ML ELBO fit (hyperparameters and variational mean),
jittered per chain, like the linear model's NUTS starts at its Laplace mode.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from papa_bayes.inference.mcmc_util import chain_results, check_nuts_samples
from papa_bayes.data import PreferenceData
from papa_bayes.exceptions import ModelError
from papa_bayes.inference.gp_elbo import TrainingData, train_elbo
from papa_bayes.models.gp import (
    DTYPE,
    FeatureStandardizer,
    PreferenceGP,
    VariationalPreferenceGP,
    exact_distances,
    select_inducing_points,
    stationary_kernel,
)
from papa_bayes.models.likelihoods import comparison_log_probs, log_cdf

__all__ = ["fit_nuts_draws", "seeded", "MAX_NUTS_ITEMS"]

MAX_NUTS_ITEMS = 300
LENGTHSCALE_FLOOR = 0.025  # the kernel's lower bound (see make_kernel)
#: Least relative jitter of the anchors' kernel matrix under NUTS. The sampler's Cholesky has no retry (the ELBO's
#: psd_safe_cholesky adds jitter where one fails), and with ``PreferenceGP(jitter=0)`` the matrix of 20 close items
#: in d=1 is singular in float64: torch's error inside Pyro, NaN tree weights. The default 1e-6 is above it.
MIN_NUTS_JITTER = 1e-8


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run code that draws from torch's / NumPy's global RNGs with ``seed``; restore both after."""
    np_state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        np.random.seed(int(seed) % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


class _Target:
    """The log posterior of (hyperparameters, whitened utilities) in unconstrained coordinates."""

    def __init__(self, spec: PreferenceGP, data: PreferenceData, anchors: Tensor, item_to_anchor: Tensor) -> None:
        kernel = spec.make_kernel(data.num_features)
        self.ls_prior = kernel.base_kernel.lengthscale_prior
        self.os_prior = kernel.outputscale_prior
        self.lik = spec.make_likelihood(data)
        self.kind, self.link, self.jitter = spec.kernel, spec.link, max(spec.jitter, MIN_NUTS_JITTER)
        self.anchors = anchors
        self.M, self.d = anchors.shape
        a = item_to_anchor
        self.first, self.second = a[data.comparisons[:, 0]], a[data.comparisons[:, 1]]
        self.ties = data.ties
        self.rated, self.like = a[data.ratings[:, 0]], data.ratings[:, 1] > 0
        self.with_ties = self.lik.ties
        self.with_ratings = self.lik.ratings
        self.tie_prior = getattr(self.lik, "tie_strength_prior", None)
        self.threshold_prior = getattr(self.lik, "threshold_prior", None)

    def constrained(self, p: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hyperparameters from unconstrained values, batched over leading dims."""
        out = {
            "lengthscale": LENGTHSCALE_FLOOR + p["log_lengthscale"].exp(),
            "outputscale": p["log_outputscale"].exp(),
        }
        if self.with_ties:
            out["tie_strength"] = p["log_tie_strength"].exp()
        if self.with_ratings:
            out["threshold"] = p["threshold"]
        return out

    def cholesky(self, lengthscale: Tensor, outputscale: Tensor) -> Tensor:
        """`... x M x M` Cholesky factors of the anchors' kernel matrix (with relative jitter)."""
        A = self.anchors
        K = stationary_kernel(A, A, lengthscale.unsqueeze(-2), outputscale, self.kind)
        eye = torch.eye(self.M, dtype=DTYPE)
        K = K + (self.jitter * outputscale)[..., None, None] * eye if outputscale.dim() else K + self.jitter * outputscale * eye
        return torch.linalg.cholesky(K)

    def log_density(self, p: dict[str, Tensor]) -> Tensor:
        h = self.constrained(p)
        lp = self.ls_prior.log_prob(h["lengthscale"]).sum(-1) + p["log_lengthscale"].sum(-1)
        lp = lp + self.os_prior.log_prob(h["outputscale"]) + p["log_outputscale"]
        tie = None
        if self.with_ties:
            tie = h["tie_strength"]
            lp = lp + self.tie_prior.log_prob(tie) + p["log_tie_strength"]
        if self.with_ratings:
            lp = lp + self.threshold_prior.log_prob(h["threshold"])
        z = p["utility_whitened"]
        L = self.cholesky(h["lengthscale"], h["outputscale"])
        u = (L @ z.unsqueeze(-1)).squeeze(-1)
        lp = lp - 0.5 * z.pow(2).sum(-1)
        if self.first.numel():
            diff = u[..., self.first] - u[..., self.second]
            logp = comparison_log_probs(diff, self.link, None if tie is None else tie.unsqueeze(-1))
            obs = torch.where(self.ties, logp[..., 2], logp[..., 0]) if self.with_ties else logp[..., 0]
            lp = lp + obs.sum(-1)
        if self.rated.numel():
            margin = u[..., self.rated] - h["threshold"].unsqueeze(-1)
            lp = lp + log_cdf(torch.where(self.like, margin, -margin), self.link).sum(-1)
        return lp

    def potential(self, p: dict[str, Tensor]) -> Tensor:
        return -self.log_density(p)

    def log_jacobian(self, p: dict[str, Tensor]) -> Tensor:
        """log |d constrained / d unconstrained| of :meth:`constrained`: the terms :meth:`log_density` adds."""
        out = p["log_lengthscale"].sum(-1) + p["log_outputscale"]  # d(floor + e^x)/dx = e^x, d(e^x)/dx = e^x
        if self.with_ties:
            out = out + p["log_tie_strength"]
        return out

    def log_joint(self, p: dict[str, Tensor]) -> Tensor:
        """log p(hyperparameters, whitened utilities, data) in the model's own (constrained) coordinates.

        What the Pyro models report as ``lp`` (``log_joint``: normalized priors of the
        latent sites as sampled, no Jacobian): :meth:`log_density` without the
        Jacobian of the log transforms and with N(0, I)'s normalizing constant for
        the `M` whitened utilities ``z``, so ``lp`` reads the same across models
        and does not depend on NUTS's parametrization.
        """
        return self.log_density(p) - self.log_jacobian(p) - 0.5 * self.M * math.log(2 * math.pi)


def _anchors(X: Tensor, data: PreferenceData, previous: Tensor | None, seed: int) -> tuple[Tensor, Tensor]:
    """Distinct observed items (previous anchors first) and each item's anchor index."""
    observed = torch.unique(torch.cat([data.comparisons.reshape(-1), data.ratings[:, 0]]))
    gen = torch.Generator().manual_seed(int(seed))
    pts = X[observed]
    if previous is None:
        anchors = select_inducing_points(pts, pts.shape[0], generator=gen)
    else:
        far = exact_distances(pts, previous).min(-1).values > 1e-3
        extra = select_inducing_points(pts[far], pts.shape[0], generator=gen) if bool(far.any()) else pts[:0]
        anchors = torch.cat([previous, extra])
    if anchors.shape[0] > MAX_NUTS_ITEMS:
        raise ModelError(
            f"method='nuts' is for small data: {anchors.shape[0]} distinct items (at most {MAX_NUTS_ITEMS}); use method='elbo'."
        )
    return anchors, exact_distances(X, anchors).argmin(-1)


def _elbo_start(spec: PreferenceGP, data: PreferenceData, X: Tensor, anchors: Tensor, target: _Target) -> dict[str, Tensor]:
    """Unconstrained start from the type-II ML ELBO fit with every anchor an inducing point."""
    gp = VariationalPreferenceGP(anchors, spec.make_kernel(data.num_features), learn_inducing_locations=False,
                                 jitter=target.jitter)
    lik = spec.make_likelihood(data)
    train_elbo(gp, lik, TrainingData(data, X), num_steps=200, batch_size=None, learning_rate=0.0, seed=0)
    with torch.no_grad():
        ls = gp.covar_module.base_kernel.lengthscale.reshape(-1)
        start = {
            "log_lengthscale": (ls - LENGTHSCALE_FLOOR).clamp_min(1e-6).log(),
            "log_outputscale": gp.covar_module.outputscale.reshape(()).log(),
            "utility_whitened": gp.variational_mean.detach().clone(),
        }
        if target.with_ties:
            start["log_tie_strength"] = lik.tie_strength.reshape(()).log()
        if target.with_ratings:
            start["threshold"] = lik.threshold.detach().reshape(())
    return start


def fit_nuts_draws(
    spec: PreferenceGP,
    data: PreferenceData,
    transform: FeatureStandardizer,
    *,
    seed: int,
    num_samples: int,
    warmup_steps: int,
    num_chains: int,
    progress_bar: bool,
    init: dict[str, Any] | None,
) -> dict[str, Any]:
    """Run NUTS; return hyperparameter draws, anchor draws and diagnostics.

    Returns:
        dict with ``hyper`` (`chain x draw x ...`), ``anchors`` `M x d`,
        ``anchor_draws`` `s x M`, ``anchor_chol`` `s x M x M`, ``lp`` (the log joint
        density in constrained coordinates, :meth:`_Target.log_joint`) and
        ``diverging`` (`chain x draw`), ``last`` (warm start for ``update``),
        ``diagnostics``.
    """
    from pyro.infer import MCMC, NUTS
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    check_nuts_samples(num_samples)
    X = transform(data.items)
    anchors, item_to_anchor = _anchors(X, data, None if init is None else init["anchors"], seed)
    target = _Target(spec, data, anchors, item_to_anchor)
    if init is None:
        start = _elbo_start(spec, data, X, anchors, target)
    else:  # previous last draw; new anchors start at the prior conditional mean (z = 0)
        start = {k: v.clone() for k, v in init["values"].items() if k != "utility_whitened"}
        z_old = init["values"]["utility_whitened"]
        start["utility_whitened"] = torch.cat([z_old, torch.zeros(anchors.shape[0] - z_old.shape[0], dtype=DTYPE)])
        for k in ("log_tie_strength", "threshold"):
            if getattr(target, "with_ties" if k == "log_tie_strength" else "with_ratings") and k not in start:
                start[k] = torch.zeros((), dtype=DTYPE)
    chains: list[dict[str, Tensor]] = []
    diverging, accept = [], []
    gen = torch.Generator().manual_seed(int(seed) + 17)
    for c in range(num_chains):
        jitter = {k: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=DTYPE) for k, v in start.items()}
        kernel = NUTS(potential_fn=target.potential, target_accept_prob=0.85, adapt_mass_matrix=True)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, initial_params=jitter,
                    disable_progbar=not progress_bar)
        with seeded(int(seed) * 1000 + c + 13 * data.num_observations):
            mcmc.run()
        draws, div, rate = chain_results(mcmc, num_samples)
        chains.append(draws)
        diverging.append(div)
        accept.append(rate)
    raw = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}  # chain x draw x ...
    s = num_chains * num_samples
    flat = {k: v.reshape(s, *v.shape[2:]) for k, v in raw.items()}
    with torch.no_grad():
        hyper_flat = target.constrained(flat)
        L = target.cholesky(hyper_flat["lengthscale"], hyper_flat["outputscale"])
        u = (L @ flat["utility_whitened"].unsqueeze(-1)).squeeze(-1)
        lp = target.log_joint(flat).reshape(num_chains, num_samples)
    hyper = {k: v.reshape(num_chains, num_samples, *v.shape[1:]) for k, v in hyper_flat.items()}
    rhat = {k: float(split_gelman_rubin(v).max()) for k, v in hyper.items()}
    ess = {k: float(effective_sample_size(v).min()) for k, v in hyper.items()}
    div_all = torch.stack(diverging)
    return {
        "hyper": hyper,
        "anchors": anchors,
        "anchor_draws": u,
        "anchor_chol": L,
        "lp": lp,
        "diverging": div_all,
        "last": {"anchors": anchors, "values": {k: v[-1, -1].clone() for k, v in raw.items()}},
        "diagnostics": {
            "r_hat": rhat, "ess": ess, "r_hat_max": max(rhat.values()), "ess_min": min(ess.values()),
            "divergences": int(div_all.sum()), "acceptance_rate": accept, "warmup_steps": warmup_steps,
            "num_anchors": anchors.shape[0],
        },
    }
